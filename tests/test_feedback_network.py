"""Feedback between real nodes (real libp2p hosts on 127.0.0.1): a verdict gossiped two hops
changes the ranking there; a late node gets verdicts by sync."""

from __future__ import annotations

import itertools

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zoonode.experiences import now_ms
from zoonode.net.gossip import FEEDBACK_TOPIC, topic_for
from zoonode.protocol import Feedback, FeedbackVerdict, sign_feedback

from helpers import lessons
from netutil import run_trio, start_nodes, wait_meshed, wait_until

QUERY = "how long should bread dough rise before baking"
PLAIN = "Let bread dough rise until it has doubled in size, about one to two hours when warm."
OTHER = "Bread dough rises until doubled, roughly one to two hours in a warm kitchen, then bake."


def _fast_trust(root_hex: str) -> dict:
    return {
        "trust": {"recompute_s": 0.1, "min_endorsements": 1},
        "selection": {"trusted_authors": [root_hex]},
    }


async def _hold_everywhere(nodes, items) -> None:
    for node in nodes:
        await node.in_kb(node.kb.ingest, items)
        node.note_stored([i.record for i in items])


def test_a_verdict_on_node_a_changes_the_ranking_on_node_c_two_hops_away(tmp_path, encoder):
    p_key, q_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    [p_item] = lessons(encoder, p_key, [PLAIN], domain="cooking.bread")
    [q_item] = lessons(encoder, q_key, [OTHER], domain="cooking.bread")

    async def main():
        async with trio.open_nursery() as nursery:
            a, b = await start_nodes(
                nursery, encoder, [tmp_path / "a", tmp_path / "b"], trust={"recompute_s": 0.1}
            )
            # c trusts a's agents (operator's trusted_authors); b relays and trusts nobody.
            [c] = await start_nodes(
                nursery, encoder, [tmp_path / "c"], **_fast_trust(a.author.hex())
            )
            await b.connect(a.info().addrs[0])
            await c.connect(b.info().addrs[0])
            for left, right in itertools.pairwise([a, b, c]):
                await wait_meshed(left, right)
            feedback_topic = topic_for(a.encoder.space, FEEDBACK_TOPIC)
            await wait_until(
                lambda: (
                    a.peer_id in b.gossip.mesh_peers(feedback_topic)
                    and c.peer_id in b.gossip.mesh_peers(feedback_topic)
                ),
                what="feedback mesh",
            )
            await _hold_everywhere([a, b, c], [p_item, q_item])
            before, _ = await c.query(QUERY)
            ranked = [s.candidate.id for s in before.selected]
            assert q_item.record.id in ranked or before.down_weighted
            assert c.feedback.standing(q_key.public_key().public_bytes_raw(), 0.0) == 0.0

            # a's agent reports that q's lesson helped (and p's misled).
            out = await a.rate(q_item.record.id, FeedbackVerdict.HELPFUL, "bake bread")
            assert out["outcome"] == "accepted" and out["verdict"] == "helpful"
            await a.rate(p_item.record.id, FeedbackVerdict.HARMFUL)
            q_author = q_item.record.experience.author
            await wait_until(
                lambda: c.feedback.trust is not None and c.feedback.trust.trust_of(q_author) > 0,
                what="a's verdict reaching c's trust",
            )
            assert b.kb.store.feedback.counts()["helpful"] == 1  # relayed through b
            assert b.metrics()["feedback_verdicts"]["accept:ok"] >= 2  # per-topic stats
            assert c.feedback.ready and c.feedback.standing(q_author, 0.0) == 1.0
            after, _ = await c.query(QUERY)
            assert after.selected[0].candidate.id == q_item.record.id
            assert after.selected[0].candidate.reputation == 1.0
            assert p_item.record.id not in [s.candidate.id for s in after.selected]
            explained = await c.queries.explain(after)
            votes = explained[q_item.record.id]
            assert votes["helpful"] == 1 and votes["votes"][0]["voter"] == a.author.hex()
            assert votes["votes"][0]["voter_standing"] == 1.0
            # b does not trust a: the same verdict moves nothing there.
            assert b.feedback.standing(q_author, 0.0) == 0.0
            status = c.feedback.status()
            assert status.votes == 2 and status.recomputed_at is not None
            nursery.cancel_scope.cancel()

    run_trio(main, 180)


