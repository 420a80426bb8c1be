"""Feedback under a flood, between real nodes (real libp2p hosts on 127.0.0.1): sync lists a
bucket of any size (``ids`` pages, NETWORK.md §6.3), verdicts on lessons a node does not hold
are ignored and come later by sync, and verdicts from voters without trust are bounded."""

from __future__ import annotations

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import zoonode.net.sync as sync_module
from zoonode.experiences import now_ms
from zoonode.net.gossip import FEEDBACK_TOPIC, topic_for
from zoonode.net.rpc import ServeError
from zoonode.protocol import Feedback, FeedbackVerdict, sign_feedback

from helpers import lessons
from netutil import run_trio, start_nodes, wait_meshed, wait_until

TEXT = "Bread dough rises until doubled, roughly one to two hours in a warm kitchen, then bake."


def _verdicts(node, target: bytes, n: int, created_at: int, verdict=FeedbackVerdict.HARMFUL):
    """``n`` verdicts from fresh keys (free Sybil identities), all at ``created_at``."""
    out = []
    for _ in range(n):
        key = Ed25519PrivateKey.generate()
        body = Feedback(key.public_key().public_bytes_raw(), node.encoder.space, created_at,
                        target, verdict)  # fmt: skip
        out.append(sign_feedback(body, key))
    return out


async def _store(node, records) -> None:
    """Stored on ``node`` without gossip, as if received long ago."""
    results = await node.in_kb(node.feedback.insert, [(r, "peer") for r in records])
    for record, result in zip(records, results, strict=True):
        node.feedback._note(record, result)


async def _hold(node, items) -> None:
    await node.in_kb(node.kb.ingest, items)
    node.note_stored([i.record for i in items])


def test_sync_lists_a_bucket_over_the_ids_cap_in_pages(tmp_path, encoder, monkeypatch):
    """A flood of verdicts in one past bucket, more than one ``ids`` answer holds: the honest
    verdict that sorts after the cap still reaches a joining node, and the digests converge."""
    monkeypatch.setattr(sync_module, "MAX_IDS", 40)
    [item] = lessons(encoder, Ed25519PrivateKey.generate(), [TEXT], domain="cooking.bread")
    at = now_ms() - 2 * 3_600_000
    at -= at % 3_600_000  # one bucket, every verdict at its first millisecond

    async def main():
        async with trio.open_nursery() as nursery:
            a, c = await start_nodes(nursery, encoder, [tmp_path / "a", tmp_path / "c"])
            for node in (a, c):
                await _hold(node, [item])
            flood = _verdicts(a, item.record.id, 130, at)
            honest = max(flood, key=lambda r: r.id)  # sorts after every page but the last
            await _store(a, flood)
            assert len(a.feedback_digest.buckets) == 1
            # The pages a peer is served (§6.3): 40 + more, then after the last id, ...
            ask = {"op": "ids", "type": "feedback", "start": at, "end": at + 3_600_000}
            pages, after = [], b""
            while True:
                page = await a.antientropy.serve("peer", {**ask, "after": after})
                pages.append(page["ids"])
                if not page.get("more"):
                    break
                after = page["ids"][-1]
            assert [len(p) for p in pages] == [40, 40, 40, 10]
            assert [i for p in pages for i in p] == sorted(r.id for r in flood)
            old = await a.antientropy.serve("peer", ask)  # an older client: the first page
            assert old["ids"] == pages[0] and old["more"] is True
            with pytest.raises(ServeError, match="after"):
                await a.antientropy.serve("peer", {**ask, "after": b"short"})
            await c.connect(a.info().addrs[0])
            await wait_until(
                lambda: c.kb.store.feedback.known(honest.id), timeout=40, what="the last id"
            )
            await wait_until(
                lambda: c.feedback_digest.buckets == a.feedback_digest.buckets, what="digests"
            )
            assert c.kb.store.feedback.counts()["harmful"] == 130
            nursery.cancel_scope.cancel()

    run_trio(main, 120)


