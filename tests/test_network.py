"""Real libp2p nodes on 127.0.0.1: gossip, validation and scoring, sync, restart."""

from __future__ import annotations

import itertools
import time

import pytest
import trio

from zoonode.node import Node

from netutil import node_config, run_trio, start_nodes, wait_meshed, wait_until

LESSON = {
    "text": "When solving geometry problems with intersections, validate solutions lie "
    "within bounded regions, not extensions",
    "domain": "math.geometry",
    "confidence": 0.8,
}


def test_two_nodes_exchange_a_record(tmp_path, encoder):
    async def main():
        async with trio.open_nursery() as nursery:
            a, b = await start_nodes(nursery, encoder, [tmp_path / "a", tmp_path / "b"])
            await b.connect(a.info().addrs[0])
            await wait_meshed(a, b)
            [(record_id, outcome)] = await a.publish([LESSON])
            assert outcome == "accepted"
            await wait_until(lambda: b.kb.store.has(record_id), what="delivery to b")
            row = b.kb.get(record_id)
            assert row.peer == a.peer_id
            selection, records = await b.query(
                "validate solutions of geometry problems with intersections"
            )
            assert selection.selected[0].candidate.id == record_id
            assert records[record_id].experience.text == LESSON["text"]
            # b has just met a's identity (standing ~0); a's own lessons are established.
            assert selection.selected[0].candidate.reputation < 0.01
            own, _ = await a.query("validate solutions of geometry problems with intersections")
            assert own.selected[0].candidate.reputation == 1.0
            unrelated, _ = await b.query("how to bake sourdough bread")
            assert unrelated.selected == []  # below the similarity floor (0.4)
            nursery.cancel_scope.cancel()

    run_trio(main)


