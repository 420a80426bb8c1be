"""Heterogeneous peers end to end: a default node (all-MiniLM-L6-v2) and a node on another
backbone (paraphrase-MiniLM-L3-v2 with a head fitted by `zoonode space fit-head`), real libp2p
hosts on 127.0.0.1, default settings. Both accept each other's honest lessons, ban nobody
honest, retrieve each other's lessons locally and by federated query; hijacks from either
backbone are rejected on both. (all-mpnet-base-v2, 805 MB, runs the same exchange in
benchmarks/hetero_nodes.py.)"""

from __future__ import annotations

import json
import logging
from importlib import resources

import numpy as np
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zoonode.experiences import now_ms, sign_lessons
from zoonode.node import Node
from zoonode.node.antientropy import PeerSync
from zoonode.protocol import Experience, Op, public_key_bytes, sign

from helpers import lessons
from netutil import node_config, run_trio, wait_meshed, wait_until

# The session fixtures convert L3 and fit its head (`zoonode space fit-head` on the shipped
# 4,000 anchors, which are also the last 4,000 of the check's 5,085 reference texts: L3
# encodes 5,085 texts): ~1-2 min on an idle 2-core box, ~3.5 min when busy.
pytestmark = pytest.mark.timeout(900)


def _data(name: str) -> list[dict]:
    text = (resources.files("zoonode") / "data" / name).read_text()
    return [json.loads(line) for line in text.splitlines()]


LESSONS = [{**item, "confidence": 0.8} for item in _data("lessons.jsonl")]
TARGETS = _data("sim_targets.jsonl")  # 10 queries, each with its lesson's index
# Default settings on both nodes. L3 (3 layers) aligns worse than mpnet: with the shipped
# 4,000 anchors ~99 % of its codes of held-out reference texts pass an l6 node's check
# (fit-head's report), but 3 of the 20 short lessons here fail (rank > 5): they are dropped,
# and the binomial ban rule keeps their author in good standing (3 of 10 is no proof of a
# failure rate over 20 %). mpnet passes 140 of 140 (benchmarks/hetero_nodes.py).


def hijacks(encoder, key, queries: list[str]) -> list:
    """Records an attacker on ``encoder``'s backbone sends: each carries the code of a target
    query with an unrelated advert as text."""
    items = [
        {"text": f"Buy cheap watches at example dot com, offer {i}", "domain": "spam.ads"}
        for i in range(len(queries))
    ]
    return sign_lessons(encoder, key, items, encoder.encode_compact(queries))


def random_codes(encoder, key, n: int) -> list:
    rng = np.random.default_rng(7)
    scale = np.float32(0.0107).tobytes()  # an honest code's scale
    out = []
    for i in range(n):
        exp = Experience(
            op=Op.ADD,
            author=public_key_bytes(key),
            space=encoder.space,
            created_at=now_ms(),
            text=f"Always restart the router before filing a ticket, case {i}",
            domain="spam.noise",
            confidence=1.0,
            code=scale + rng.integers(0, 256, 960, dtype=np.uint8).tobytes(),
        )
        out.append(sign(exp, key))
    return out


TIMEOUT = 180.0


async def settled(node: Node, ids: list[bytes], timeout: float = TIMEOUT) -> None:
    """Every id stored and through the embedding check (active, or removed as rejected)."""
    await wait_until(lambda: all(node.kb.store.known(i) for i in ids), timeout, "delivery")
    await drained(node, ids, timeout)


async def drained(node: Node, ids: list[bytes], timeout: float = TIMEOUT) -> None:
    """None of these ids waits for the embedding check any more."""

    def waiting() -> bool:
        return any((r := node.kb.get(i)) is not None and r.pending for i in ids)

    with trio.fail_after(timeout):
        while await node.in_kb(waiting):
            await trio.sleep(0.1)


def active(node: Node, record_id: bytes) -> bool:
    row = node.kb.get(record_id)
    return row is not None and not row.pending