def test_a_verdict_on_a_lesson_not_held_is_ignored_then_synced_once_it_is(tmp_path, encoder):
    """b does not hold the lesson: the gossiped verdict is ignored (not stored, not forwarded,
    no flood count against a); once b holds the lesson, sync brings the verdict."""
    [item] = lessons(encoder, Ed25519PrivateKey.generate(), [TEXT], domain="cooking.bread")

    async def main():
        async with trio.open_nursery() as nursery:
            a, b = await start_nodes(nursery, encoder, [tmp_path / "a", tmp_path / "b"])
            await b.connect(a.info().addrs[0])
            await wait_meshed(a, b)
            topic = topic_for(a.encoder.space, FEEDBACK_TOPIC)
            await wait_until(lambda: b.peer_id in a.gossip.mesh_peers(topic), what="mesh")
            await wait_until(
                lambda: getattr(b.antientropy.peers.get(a.peer_id), "state", "") == "ok",
                what="b's first sync round with a done",
            )
            b.antientropy.peers[a.peer_id].next_round = float("inf")  # rounds by hand below
            await _hold(a, [item])  # on a only, and after b's first sync round
            [record] = _verdicts(a, item.record.id, 1, now_ms())
            await _store(a, [record])
            await a.gossip.publish_feedback([record.wire])
            stats = b.gossip.feedback.stats.verdicts
            await wait_until(lambda: stats["ignore:unknown_target"] >= 1, what="ignored")
            assert not b.kb.store.feedback.known(record.id)
            assert not any(b.gossip.meter.seen.values())  # nothing counted toward a flood
            # Feedback sync alone: fetched once and ignored, then not fetched again while
            # the lesson is not held ...
            peer = a.host.get_id()
            for _ in range(2):
                assert await b.antientropy._sync_type(peer, "feedback") == 0
            assert b.counters["sync_feedback:ignore:unknown_target"] == 1
            # ... and once it is, the next round brings the verdict.
            await _hold(b, [item])
            assert await b.antientropy._sync_type(peer, "feedback") == 1
            await wait_until(
                lambda: b.kb.store.feedback.known(record.id), timeout=40, what="synced verdict"
            )
            nursery.cancel_scope.cancel()

    run_trio(main, 120)


def test_verdicts_from_voters_without_trust_stop_at_the_bound_trusted_ones_never(tmp_path, encoder):
    [item] = lessons(encoder, Ed25519PrivateKey.generate(), [TEXT], domain="cooking.bread")

    async def main():
        async with trio.open_nursery() as nursery:
            [a] = await start_nodes(nursery, encoder, [tmp_path / "a"])
            [b] = await start_nodes(
                nursery,
                encoder,
                [tmp_path / "b"],
                trust={"max_untrusted_verdicts": 5, "recompute_s": 0.1},
                selection={"trusted_authors": [a.author.hex()]},
            )
            for node in (a, b):
                await _hold(node, [item])
            await b.connect(a.info().addrs[0])
            await wait_meshed(a, b)
            topic = topic_for(a.encoder.space, FEEDBACK_TOPIC)
            await wait_until(lambda: b.peer_id in a.gossip.mesh_peers(topic), what="mesh")
            flood = _verdicts(a, item.record.id, 12, now_ms())
            await _store(a, flood)
            await a.gossip.publish_feedback([r.wire for r in flood])
            stats = b.gossip.feedback.stats.verdicts
            await wait_until(
                lambda: stats["ignore:feedback_full"] + stats["accept:ok"] >= 12,
                what="the flood validated",
            )
            await wait_until(lambda: b.feedback.stored >= 5, what="stored")
            assert stats["ignore:feedback_full"] >= 7
            assert b.kb.store.feedback.counts()["harmful"] == 5
            status = b.feedback.status()
            assert status.untrusted_stored == 5 and status.max_untrusted == 5
            # a's own agent (a root of b's trust) is never held back by the bound.
            out = await a.rate(item.record.id, FeedbackVerdict.HELPFUL)
            await wait_until(lambda: b.feedback.status().stored == 6, what="trusted stored")
            assert b.kb.store.feedback.known(bytes.fromhex(out["id"]))
            assert b.feedback.status().untrusted_stored == 5
            nursery.cancel_scope.cancel()

    run_trio(main, 120)


