"""The query path on clean data: a one-author node answers with k lessons (real process, real
HTTP), and a query's store work is bounded by its candidates, not by the store (real node,
real SQLite: every statement's plan, and the SQLite VM steps per query at two store sizes)."""

from __future__ import annotations

import re
from functools import partial

import httpx
import numpy as np
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zoonode.experiences import create_experiences, sign_lessons
from zoonode.knowledge import Filters, KnowledgeBase, pool_complete
from zoonode.node import Node
from zoonode.protocol import public_key_bytes
from zoonode.store import Incoming

from netutil import node_config
from nodeproc import running_node

LESSONS = [
    "Before running a database migration in production, take a backup and test a restore",
    "Run database migrations inside a transaction so that a failed step rolls back cleanly",
    "Review the SQL a migration generates before applying it to the production database",
    "Keep database migrations small and reversible; write the down migration as well",
    "Lock-heavy database migrations on big tables should run in batches off peak hours",
    "After a database migration, check row counts and constraints before reopening traffic",
    "Unrelated: water boils at a lower temperature at high altitude, so cooking takes longer",
]
QUERY = "How do I run a database migration safely in production?"


def test_a_one_author_node_answers_with_k_of_its_own_lessons(tmp_path):
    """Every lesson shared through the API carries the node's own identity (one author):
    a query with k relevant lessons gets k of them, not one; sharing one again is found by
    the content index and returns the same id."""
    with running_node(tmp_path / "node") as node:
        items = [{"text": t, "domain": "ops.databases"} for t in LESSONS]
        shared = httpx.post(
            f"{node.url}/v1/experiences/batch",
            json={"experiences": items},
            headers=node.auth,
            timeout=120,
        ).json()["results"]
        assert [r["outcome"] for r in shared] == ["accepted"] * len(LESSONS)
        again = httpx.post(
            f"{node.url}/v1/experiences", json=items[2], headers=node.auth, timeout=60
        ).json()
        assert again == {"id": shared[2]["id"], "outcome": "duplicate"}
        for k in (5, 3):
            answer = httpx.post(
                f"{node.url}/v1/query", json={"text": QUERY, "k": k}, timeout=60
            ).json()
            texts = [s["text"] for s in answer["selected"]]
            assert len(texts) == k, answer
            assert set(texts) <= set(LESSONS[:6])
            assert "author_slot_limit" not in answer["down_weighted"]


def _fill(node: Node, encoder, n: int, peers: int, rng: np.random.Generator) -> None:
    """``n`` own lessons and ``peers`` lessons of another author, all near the query."""
    q = encoder.encode_compact(QUERY)[0]
    other = Ed25519PrivateKey.generate()
    for key, count, peer in ((node.key, n, "local"), (other, peers, "gossip")):
        vectors = q + 0.9 * rng.normal(size=(count, q.size)).astype(np.float32) / np.sqrt(q.size)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        items = [{"text": f"lesson {peer} {i}", "domain": "ops.databases"} for i in range(count)]
        records = sign_lessons(encoder, key, items, vectors)
        node.kb.ingest([Incoming(r, v, peer) for r, v in zip(records, vectors, strict=True)])


def _query_cost(node: Node) -> tuple[int, set[str]]:
    """SQLite VM steps (in thousands) and the statements of one query."""
    db = node.kb.store.db
    steps = [0]
    statements: set[str] = set()

    def count() -> int:
        steps[0] += 1
        return 0

    async def query():
        await node.query(text=QUERY, k=5)  # warm: caches, the replica
        db.set_progress_handler(count, 1000)
        db.set_trace_callback(statements.add)
        try:
            selection, _ = await node.query(text=QUERY, k=5)
        finally:
            db.set_progress_handler(None, 0)
            db.set_trace_callback(None)
        assert len(selection.selected) == 5

    trio.run(query)
    return steps[0], statements