def test_a_node_that_knows_its_peers_puts_fresh_authors_on_probation(tmp_path, encoder):
    """selection.newcomers_alone = "bootstrap": once b has known a peer for the maturity
    (3 s here), a lesson from an author it has just met no longer answers alone, and does
    once that author has been known for the maturity too."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from helpers import lessons

    maturity_s = 3.0
    sourdough = "Let sourdough rise until it has doubled in size before baking the loaf"

    async def main():
        async with trio.open_nursery() as nursery:
            a, b = await start_nodes(
                nursery,
                encoder,
                [tmp_path / "a", tmp_path / "b"],
                selection={"maturity_days": maturity_s / 86_400},
            )
            assert b.queries.newcomers_may_answer_alone()  # b knows no peer yet
            await b.connect(a.info().addrs[0])
            await wait_meshed(a, b)
            [(record_id, _)] = await a.publish([LESSON])
            await wait_until(lambda: b.kb.store.has(record_id), what="delivery to b")
            await trio.sleep(maturity_s + 0.2)
            [fresh] = lessons(encoder, Ed25519PrivateKey.generate(), [sourdough])
            await b.in_kb(b.kb.ingest, [fresh])
            held, _ = await b.query("how long should sourdough rise before baking")
            assert held.selected == []
            assert held.down_weighted["newcomer_on_probation"] == 1
            assert not b.queries.newcomers_may_answer_alone()
            await trio.sleep(maturity_s + 0.2)
            later, _ = await b.query("how long should sourdough rise before baking")
            assert [s.candidate.id for s in later.selected] == [fresh.record.id]
            nursery.cancel_scope.cancel()

    run_trio(main)


def test_line_of_eight_delivers_to_all(tmp_path, encoder):
    async def main():
        async with trio.open_nursery() as nursery:
            nodes = await start_nodes(nursery, encoder, [tmp_path / f"n{i}" for i in range(8)])
            for left, right in itertools.pairwise(nodes):
                await right.connect(left.info().addrs[0])
            for left, right in itertools.pairwise(nodes):
                await wait_meshed(left, right)
            ids = [
                rid
                for rid, _ in await nodes[0].publish(
                    [
                        LESSON,
                        {
                            "text": "Before dividing both sides of an inequality, check the "
                            "sign of the divisor",
                            "domain": "math.algebra",
                            "confidence": 0.9,
                        },
                    ]
                )
            ]
            for node in nodes[1:]:
                await wait_until(
                    lambda n=node: all(n.kb.store.has(i) for i in ids),
                    what=f"delivery to {node.peer_id}",
                )
            nursery.cancel_scope.cancel()

    run_trio(main, 180)


def _attacker_wires(encoder, key):
    """Records a Byzantine peer might send, each broken in one way."""
    import struct

    from zoonode.experiences import create_experience
    from zoonode.native.codec import compress
    from zoonode.protocol import Experience, Op, public_key_bytes, sign

    good = create_experience(
        encoder, key, "Read the whole error message before editing code", "software.debugging", 0.7
    )
    flipped = bytearray(good.wire)
    flipped[-1] ^= 1
    other_space = sign(
        Experience(
            op=Op.ADD,
            author=public_key_bytes(key),
            space=b"\x01" * 16,
            created_at=good.experience.created_at,
            text="x",
            domain="a.b",
            confidence=0.5,
            code=struct.pack("<f", 0.01) + bytes(960),
        ),
        key,
    )
    popular = encoder.encode("how do I fix a failing build")[0]
    hijack = sign(
        Experience(
            op=Op.ADD,
            author=public_key_bytes(key),
            space=encoder.space,
            created_at=good.experience.created_at,
            text="Buy cheap watches at example dot com today",
            domain="spam.ads",
            confidence=1.0,
            code=compress(popular, encoder.space_info.v_ref),
        ),
        key,
    )
    return bytes(flipped), other_space.wire, hijack


def test_invalid_records_are_not_forwarded_and_cost_the_sender(tmp_path, encoder):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from zoonode.net.validation import encode_batch

    async def main():
        async with trio.open_nursery() as nursery:
            attacker, b, c = await start_nodes(
                nursery, encoder, [tmp_path / "attacker", tmp_path / "b", tmp_path / "c"]
            )
            # The attacker skips its own validation, as a Byzantine peer would.
            attacker.gossip.pubsub.set_topic_validator(
                attacker.gossip.topic, lambda *_: True, False
            )
            await b.connect(attacker.info().addrs[0])
            await c.connect(b.info().addrs[0])
            await wait_meshed(attacker, b)
            await wait_meshed(b, c)
            key = Ed25519PrivateKey.generate()
            bad_sig, wrong_space, hijack = _attacker_wires(encoder, key)
            topic = attacker.gossip.topic
            attacker_id = attacker.host.get_id()
            for payload in (
                encode_batch([bad_sig]),
                encode_batch([wrong_space]),
                encode_batch([b"\x00" * 600_000]),
                b"\xc1 not msgpack",
            ):
                await attacker.gossip.pubsub.publish(topic, payload)
            # P4 weight 10 per invalid message: 4 of them take the score to about -40.
            await wait_until(
                lambda: b.gossip.router.scorer.score(attacker_id, [topic]) <= -30,
                what="attacker's score to drop",
            )
            verdicts = b.gossip.stats.verdicts
            assert verdicts["reject:bad_signature"] == 1
            assert verdicts["reject:wrong_space"] == 1
            assert verdicts["reject:oversize_batch"] == 1
            assert verdicts["reject:malformed_batch"] == 1
            assert not any(k.startswith("reject") for k in c.gossip.stats.verdicts)

            # Embedding hijack: structurally valid, so forwarded once, but never stored, and
            # its author is banned: the next record by that author is not even forwarded.
            await attacker.gossip.pubsub.publish(topic, encode_batch([hijack.wire]))
            await wait_until(
                lambda: (
                    hijack.experience.author in b.banned and hijack.experience.author in c.banned
                ),
                what="author banned",
            )
            assert not b.kb.store.has(hijack.id) and not c.kb.store.has(hijack.id)
            assert b.kb.store.known(hijack.id)  # tombstoned: sync will not fetch it
            nursery.cancel_scope.cancel()

    run_trio(main, 180)


def test_messages_of_only_ignored_records_are_not_forwarded_nor_penalised(tmp_path, encoder):
    """Lighthouse's "ignore": a relay drops a message whose records it already holds, without
    charging the sender, and forwards the next message with a fresh record."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from zoonode.experiences import create_experience
    from zoonode.net.validation import encode_batch

    async def main():
        async with trio.open_nursery() as nursery:
            sender, b, c = await start_nodes(
                nursery, encoder, [tmp_path / "sender", tmp_path / "b", tmp_path / "c"]
            )
            sender.gossip.pubsub.set_topic_validator(sender.gossip.topic, lambda *_: True, False)
            await b.connect(sender.info().addrs[0])
            await c.connect(b.info().addrs[0])
            await wait_meshed(sender, b)
            await wait_meshed(b, c)
            key = Ed25519PrivateKey.generate()
            first, fresh = (
                create_experience(encoder, key, text, "software.debugging", 0.7)
                for text in (
                    "Read the whole error message before editing code",
                    "Reproduce a failing test alone before changing the code it covers",
                )
            )
            topic = sender.gossip.topic
            await sender.gossip.pubsub.publish(topic, encode_batch([first.wire]))
            # b forwards before it stores (the embedding check comes after): wait for both.
            await wait_until(
                lambda: b.kb.store.has(first.id) and c.kb.store.has(first.id), what="first record"
            )
            c_messages = c.gossip.stats.messages_in
            # New bytes (a new message id), nothing new inside: b ignores and keeps it.
            await sender.gossip.pubsub.publish(topic, encode_batch([first.wire, first.wire]))
            await wait_until(lambda: b.gossip.stats.not_forwarded == 1, what="b to ignore it")
            await sender.gossip.pubsub.publish(topic, encode_batch([fresh.wire]))
            await wait_until(lambda: c.kb.store.has(fresh.id), what="fresh record at c")
            assert c.gossip.stats.messages_in == c_messages + 1  # only the fresh one
            assert b.gossip.stats.verdicts["ignore:known"] == 2
            assert b.gossip.router.scorer.score(sender.host.get_id(), [topic]) >= 0
            nursery.cancel_scope.cancel()

    run_trio(main, 180)