def test_verdicts_refused_at_the_bound_are_not_fetched_again_each_sync_round(tmp_path, encoder):
    """Sync refuses what is over the bound once (``feedback_full``), then leaves those ids
    alone while their voters have no trust here and the bound is reached: the peer's digest
    differs for good, and re-fetching them every round was unbounded work."""
    [item] = lessons(encoder, Ed25519PrivateKey.generate(), [TEXT], domain="cooking.bread")

    async def main():
        async with trio.open_nursery() as nursery:
            [a] = await start_nodes(nursery, encoder, [tmp_path / "a"])
            [b] = await start_nodes(
                nursery,
                encoder,
                [tmp_path / "b"],
                trust={"max_untrusted_verdicts": 5, "recompute_s": 0.1},
            )
            for node in (a, b):
                await _hold(node, [item])
            await _store(a, _verdicts(a, item.record.id, 12, now_ms()))
            await b.connect(a.info().addrs[0])
            await wait_meshed(a, b)
            await wait_until(
                lambda: getattr(b.antientropy.peers.get(a.peer_id), "state", "") == "ok",
                what="b's first sync round with a done",
            )
            b.antientropy.peers[a.peer_id].next_round = float("inf")  # rounds by hand below
            peer = a.host.get_id()
            await wait_until(lambda: b.feedback.status().untrusted_stored == 5, what="stored")
            refused = b.counters["sync_feedback:ignore:feedback_full"]
            assert refused >= 7  # each fetched and refused (more if fetched while 5 queued)
            for _ in range(2):
                assert await b.antientropy._sync_type(peer, "feedback") == 0
            assert b.counters["sync_feedback:ignore:feedback_full"] == refused
            # Room again (the bound raised): the next round fetches them.
            b.feedback.max_untrusted = 50
            assert await b.antientropy._sync_type(peer, "feedback") == 7
            nursery.cancel_scope.cancel()

    run_trio(main, 120)


def test_explanations_weigh_verdicts_by_trust_and_leave_self_votes_out(tmp_path, encoder):
    """1000-style Sybil harmful verdicts and the author's own helpful one against one verdict
    of this node's agent: the explanation counts the author's vote nowhere, and the line
    people read leads with the trust-weighted sums, the Sybils only as untrusted voters."""
    from zoonode.api import _selection_json
    from zoonode.humanview import query_view

    q_key = Ed25519PrivateKey.generate()
    [item] = lessons(encoder, q_key, [TEXT], domain="cooking.bread")
    author = q_key.public_key().public_bytes_raw()

    async def main():
        async with trio.open_nursery() as nursery:
            [a] = await start_nodes(nursery, encoder, [tmp_path / "a"])
            await _hold(a, [item])
            self_vote = sign_feedback(
                Feedback(author, a.encoder.space, now_ms(), item.record.id,
                         FeedbackVerdict.HELPFUL), q_key)  # fmt: skip
            await _store(a, [self_vote, *_verdicts(a, item.record.id, 30, now_ms())])
            await a.rate(item.record.id, FeedbackVerdict.HELPFUL)
            selection, records = await a.query("how long should bread dough rise")
            assert selection.selected[0].candidate.id == item.record.id
            trust = await a.queries.explain(selection)
            shown = trust[item.record.id]
            assert shown["helpful"] == 1 and shown["helpful_trusted"] == 1.0  # a's agent only
            assert author.hex() not in [v["voter"] for v in shown["votes"]]
            assert shown["harmful"] == 30 and shown["harmful_untrusted"] == 30
            assert shown["harmful_trusted"] == 0.0
            assert list(shown)[:2] == ["helpful_trusted", "harmful_trusted"]
            view = query_view(_selection_json(selection, records, trust))
            assert (
                "verdicts weighted by the voters' trust: 1.00 helpful, 0.00 harmful "
                "(30 harmful from untrusted voters)" in " ".join(view.split())
            ), view
            nursery.cancel_scope.cancel()

    run_trio(main, 120)


def test_the_librarys_full_subscription_line_is_counted_not_printed(tmp_path, encoder, capfd):
    """py-libp2p's own delivery path (``Pubsub.notify_subscriptions``) overflowing the
    feedback subscription's 32-message channel, as a flood does: counted, never printed."""
    from libp2p.pubsub.pb import rpc_pb2

    async def main():
        async with trio.open_nursery() as nursery:
            [a] = await start_nodes(nursery, encoder, [tmp_path / "a"])
            before = a.metrics()["counters"].get("libp2p:subscription_full", 0)
            topic = topic_for(a.encoder.space, FEEDBACK_TOPIC)
            capfd.readouterr()
            for n in range(40):  # no checkpoint between: the reader cannot drain
                a.gossip.pubsub.notify_subscriptions(
                    rpc_pb2.Message(data=bytes([n]), topicIDs=[topic])
                )
            assert a.metrics()["counters"]["libp2p:subscription_full"] >= before + 5
            nursery.cancel_scope.cancel()

    run_trio(main, 60)
    out, err = capfd.readouterr()
    assert "fail to deliver" not in out + err