def test_a_query_costs_what_its_candidates_cost_not_what_the_store_holds(tmp_path, encoder):
    """No statement of the query path scans a table, and the SQLite work of one query stays
    flat when the node's own lessons grow tenfold (it used to grow with them: standing read
    min(accepted_at) over every row of a prolific author, and a node without peers scanned
    the table for its first peer on every query)."""
    rng = np.random.default_rng(7)
    costs = []
    for size, name in ((200, "small"), (2000, "large")):
        node = Node(node_config(tmp_path / name, selection={"candidates": 40}), encoder=encoder)
        _fill(node, encoder, size, 0, rng)  # no peers yet: the bootstrap check runs per query
        steps, statements = _query_cost(node)
        costs.append(steps)
        db = node.kb.store.db
        for sql in statements:
            if not sql.lstrip().upper().startswith("SELECT"):
                continue
            plan = " | ".join(r[-1] for r in db.execute(f"EXPLAIN QUERY PLAN {sql}"))
            assert not re.search(r"SCAN (records|authors)(?! USING)", plan), (sql, plan)
        if name == "large":
            _fill(node, encoder, 0, 5, rng)  # a peer author now: the other branch
            steps_with_peer, _ = _query_cost(node)
            assert steps_with_peer <= 1.5 * costs[0] + 20
        node.kb.close()
    assert costs[1] <= 1.5 * costs[0] + 20, costs


def test_a_query_checks_on_demand_only_the_answers_its_checked_lessons_cannot_give(
    tmp_path, encoder
):
    """A peer's record still waiting for the embedding check matches the query best. With
    k = 5 the node's six checked lessons give five answers above the same floor: the query
    answers with them and leaves the waiting one to the background check (no encode). With
    k = 7 one answer is missing: exactly that one waiting pick is checked on demand, passes
    and answers. Stage 1 stores it as gossip does (``store_pending``)."""
    node = Node(node_config(tmp_path / "node", selection={"newcomer_weight": 1.0}), encoder=encoder)
    own = [{"text": t, "domain": "ops.databases"} for t in LESSONS]
    records = sign_lessons(encoder, node.key, own, encoder.encode_compact(LESSONS))
    node.kb.ingest(
        [
            Incoming(r, v, "local")
            for r, v in zip(records, encoder.encode_compact(LESSONS), strict=True)
        ]
    )
    [peer] = create_experiences(
        encoder, Ed25519PrivateKey.generate(), [{"text": QUERY, "domain": "ops.databases"}]
    )
    assert node.ingest.store_pending([(peer, "gossip")]) == [peer]
    assert node.kb.get(peer.id).pending

    trips = []
    in_kb = node.in_kb

    async def counted(fn, *args):
        trips.append(fn)
        return await in_kb(fn, *args)

    node.in_kb = counted

    async def ask(k: int) -> set[bytes]:
        answer = await node.answer(text=QUERY, k=k, votes=True)
        assert set(answer.records) == {s.candidate.id for s in answer.selection.selected}
        return {s.candidate.id for s in answer.selection.selected}

    answer = trio.run(ask, 5)
    assert len(answer) == 5 and peer.id not in answer
    assert node.counters["check:deferred"] == 1 and node.counters["check:on_demand"] == 0
    assert node.kb.get(peer.id).pending  # the background check takes it (touched first)
    assert list(node.checker._hot)[-1] == node.kb.get(peer.id).seq
    answer = trio.run(ask, 7)
    assert peer.id in answer and len(answer) == 7
    assert node.counters["check:on_demand"] == 1  # the one missing answer, not all k
    assert not node.kb.get(peer.id).pending
    # Each query, the on-demand check and the verdicts included, was one trip to the
    # knowledge-base thread.
    assert len(trips) == 2, trips
    node.kb.close()
    node.lock.release()