def test_flood_score_counts_only_messages_that_bring_nothing_new(tmp_path, encoder):
    """P6 on real hosts: a peer sending many fresh valid messages keeps its score (a relay
    under a Sybil flood of valid records must not be cut off), while the same number of
    messages of records b already holds, over ``flood_rate``, takes it under the publish
    threshold, where the library drops its messages unread."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from zoonode.experiences import create_experience
    from zoonode.net.scoring import RULES
    from zoonode.net.validation import encode_batch

    n = 100
    key = Ed25519PrivateKey.generate()
    records = [
        create_experience(
            encoder, key, f"Lesson {i}: rerun the failing test alone first", "software", 0.7
        )
        for i in range(n)
    ]

    async def main():
        async with trio.open_nursery() as nursery:
            sender, b, c = await start_nodes(
                nursery,
                encoder,
                [tmp_path / "sender", tmp_path / "b", tmp_path / "c"],
                network={"flood_rate": 0.5},
            )
            sender.gossip.pubsub.set_topic_validator(sender.gossip.topic, lambda *_: True, False)
            await b.connect(sender.info().addrs[0])
            await c.connect(b.info().addrs[0])
            await wait_meshed(sender, b)
            await wait_meshed(b, c)
            topic, sender_id = sender.gossip.topic, sender.host.get_id()

            async def send_all(batches: list[bytes]) -> None:
                for data in batches:
                    await sender.gossip._wait_for_room()
                    await sender.gossip.pubsub.publish(topic, data)

            await send_all([encode_batch([r.wire]) for r in records])  # n fresh: news
            await wait_until(lambda: b.gossip.stats.messages_in >= n, what="b to see them")
            assert b.gossip.meter.rate(sender_id, time.monotonic()) == 0.0
            assert b.gossip.router.scorer.score(sender_id, [topic]) >= 0
            await wait_until(lambda: all(c.kb.store.has(r.id) for r in records), 60, "c")
            c_messages = c.gossip.stats.messages_in

            await send_all([encode_batch([r.wire, r.wire]) for r in records])  # n repeats
            await wait_until(
                lambda: not b.gossip.router.scorer.allow_publish(sender_id, [topic]),
                what="the repeating sender under the publish threshold",
            )
            # A few repeats were ignored, then rejected unread as a flood (P4), and the
            # library now drops the rest before validation.
            assert b.gossip.stats.not_forwarded > 0
            assert b.gossip.stats.verdicts["reject:flood"] > 0
            assert b.gossip.router.scorer.score(sender_id, [topic]) < RULES.publish_threshold
            assert c.gossip.stats.messages_in == c_messages  # none of the repeats went on
            nursery.cancel_scope.cancel()

    run_trio(main, 240)


def test_mdns_nodes_find_each_other_without_bootstrap(tmp_path, encoder, key):
    """Two nodes with ``mdns = true`` and no bootstrap list connect and gossip on their own
    (zeroconf multicast on this machine's loopback, as on a LAN)."""
    from helpers import lessons

    async def main():
        async with trio.open_nursery() as nursery:
            a, b = await start_nodes(
                nursery, encoder, [tmp_path / "a", tmp_path / "b"], network={"mdns": True}
            )
            await wait_until(
                lambda: b.host.get_id() in a.connected_peers(), 30, "a to dial what mDNS found"
            )
            await wait_meshed(a, b)
            assert a.counters["discovery:dialled"] + b.counters["discovery:dialled"] >= 1
            [item] = lessons(encoder, key, ["Check units before adding measured values"])
            await a.in_kb(a.kb.ingest, [item])
            await a.gossip.publish([item.record.wire])
            await wait_until(lambda: b.kb.store.has(item.record.id), 30, "gossip over mDNS link")
            nursery.cancel_scope.cancel()

    run_trio(main, 120)


def test_late_node_converges_by_sync(tmp_path, encoder, key):
    texts = [
        f"Lesson {i}: " + t
        for i, t in enumerate(
            [
                "check the sign of the divisor before dividing an inequality",
                "prefer parameterised SQL queries to string formatting",
                "look for shared state when a unit test is flaky",
                "read the first frame of a traceback before editing code",
                "check units before adding measured values",
            ]
        )
    ]

    async def main():
        async with trio.open_nursery() as nursery:
            [b] = await start_nodes(nursery, encoder, [tmp_path / "b"])
            # b learnt these while c was away, long enough ago that no gossip history holds
            # them: stored on b without gossip, so only sync can bring them to c.
            from helpers import lessons

            items = lessons(encoder, key, texts)
            await b.in_kb(b.kb.ingest, items)
            b.note_stored([i.record for i in items])
            ids = [i.record.id for i in items]
            [c] = await start_nodes(nursery, encoder, [tmp_path / "c"])
            await c.connect(b.info().addrs[0])
            await wait_until(
                lambda: all(c.kb.store.has(i) for i in ids),
                timeout=30,
                what="sync to the late node",
            )
            assert c.counters["sync:accept:ok"] == len(ids)
            nursery.cancel_scope.cancel()

    run_trio(main, 180)


def test_restart_keeps_identity_data_and_delivery(tmp_path, encoder):
    """A real process restart: same peer id, same data, and its new messages still arrive
    (message ids are content hashes, so a restarted sender is never taken for a replay)."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("node_proc.py")

    async def run_a(addr: str, text: str) -> tuple[trio.Process, str, bytes]:
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(script), str(tmp_path / "a"), addr, text], stdout=subprocess.PIPE
        )
        buf, peer, record_id = b"", None, None
        while record_id is None:
            chunk = await proc.stdout.receive_some()
            assert chunk, f"node process exited: {await proc.wait()}"
            buf += chunk
            *lines, rest = buf.decode().split("\n")  # only complete lines
            buf = rest.encode()
            for line in lines:
                if line.startswith("peer "):
                    peer = line.split()[1]
                if line.startswith("published "):
                    record_id = bytes.fromhex(line.split()[1])
        return proc, peer, record_id

    async def main():
        async with trio.open_nursery() as nursery:
            [b] = await start_nodes(nursery, encoder, [tmp_path / "b"])
            addr = b.info().addrs[0]
            proc, first_peer, rid = await run_a(addr, "Restart test: the first lesson")
            await wait_until(lambda: b.kb.store.has(rid), what="first delivery")
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
            proc, second_peer, rid2 = await run_a(addr, "Restart test: a lesson after restart")
            assert second_peer == first_peer
            await wait_until(lambda: b.kb.store.has(rid2), what="delivery after restart")
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
            nursery.cancel_scope.cancel()

    run_trio(main, 180)
    from zoonode.knowledge import KnowledgeBase

    kb = KnowledgeBase(tmp_path / "a", encoder.space, encoder.space_info.hidden)
    assert kb.store.counts()["active"] == 2  # the first lesson survived the restart
    kb.close()


def test_federated_query_travels_in_the_canonical_space(tmp_path, encoder, key):
    """b asks a through /zoo/dso/query/2 (a float16 canonical vector), by the Python client
    and the HTTP API; a lowers it onto its own basis and answers. Sync is kept out of the
    way, so only the federated answer can bring a's lesson to b."""
    from zoonode.client import AsyncClient
    from zoonode.node.antientropy import PeerSync

    from helpers import lessons

    text = "Pin the versions of build tools so that a rebuild next year gives the same binary"
    question = "how do I make builds reproducible"

    async def main():
        async with trio.open_nursery() as nursery:
            a, b = await start_nodes(
                nursery,
                encoder,
                [tmp_path / "a", tmp_path / "b"],
                api={"listen": "127.0.0.1:0"},
                selection={"newcomers_alone": "always"},
            )
            [item] = lessons(encoder, key, [text], domain="software.builds")
            await a.in_kb(a.kb.ingest, [item])
            for node, other in ((a, b), (b, a)):  # no sync rounds between them
                node.antientropy.peers[other.peer_id] = PeerSync("ok", float("inf"))
            await b.connect(a.info().addrs[0])
            local, _ = await b.query(question)
            assert local.selected == []
            selection, records = await b.query(question, federated=True)
            assert [s.candidate.id for s in selection.selected] == [item.record.id]
            assert records[item.record.id].experience.text == text
            assert a.counters["query:served"] == 1 and b.counters["query:answered"] == 1
            assert not b.kb.store.has(item.record.id)  # answers are not stored
            token = (tmp_path / "b" / "api.token").read_text().strip()
            async with AsyncClient(b.api_url, token) as client:
                answer = await client.query(question, federated=True, domain="software")
                assert [e["id"] for e in answer["selected"]] == [item.record.id.hex()]
                other = await client.query(question, federated=True, domain="math")
                assert other["selected"] == []  # the domain travels with the query
            assert a.counters["query:served"] == 3
            # The author revokes the lesson; b hears of it, a (the peer that answers) does not:
            # a's copy must not bring the revoked lesson back to b.
            from zoonode.experiences import create_revocation
            from zoonode.store import Incoming

            revoke = create_revocation(key, encoder.space, item.record.id)
            await b.in_kb(b.kb.ingest, [Incoming(revoke, None)])
            selection, _ = await b.query(question, federated=True)
            assert selection.selected == [] and a.counters["query:served"] == 4
            assert b.counters["query:federated_settled"] == 1
            nursery.cancel_scope.cancel()

    run_trio(main)


def test_only_yamux_is_offered(tmp_path, encoder):
    """mplex dropped connections when both sides opened streams at once (issue 21): a node
    offers yamux alone, so an mplex-only peer cannot connect and a yamux one can."""
    import hashlib

    from minimal_peer import MinimalPeer

    async def main():
        async with trio.open_nursery() as nursery:
            [node] = await start_nodes(nursery, encoder, [tmp_path / "node"])
            addr = node.info().addrs[0]
            mplex = MinimalPeer(hashlib.sha256(b"mplex peer").digest(), muxer="mplex")
            await nursery.start(mplex.run)
            failed = False
            try:
                await mplex.connect(addr)
            except Exception:
                failed = True
            assert failed and mplex.host.get_id() not in node.connected_peers()
            yamux = MinimalPeer(hashlib.sha256(b"yamux peer").digest())
            await nursery.start(yamux.run)
            await yamux.connect(addr)
            await wait_until(lambda: yamux.host.get_id() in node.connected_peers(), 10, "yamux")
            nursery.cancel_scope.cancel()

    run_trio(main)


def test_peers_that_do_not_sync_or_left_are_logged_once_and_counted(
    tmp_path, encoder, caplog, capfd
):
    """A peer that serves no sync (tests/minimal_peer.py in its own process): one log line,
    then rounds backed off and counted, not logged. Killed, it has left: its addresses are
    forgotten, so nothing redials it. A dial that fails: the library's error lines are
    counted, not printed, and the node says it once."""
    import hashlib
    import logging
    import signal
    import subprocess
    import sys
    from pathlib import Path

    caplog.set_level(logging.INFO, logger="zoonode")
    script = Path(__file__).with_name("minimal_peer.py")
    peers: list[str] = []

    def dialable(node, peer_id) -> list:
        try:
            return node.host.get_peerstore().addrs(peer_id)
        except Exception:  # unknown to the peerstore: nothing to dial either
            return []

    async def main():
        from libp2p.peer.id import ID

        async with trio.open_nursery() as nursery:
            [node] = await start_nodes(nursery, encoder, [tmp_path / "node"])
            node.antientropy.unsupported_retry = 0.2
            node.discovery.forget_after = 0.5
            seed = hashlib.sha256(b"a peer without sync").hexdigest()
            proc = await trio.lowlevel.open_process(
                [sys.executable, str(script), seed, node.info().addrs[0]], stdout=subprocess.PIPE
            )
            try:
                line = b""
                with trio.fail_after(30):  # one line; a pipe read may return part of it
                    while b"\n" not in line:
                        chunk = await proc.stdout.receive_some()
                        assert chunk, line  # the peer exited
                        line += chunk
                assert line.startswith(b"joined "), line
                pid = line.split()[1].decode()
                peer_id = ID.from_base58(pid)
                await wait_until(lambda: node.counters["sync:unsupported"] >= 5, 20, "rounds")
                await wait_until(lambda: bool(dialable(node, peer_id)), 20, "its address")
            finally:
                proc.send_signal(signal.SIGKILL)  # the peer leaves without a word
                await proc.wait()
            await wait_until(lambda: peer_id not in node.connected_peers(), 20, "the disconnect")
            await wait_until(lambda: node.counters["discovery:forgotten"] == 1, 10, "forget")
            assert not dialable(node, peer_id)
            rounds = node.counters["sync:unsupported"]
            await trio.sleep(1.0)  # rounds would come every 0.2 s if it were still tried
            assert node.counters["sync:unsupported"] == rounds
            with pytest.raises(ConnectionError):
                await node.connect(f"/ip4/127.0.0.1/tcp/9/p2p/{pid}")
            assert node.metrics()["counters"]["libp2p:dial_failed"] >= 1
            peers.append(pid)
            nursery.cancel_scope.cancel()

    run_trio(main)
    [pid] = peers
    about_peer = [r for r in caplog.records if pid in r.getMessage()]
    sync_lines = [r for r in about_peer if r.name == "zoonode.node.sync"]
    assert len(sync_lines) == 1 and "does not serve /zoo/dso/sync/1" in sync_lines[0].message
    assert len([r for r in about_peer if "forgetting" in r.getMessage()]) == 1
    assert len([r for r in about_peer if "did not answer" in r.getMessage()]) == 1
    err = capfd.readouterr().err
    assert "Failed to open TCP stream" not in err and "Failed to open stream" not in err


def test_a_bootstrap_peer_that_restarts_is_redialled(tmp_path, encoder):
    """b's only peer is its bootstrap peer a. a stops and starts again (same data dir, so the
    same peer id, and the same port): b dials it again on its own and gossip flows again."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    a_cfg = {"network": {"listen": [f"/ip4/127.0.0.1/tcp/{port}"]}}

    async def main():
        async with trio.open_nursery() as nursery:
            a = Node(node_config(tmp_path / "a", **a_cfg), encoder=encoder)
            await nursery.start(a.run)
            addr = a.info().addrs[0]
            b = Node(node_config(tmp_path / "b", network={"bootstrap": [addr]}), encoder=encoder)
            await nursery.start(b.run)
            await wait_meshed(a, b)
            a.stop()
            await wait_until(lambda: a.peer_id not in b.connected_peers(), 20, "a's departure")
            await trio.sleep(1.0)  # b's first redials meet a closed port
            a2 = Node(node_config(tmp_path / "a", **a_cfg), encoder=encoder)
            await nursery.start(a2.run)
            assert a2.peer_id == a.peer_id
            await wait_meshed(a2, b, timeout=30)
            # b dialled a2 on its own (a2 does not know b): by its redials, or by
            # py-libp2p's own auto-connector (which dials the peerstore's peers and won the
            # race in a CI run: redialled 0); either way b's connection is outbound. Under
            # load a redial can connect and still count as failed (its deadline passes
            # during the handshake).
            redials = b.counters["discovery:redialled"] + b.counters["discovery:redial_failed"]
            conns = b.host.get_network().get_connections(a2.host.get_id())
            outbound = any(c.muxed_conn.is_initiator for c in conns)
            assert redials >= 1 or outbound, (redials, outbound)
            [(rid, outcome)] = await a2.publish(
                [{"text": "Restart the bootstrap peer last when upgrading", "domain": "ops.x"}]
            )
            assert outcome == "accepted"
            await wait_until(lambda: b.kb.store.known(rid), 30, "delivery after the restart")
            nursery.cancel_scope.cancel()

    run_trio(main, 120)


def signed_items(encoder, keys: int, per_key: int) -> list:
    """``keys`` x ``per_key`` records of fresh authors created ten minutes ago (eight texts
    and their exact vectors, each record in a domain of its own), as ``Incoming``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from zoonode.experiences import sign_lessons
    from zoonode.store import Incoming

    texts = [f"Lesson {i}: check the inputs of step {i} before running the job" for i in range(8)]
    compact = encoder.encode_compact(texts)
    created = int(time.time() * 1000) - 600_000
    items = []
    for k in range(keys):
        rows = [
            {"text": texts[i % len(texts)], "domain": f"sync.d{k}.{i}", "confidence": 0.5}
            for i in range(per_key)
        ]
        vectors = compact[[i % len(texts) for i in range(per_key)]]
        records = sign_lessons(encoder, Ed25519PrivateKey.generate(), rows, vectors, created + k)
        items += [Incoming(r, v) for r, v in zip(records, vectors, strict=True)]
    return items


def test_pipelined_sync_gets_store_every_record_and_never_fetch_past_the_bound(tmp_path, encoder):
    """Sync asks several ``get``s of a page at once and verifies answers in a worker thread:
    with the background check held, a joining node fetches exactly up to ``max_pending`` and
    no further (no record fetched only to be ignored for the backlog), and once the check has
    made room again (a ``get``'s worth starts a round) every record of the peer is stored,
    each accepted once."""
    items = signed_items(encoder, 6, 120)  # 720 records: one page of ids, six gets
    bound = 300

    async def main():
        async with trio.open_nursery() as nursery:
            [b] = await start_nodes(nursery, encoder, [tmp_path / "b"])
            await b.in_kb(b.kb.ingest, items)
            b.note_stored([i.record for i in items])
            [c] = await start_nodes(
                nursery, encoder, [tmp_path / "c"], ingest={"max_pending": bound}
            )
            c.antientropy.interval = 1.0  # a round that found no room: the next one soon
            ids = [i.record.id for i in items]
            async with c.checker._encoder_slot:  # no check: what is fetched stays pending
                await c.connect(b.info().addrs[0])
                # Up to the bound itself, not one ``get`` short of it (the last ``get``s ask
                # only what fits), all within rounds that follow each other at once.
                await wait_until(lambda: c.kb.backlog.total >= bound, 30, "sync up to the bound")
                await trio.sleep(2)  # rounds go on: they must not fetch past the bound
                assert c.kb.backlog.total <= bound
                assert c.ingest.queued() == 0 and c.antientropy._asked == 0
                assert c.counters["sync:ignore:backlog"] == 0
            await wait_until(
                lambda: all(c.kb.store.has(i) for i in ids), 150, "every record by sync"
            )
            assert c.counters["sync:accept:ok"] == len(ids)
            assert c.counters["sync:ignore:backlog"] == 0
            nursery.cancel_scope.cancel()

    run_trio(main, 240)


def test_a_frame_that_is_not_a_pubsub_rpc_resets_the_stream_not_the_node(tmp_path, encoder):
    """Seven bytes on a gossipsub stream (a length prefix and a body that does not parse as a
    pubsub RPC) went up out of py-libp2p's reader and stopped the node (fresh-clone review).
    Now that peer's pubsub stream is reset and counted (``gossip_malformed_rpc``), and the
    node goes on: it still delivers a record to an honest peer."""
    import hashlib

    from libp2p.custom_types import TProtocol
    from minimal_peer import MinimalPeer

    async def main():
        async with trio.open_nursery() as nursery:
            a, b = await start_nodes(nursery, encoder, [tmp_path / "a", tmp_path / "b"])
            evil = MinimalPeer(hashlib.sha256(b"evil peer").digest())
            await nursery.start(evil.run)
            await evil.connect(a.info().addrs[0])
            stream = await evil.host.new_stream(
                a.host.get_id(), [TProtocol("/meshsub/1.1.0"), TProtocol("/meshsub/1.0.0")]
            )
            await stream.write(b"\x06" + b"\xff" * 6)
            await wait_until(lambda: a.metrics()["gossip_malformed_rpc"] == 1, 10, "reset")
            from zoonode.api import _NodeCollector

            exported = {f.name: f for f in _NodeCollector(a).collect()}
            assert exported["zoonode_gossip_malformed_rpc"].samples[0].value == 1
            await b.connect(a.info().addrs[0])
            await wait_meshed(a, b)
            [(record_id, outcome)] = await a.publish([LESSON])
            assert outcome == "accepted"
            await wait_until(lambda: b.kb.store.has(record_id), what="delivery to b")
            nursery.cancel_scope.cancel()

    run_trio(main)


def test_a_node_joining_after_a_large_batch_reads_every_gossip_rpc_whole(tmp_path, encoder):
    """Two writers on one pubsub stream (py-libp2p's per-peer queue and its router's direct
    writes) interleaved the frames of a large RPC: a node that joined a devnet right after a
    200-lesson batch read 2-32 RPCs it could not parse in 25 s (fresh-clone review; before the
    reader was guarded, the first one stopped it). Writes are one at a time per stream now."""
    lessons = [
        {
            "text": f"When a network call is flaky, retry it with backoff and jitter, case {i}",
            "domain": "ops.network",
        }
        for i in range(200)
    ]

    async def main():
        async with trio.open_nursery() as nursery:
            a, b = await start_nodes(nursery, encoder, [tmp_path / "a", tmp_path / "b"])
            await b.connect(a.info().addrs[0])
            await wait_meshed(a, b)
            published = await b.publish(lessons)
            [c] = await start_nodes(nursery, encoder, [tmp_path / "c"])
            await c.connect(b.info().addrs[0])
            ids = [record_id for record_id, _ in published]
            await wait_until(lambda: all(c.kb.store.has(i) for i in ids), 60, "every lesson")
            await trio.sleep(3)
            assert c.metrics()["gossip_malformed_rpc"] == 0
            assert a.metrics()["gossip_malformed_rpc"] == 0
            nursery.cancel_scope.cancel()

    run_trio(main, 180)