def test_a_late_node_gets_verdicts_by_sync_and_latest_wins(tmp_path, encoder):
    q_key = Ed25519PrivateKey.generate()
    [q_item] = lessons(encoder, q_key, [OTHER], domain="cooking.bread")

    async def main():
        async with trio.open_nursery() as nursery:
            [a] = await start_nodes(nursery, encoder, [tmp_path / "a"])
            await _hold_everywhere([a], [q_item])
            # Stored on a without gossip (as if long ago), so only sync can bring them to c.
            for verdict, at in ((FeedbackVerdict.HELPFUL, 1000), (FeedbackVerdict.HARMFUL, 2000)):
                body = Feedback(a.author, a.encoder.space, now_ms() - 3_600_000 + at,
                                q_item.record.id, verdict)  # fmt: skip
                record = sign_feedback(body, a.key)
                [result] = await a.in_kb(a.kb.store.feedback.insert, [(record, "local")])
                a.feedback._note(record, result)
            assert result.outcome == "replaced"
            assert a.kb.store.feedback.counts() == {"helpful": 0, "harmful": 1, "withdrawn": 0}
            # c starts later: no gossip history holds the verdict, only sync can bring it.
            [c] = await start_nodes(
                nursery, encoder, [tmp_path / "c"], **_fast_trust(a.author.hex())
            )
            await c.connect(a.info().addrs[0])
            await wait_until(
                lambda: c.kb.store.feedback.counts()["harmful"] == 1,
                timeout=40,
                what="sync of the verdict",
            )
            assert c.counters["sync_feedback:accept:ok"] >= 1
            assert c.kb.store.feedback.counts()["helpful"] == 0  # the replaced one never came
            await wait_until(
                lambda: c.feedback_digest.buckets == a.feedback_digest.buckets, what="digests"
            )
            nursery.cancel_scope.cancel()

    run_trio(main, 180)


def test_an_author_trust_vouches_for_answers_where_nothing_established_does(tmp_path, encoder):
    """trust.vouched_alone: this node's agents endorsed 20 authors; one of them endorsed a new
    author B (its only verdict), whose lesson is the only answer to a query. B is not
    established (trust standing 0.5) and newcomers may not answer alone here; with
    vouched_alone the node serves B's lesson, without it nothing."""
    from zoonode.experiences import sign_lessons
    from zoonode.sim.workload import NEWCOMER_LESSONS, shipped_lessons
    from zoonode.store import Incoming

    keys = [Ed25519PrivateKey.generate() for _ in range(21)]
    text, query = NEWCOMER_LESSONS[1]
    texts = [lesson["text"] for lesson in shipped_lessons()[:20]] + [text]
    vectors = encoder.encode_compact(texts)  # once: 21 authors, one lesson each
    *items, b_item = [
        Incoming(sign_lessons(encoder, key, [{"text": t, "domain": "test.lessons"}], v[None])[0], v)
        for key, t, v in zip(keys, texts, vectors, strict=True)
    ]
    b_author = b_item.record.experience.author

    async def main():
        async with trio.open_nursery() as nursery:
            nodes = []
            for name, alone in (("on", True), ("off", False)):
                [node] = await start_nodes(
                    nursery,
                    encoder,
                    [tmp_path / name],
                    trust={"recompute_s": 0.1, "vouched_alone": alone},
                    selection={"newcomers_alone": "never"},
                )
                await _hold_everywhere([node], [*items, b_item])
                for item in items:
                    await node.rate(item.record.id, FeedbackVerdict.HELPFUL)
                body = Feedback(keys[0].public_key().public_bytes_raw(), node.encoder.space,
                                now_ms(), b_item.record.id, FeedbackVerdict.HELPFUL)  # fmt: skip
                await node.feedback.enqueue(sign_feedback(body, keys[0]), "peer")
                nodes.append(node)
            for node in nodes:
                await wait_until(
                    lambda node=node: (
                        node.feedback.trust is not None
                        and node.feedback.trust.trust_of(b_author) > 0
                    ),
                    what="B reached by trust",
                )
                assert node.feedback.ready and 0.2 <= node.feedback.trust_standing(b_author) < 1
            on, off = [await node.query(query) for node in nodes]
            assert [s.candidate.id for s in on[0].selected] == [b_item.record.id]
            assert on[0].down_weighted["vouched_alone"] == 1
            assert off[0].selected == []
            nursery.cancel_scope.cancel()

    run_trio(main, 120)