def vectors_at(q: np.ndarray, cosines, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors at exactly these cosines to the unit vector ``q`` (random otherwise)."""
    noise = rng.normal(size=(len(cosines), q.size)).astype(np.float32)
    noise -= np.outer(noise @ q, q)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    c = np.asarray(cosines, np.float32)[:, None]
    return (c * q + np.sqrt(1 - c**2) * noise).astype(np.float32)


def store_lessons(
    node: Node, encoder, text: str, vectors: np.ndarray, peer: str = "local", authors: int = 0
) -> list:
    """Lessons "``text`` i" (domain ops.databases) at ``vectors``, signed by the node's own
    key, or with ``authors`` > 0 by that many fresh keys (the lessons split in order), stored
    in ``node`` as received from ``peer``; returns the records, in the vectors' order."""
    keys = [node.key] if not authors else [Ed25519PrivateKey.generate() for _ in range(authors)]
    records: list = []
    for key, part in zip(keys, np.array_split(np.arange(len(vectors)), len(keys)), strict=True):
        items = [{"text": f"{text} {i}", "domain": "ops.databases"} for i in part]
        records += sign_lessons(encoder, key, items, vectors[part])
    node.kb.ingest([Incoming(r, v, peer) for r, v in zip(records, vectors, strict=True)])
    return records


def test_a_fresh_identity_cannot_raise_the_floor_over_established_answers(tmp_path, encoder):
    """The node's own lessons match a query weakly (0.31-0.37: their floor follows them down
    to 0.3). Lessons of brand-new identities matching it at 0.85 raise only the floor of
    newer authors' lessons (0.4): the own lessons still answer, under every
    ``newcomers_alone`` policy; a lure never answers alone. One lure, and twelve (more than
    the knowledge base's floor probe: its early cut must not take the lures' floor and cut
    the own lessons before selection sees them). Before, the answer was empty ("never") or
    the lures alone ("bootstrap"): issue 25 review."""
    rng = np.random.default_rng(11)
    q = encoder.encode_compact(QUERY)[0]

    def at(cosines) -> np.ndarray:
        return vectors_at(q, cosines, rng)

    for policy in ("bootstrap", "never", "always"):
        for lures in (1, 12):
            node = Node(
                node_config(tmp_path / f"{policy}-{lures}", selection={"newcomers_alone": policy}),
                encoder=encoder,
            )
            mine = store_lessons(node, encoder, "own lesson", at(np.linspace(0.37, 0.31, 6)))
            baits = at(np.linspace(0.86, 0.84, lures))
            store_lessons(node, encoder, "ask in our forum", baits, "gossip", authors=lures)

            for k in (5, 8):
                selection, _ = trio.run(partial(node.query, vector=q, k=k))
                ids = [s.candidate.id for s in selection.selected]
                why = (policy, lures, k, selection.down_weighted)
                assert set(ids) & {r.id for r in mine}, why  # never blank, never lures alone
                if k == 5:  # the own lessons outscore a fresh identity's (standing 0.2)
                    assert len(ids) == 5 and set(ids) <= {r.id for r in mine}, why
                else:  # all six own lessons answer; lures may fill the rest, not "never"
                    assert {r.id for r in mine} <= set(ids), why
                    assert len(ids) == (6 if policy == "never" else min(k, 6 + lures)), why
                assert selection.floor == 0.4, why
                assert selection.established_floor == pytest.approx(0.3), why
            node.kb.close()


def test_where_nobody_is_established_the_early_cut_takes_the_best_lessons_floor(tmp_path, encoder):
    """A node whose lessons are all fresh identities' (imported; no lesson of its own, none
    trusted: ``standing_bound`` under 1): twelve lessons at 0.85 (more than the floor probe)
    set the floor of all candidates at 0.4, and the forty at 0.31-0.33 are surely under it,
    so their rows are not read (before, the cut fell to the lowest floor, 0.3, and read them:
    at 100k lessons of 64 new authors, ~30 more rows a query). Once the node holds a lesson
    of its own (an established author may then answer further down, with a floor as low as
    0.3), they are read again. The answers are the same, and the count under the floor (the
    own lesson, at 0.2, is one more). 100 candidates: room for all 53 lessons."""
    rng = np.random.default_rng(13)
    q = encoder.encode_compact(QUERY)[0]
    node = Node(node_config(tmp_path / "n", selection={"candidates": 100}), encoder=encoder)
    strong = vectors_at(q, np.linspace(0.86, 0.84, 12), rng)
    weak = vectors_at(q, np.linspace(0.33, 0.31, 40), rng)
    vectors = np.concatenate([strong, weak])
    records = store_lessons(
        node, encoder, "imported lesson", vectors, "import", authors=len(vectors)
    )
    weak_seqs = {node.kb.store.get(r.id).seq for r in records[12:]}
    read: list[int] = []
    fields = node.kb.store.candidate_fields

    def counted(seqs):
        read.extend(int(s) for s in seqs)
        return fields(seqs)

    node.kb.store.candidate_fields = counted

    def ask():
        read.clear()
        selection, _ = trio.run(partial(node.query, vector=q, k=5))
        return selection, set(read)

    fresh, fresh_read = ask()
    assert not fresh_read & weak_seqs
    assert len(fresh.selected) == 5 and fresh.floor == 0.4
    assert fresh.down_weighted.get("below_similarity_floor") == 40, fresh.down_weighted
    store_lessons(node, encoder, "own lesson", vectors_at(q, [0.2], rng))
    after, after_read = ask()
    assert weak_seqs <= after_read
    assert [s.candidate.id for s in after.selected] == [s.candidate.id for s in fresh.selected]
    assert after.down_weighted.get("below_similarity_floor") == 41, after.down_weighted
    node.kb.close()


def test_a_filter_counts_only_the_lessons_it_matches(tmp_path, encoder):
    """A min_confidence filter matching one of 30 lessons: the answer counts that one as
    considered, and none under the floor. Before, the rows the early floor cut left unread
    were counted under the floor whether they matched the filter or not: "1 selected of 5
    considered; 4 below the similarity floor" (issue 25 review)."""
    rng = np.random.default_rng(5)
    q = encoder.encode_compact(QUERY)[0]
    node = Node(node_config(tmp_path / "node"), encoder=encoder)
    cosines = np.concatenate([[0.85], np.linspace(0.8, 0.5, 9), np.linspace(0.38, 0.2, 20)])
    items = [
        {"text": f"lesson {i}", "domain": "ops.databases", "confidence": 0.99 if i == 0 else 0.5}
        for i in range(len(cosines))
    ]
    vectors = vectors_at(q, cosines, rng)
    records = sign_lessons(encoder, node.key, items, vectors)
    node.kb.ingest([Incoming(r, v, "local") for r, v in zip(records, vectors, strict=True)])
    sure = Filters(min_confidence=0.95)
    selection, _ = trio.run(partial(node.query, vector=q, k=5, filters=sure))
    assert [s.candidate.id for s in selection.selected] == [records[0].id]
    assert selection.considered == 1
    assert selection.down_weighted.get("below_similarity_floor", 0) == 0
    # Unfiltered, the same node still cuts and counts its weak lessons under the floor.
    selection, _ = trio.run(partial(node.query, vector=q, k=5))
    assert len(selection.selected) == 5
    assert selection.down_weighted["below_similarity_floor"] >= 1


def test_cluster_members_beyond_the_limit_are_counted(tmp_path, encoder):
    """Six distinct lessons of one near-duplicate cluster (pairwise cosine ~0.92: one
    cluster at 0.9, yet apart enough to answer side by side under ``answer_duplicate``
    0.95): the knowledge base hands selection the best ``cluster_members`` (3); the other
    three are counted (``cluster_member_limit``), not silently lost. They do not fill the
    answer: k=5 gets 3 (measured; see docs/design.md)."""
    rng = np.random.default_rng(12)
    q = encoder.encode_compact(QUERY)[0]

    def unit(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    noise = unit(rng.normal(size=(7, q.size)).astype(np.float32))
    base = unit(0.6 * q + 0.8 * unit(noise[0] - (noise[0] @ q) * q))
    members = unit(base + 0.29 * noise[1:]).astype(np.float32)
    pairs = (members @ members.T)[np.triu_indices(6, 1)]
    assert pairs.min() > 0.9 and pairs.max() < 0.95
    node = Node(node_config(tmp_path / "n"), encoder=encoder)
    mine = store_lessons(node, encoder, "near lesson", members)
    assert len({node.kb.get(r.id).cluster for r in mine}) == 1  # the premise: one cluster
    selection, _ = trio.run(partial(node.query, vector=q, k=5))
    assert selection.down_weighted.get("cluster_member_limit") == 3, selection.down_weighted
    assert len(selection.selected) == 3 and selection.considered == 6
    node.kb.close()


def test_a_flood_of_distinct_fresh_lessons_cannot_push_established_ones_out_of_the_pool(
    tmp_path, encoder
):
    """The node's own lessons match a query at 0.30-0.44; 220 distinct lessons of fresh
    identities (one key, and 20 keys x 11) match it at 0.45-0.84: more than the replica's
    first candidates (~187) rank above every own lesson. The candidate pool is the best by
    cosine x standing factor over the whole store, so the own lessons (factor 1) outrank the
    lures (0.2) and answer under "never" and "bootstrap". Before, the pool held the 150 lures
    by raw cosine alone: the answer was empty ("never") or the lures alone ("bootstrap"):
    issue 25, second review."""
    rng = np.random.default_rng(26)
    q = encoder.encode_compact(QUERY)[0]

    def at(cosines) -> np.ndarray:
        return vectors_at(q, cosines, rng)

    for policy in ("never", "bootstrap"):
        for keys in (1, 20):
            node = Node(
                node_config(tmp_path / f"{policy}-{keys}", selection={"newcomers_alone": policy}),
                encoder=encoder,
            )
            mine = store_lessons(node, encoder, "own lesson", at(np.linspace(0.44, 0.30, 6)))
            baits = at(np.linspace(0.84, 0.45, 220))  # all above the own lessons
            fresh = store_lessons(node, encoder, "ask in our forum", baits, "gossip", authors=keys)
            assert len({r.experience.author for r in fresh}) == keys

            for k in (5, 8):
                selection, _ = trio.run(partial(node.query, vector=q, k=k))
                ids = {s.candidate.id for s in selection.selected}
                why = (policy, keys, k, selection.down_weighted)
                assert ids & {r.id for r in mine}, why  # never blank, never lures alone
                if policy == "never":
                    assert ids <= {r.id for r in mine}, why
            node.kb.close()


def test_a_weighed_search_widens_until_no_unread_lesson_could_outrank_its_pool(tmp_path, encoder):
    """The stopping rule: the k-th kept (factor x cosine) must beat the best any unread lesson
    could reach (the bound on factors x (the replica's last score + its error)), unless no
    unread author can weigh more than the k-th's. Through a knowledge base: 220 lures of a
    factor-0.2 author rank above 6 lessons of a factor-1 author by cosine; the pool of 150 by
    weighted rank holds the six, as long as the bound on factors admits a factor of 1."""
    assert pool_complete(0.2, 0.5, 0.45, 0.2, 0.05)  # nobody unread weighs more: as before
    assert pool_complete(1.0, 0.5, 0.45, 1.0, 0.05)  # one author (or all established)
    assert not pool_complete(0.2, 0.5, 0.45, 1.0, 0.05)  # 0.1 < 1 x 0.5: widen
    assert pool_complete(0.2, 0.5, 0.04, 1.0, 0.05)  # 0.09 < 0.1: complete
    assert not pool_complete(0.2, 0.5, 0.05, 1.0, 0.05)  # 0.10 is not under 0.10
    assert pool_complete(0.2, 0.5, 0.05, 1.0, 0.0)  # an exact backend has no error
    assert pool_complete(0.2, 0.01, -0.3, 1.0, 0.05)  # a negative cosine ranks at most 0
    # A negative k-th: an unread one at -0.5 with factor 0.2 ranks -0.1, above 1 x -0.2.
    assert not pool_complete(1.0, -0.2, -0.5, 1.0, 0.0)

    rng = np.random.default_rng(27)
    q = encoder.encode_compact(QUERY)[0]
    noise = rng.normal(size=(226, q.size)).astype(np.float32)
    noise -= np.outer(noise @ q, q)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    c = np.concatenate([np.linspace(0.44, 0.30, 6), np.linspace(0.84, 0.45, 220)])[:, None]
    vectors = (c * q + np.sqrt(1 - c**2) * noise).astype(np.float32)
    established, fresh = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    own = sign_lessons(
        encoder, established, [{"text": f"own {i}", "domain": "d"} for i in range(6)], vectors[:6]
    )
    lures = sign_lessons(
        encoder, fresh, [{"text": f"lure {i}", "domain": "d"} for i in range(220)], vectors[6:]
    )
    kb = KnowledgeBase(tmp_path, encoder.space, encoder.space_info.hidden)
    kb.ingest([Incoming(r, v) for r, v in zip(own + lures, vectors, strict=True)])
    top = public_key_bytes(established)

    def weigh(authors: list[bytes]) -> np.ndarray:
        return np.array([1.0 if a == top else 0.2 for a in authors])

    mine = {r.id for r in own}
    pool = {h.row.id for h in kb.find(q, k=150, weigh=weigh).hits}
    assert mine <= pool and len(pool) == 150
    # A bound that leaves out the established author: the first candidates (~187 lures) only.
    assert not mine & {h.row.id for h in kb.find(q, k=150, weigh=weigh, max_factor=0.2).hits}
    assert not mine & {h.row.id for h in kb.find(q, k=150).hits}  # unweighed: by cosine
    assert kb.pools_capped == 0
    kb.close()


def test_a_flooded_weighed_search_stops_at_the_cap_not_at_the_whole_store(tmp_path, encoder):
    """More than 4096 lures of a factor-0.2 author above a factor-1 author's lesson: the
    search widens to 4096 candidates, then accepts its pool (counted) rather than reading
    every row of the store; the lesson under them all is then left out (the flood's limit)."""
    rng = np.random.default_rng(28)
    q = encoder.encode_compact(QUERY)[0]
    n = 4600
    noise = rng.normal(size=(n + 1, q.size)).astype(np.float32)
    noise -= np.outer(noise @ q, q)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    c = np.concatenate([[0.3], np.linspace(0.8, 0.45, n)])[:, None]  # no near-duplicates
    vectors = (c * q + np.sqrt(1 - c**2) * noise).astype(np.float32)
    established, fresh = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    [own] = sign_lessons(encoder, established, [{"text": "own", "domain": "d"}], vectors[:1])
    items = [{"text": f"lure {i}", "domain": "d"} for i in range(n)]
    lures = sign_lessons(encoder, fresh, items, vectors[1:])
    # faiss-ivf (untrained: exact): as many as asked (a graph walk may return fewer: the end).
    kb = KnowledgeBase(
        tmp_path, encoder.space, encoder.space_info.hidden, replica_backend="faiss-ivf"
    )
    kb.ingest([Incoming(r, v) for r, v in zip([own, *lures], vectors, strict=True)])
    assert len(kb.replica.search(q, k=4096)[0]) == 4096
    top = public_key_bytes(established)

    def weigh(authors: list[bytes]) -> np.ndarray:
        return np.array([1.0 if a == top else 0.2 for a in authors])

    hits = kb.find(q, k=150, weigh=weigh).hits
    assert len(hits) == 150 and own.id not in {h.row.id for h in hits}
    assert kb.pools_capped == 1
    kb.close()