def test_default_and_fitted_nodes_take_each_others_lessons(tmp_path, encoder, l3_encoder, caplog):
    caplog.set_level(logging.WARNING, logger="zoonode.node.checker")
    held_by_a = [i for i in range(len(LESSONS)) if i % 2 == 0]
    held_by_b = [i for i in range(len(LESSONS)) if i % 2 == 1]
    attacker = Ed25519PrivateKey.generate()
    queries = [t["query"] for t in TARGETS]

    async def main():
        async with trio.open_nursery() as nursery:
            a = Node(node_config(tmp_path / "a"), encoder=encoder)
            b = Node(node_config(tmp_path / "b"), encoder=l3_encoder)
            assert a.encoder.space == b.encoder.space  # one canonical space, two backbones
            for node in (a, b):
                await nursery.start(node.run)
            await b.connect(a.info().addrs[0])
            await wait_meshed(a, b)
            ids = {}
            for node, held in ((a, held_by_a), (b, held_by_b)):
                published = await node.publish([LESSONS[i] for i in held])
                assert {o for _, o in published} == {"accepted"}
                ids |= {i: rid for i, (rid, _) in zip(held, published, strict=True)}
            await settled(b, [ids[i] for i in held_by_a])
            await settled(a, [ids[i] for i in held_by_b])
            # The l3 node takes all 20 even-indexed lessons the l6 node publishes here (not
            # every l6 lesson: of the file's 40 it rejects lessons 1 and 33, rank 6 and 23,
            # both odd); the l6 node takes 17 of the l3 node's 20 odd-indexed ones (it rejects
            # 1, 5 and 15: rank 32, 31, 6; shipped-anchor head, measured), and nobody is
            # banned: failures are strikes, weighed as evidence.
            assert sum(active(b, ids[i]) for i in held_by_a) == len(held_by_a)
            assert sum(active(a, ids[i]) for i in held_by_b) >= 15
            assert a.banned == set() and b.banned == set()
            assert a.banned == set() and b.banned == set()
            rejected_before = b.checker.status()["rejected"]

            # Cross-backbone retrieval: each target asked on the node that did not write it;
            # every target the asker took is found (the asker's own lessons may outrank a
            # just-met author's by standing: one miss allowed). mpnet: 10/10, benchmarks.
            found, held = 0, 0
            for target in TARGETS:
                asker = b if target["lesson"] % 2 == 0 else a
                selection, _ = await asker.query(target["query"])
                held += active(asker, ids[target["lesson"]])
                found += ids[target["lesson"]] in {s.candidate.id for s in selection.selected}
            assert held >= 7 and found >= held - 1, (found, held)

            # One failed check of an honest author is a strike, not a ban: a's key signs a
            # lesson whose code leans towards another lesson (not decisive: it still agrees
            # with its text); b drops it, keeps a's standing and takes a's next lesson.
            text = "Label the axes of every plot with the quantity and its unit"
            own, other = a.encoder.encode_compact([text, LESSONS[3]["text"]])
            b_text = b.encoder.encode_compact([text])
            for lean in (2.5, 3.0, 4.0, 5.0, 6.0, 8.0):  # the least lean that fails b's check
                leaning = own + lean * other
                [odd] = sign_lessons(
                    a.encoder,
                    a.key,
                    [{"text": text, "domain": "science.plots", "confidence": 0.5}],
                    (leaning / np.linalg.norm(leaning))[None],
                )
                [verdict] = b.checker.rule([odd.experience.code], b_text, b.encoder.space_info)
                if not verdict.accept:
                    break
            assert not verdict.accept and not verdict.ban, verdict  # the premise
            await a.gossip.publish([odd.wire])
            [(late, _)] = await a.publish(
                [{"text": "Name test files after the module they test", "domain": "code.tests"}]
            )
            await wait_until(
                lambda: active(b, late) and b.checker.status()["rejected"] == rejected_before + 1,
                120,
                "checks",
            )
            assert not active(b, odd.id) and a.author not in b.banned
            # The operator's log says why, and where the author stands.
            [line] = [r.getMessage() for r in caplog.records if odd.id.hex()[:16] in r.getMessage()]
            assert "rank " in line and "agreement " in line, line
            assert f"author {a.author.hex()[:16]}: 1 failure of " in line, line
            assert "checked, not banned" in line, line

            # Hijacks from either backbone, and random codes: rejected by both nodes, their
            # author banned on both (by a's import path and by gossip to b).
            bad = hijacks(encoder, attacker, queries) + hijacks(l3_encoder, attacker, queries)
            bad += random_codes(encoder, attacker, 5)
            outcomes = await a.ingest.import_records([r.wire for r in bad])
            assert all(o != "duplicate" for _, o in outcomes)
            await a.gossip.publish([r.wire for r in bad[:20]])
            await wait_until(lambda: attacker_banned(a) and attacker_banned(b), 120, "bans")
            for node in (a, b):
                await drained(node, [r.id for r in bad])
                assert not any(active(node, r.id) for r in bad)
                for query in queries:
                    selection, records = await node.query(query)
                    assert all("watches" not in r.experience.text for r in records.values())
            nursery.cancel_scope.cancel()

    def attacker_banned(node: Node) -> bool:
        return public_key_bytes(attacker) in node.banned

    run_trio(main, timeout=600)


def test_federated_queries_cross_backbones(tmp_path, encoder, l3_encoder):
    """A default node asks a fitted node (and the reverse) through /zoo/dso/query/2; sync is
    kept out of the way so only the federated answer, checked by the asker's own rule, can
    bring the other backbone's lessons."""

    async def main():
        async with trio.open_nursery() as nursery:
            a = Node(node_config(tmp_path / "a"), encoder=encoder)
            b = Node(node_config(tmp_path / "b"), encoder=l3_encoder)
            for node in (a, b):
                await nursery.start(node.run)
            ids, held = {}, {}
            for node, parity in ((a, 0), (b, 1)):  # each holds half the targets, unshared
                items = [LESSONS[t["lesson"]] for t in TARGETS if t["lesson"] % 2 == parity]
                stored = lessons(node.encoder, node.key, [i["text"] for i in items])
                await node.in_kb(node.kb.ingest, stored)  # held, never gossiped
                records = [item.record for item in stored]
                for item, record in zip(items, records, strict=True):
                    ids[item["text"]] = record.id
                    held[item["text"]] = record
            for node, other in ((a, b), (b, a)):
                node.antientropy.peers[other.peer_id] = PeerSync("ok", float("inf"))
            await b.connect(a.info().addrs[0])
            await wait_until(lambda: a.peer_id in b.connected_peers(), 20, "connection")
            found, passing = 0, 0
            for target in TARGETS:
                asker = b if target["lesson"] % 2 == 0 else a
                text = LESSONS[target["lesson"]]["text"]
                assert not asker.kb.store.has(ids[text])
                selection, _ = await asker.query(target["query"], federated=True)
                found += ids[text] in {s.candidate.id for s in selection.selected}
                # the asker checks a federated answer with its own rule, as gossip
                code = [held[text].experience.code]
                [verdict] = asker.checker.rule(
                    code, asker.encoder.encode_compact([text]), asker.encoder.space_info
                )
                passing += verdict.accept
            # every target whose code passes the asker's check comes back (8 of 10 for L3)
            assert passing >= 7 and found >= passing, (found, passing)
            assert a.banned == set() and b.banned == set()
            nursery.cancel_scope.cancel()

    run_trio(main, timeout=300)
