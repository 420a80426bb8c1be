"""Two-stage ingest, part one: the pure rules (code vectors, the embedding rule, the backlog
bounds), the replica replacing and removing keys on every backend, the store's schema
migration, and pending records in the knowledge base (search, promote, remove, journal
replay after a crash, eviction). Real encoder, real SQLite and index files."""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zoonode.experiences import create_experiences, create_revocation, now_ms, sign_lessons
from zoonode.knowledge import DB_FILE, NEWCOMER_RANK, KnowledgeBase, waiting_complete
from zoonode.native.codec import compress_many
from zoonode.native.head import lift
from zoonode.net.validation import (
    AbsoluteAgreement,
    AuthorLimiter,
    BacklogBounds,
    Policy,
    Reason,
    Verdict,
    backlog_admits,
    check_message,
    check_record,
    code_vectors,
    encode_batch,
)
from zoonode.node.checker import CHECK_THREADS, CheckThread, may_start, query_threads
from zoonode.protocol import (
    Experience,
    Feedback,
    FeedbackVerdict,
    Op,
    public_key_bytes,
    sign,
    sign_feedback,
)
from zoonode.replica import Replica
from zoonode.store import SCHEMA_VERSION, Incoming, Status, Store, StoreError

TEXTS = [
    "Check the sign of the divisor before dividing both sides of an inequality",
    "Prefer parameterised SQL queries to string formatting to avoid injection",
    "When a unit test is flaky, look for state shared between tests first",
    "Read the first frame of a traceback before editing any code",
    "Check units before adding measured values in a physics problem",
    "Pin dependency versions in CI so that a new release cannot break a commit",
]


def hijack(encoder, key, text: str, victim_text: str, created_at: int | None = None):
    """A signed record whose code is another text's: what a hijacker sends."""
    [vector] = encoder.encode_compact(victim_text)
    [code] = compress_many(lift(vector[None], encoder.space_info.head), encoder.space_info.v_ref)
    exp = Experience(
        op=Op.ADD,
        author=public_key_bytes(key),
        space=encoder.space,
        created_at=created_at or now_ms(),
        text=text,
        domain="spam.ads",
        confidence=1.0,
        code=code,
    )
    return sign(exp, key)


def pending_items(encoder, records, rank=0):
    """Records as a peer's arrive: the vector their code implies, pending."""
    space = encoder.space_info
    vectors = code_vectors([r.experience.code for r in records], space.head, space.v_ref)
    return [
        Incoming(r, v, "peer", pending=rank + i)
        for i, (r, v) in enumerate(zip(records, vectors, strict=True))
    ]


# -- pure rules ---------------------------------------------------------------------------------
def test_code_vectors_place_a_record_near_its_text_and_the_rule_catches_hijacks(encoder, key):
    records = create_experiences(
        encoder, key, [{"text": t, "domain": "a.b", "confidence": 0.5} for t in TEXTS]
    )
    exact = encoder.encode_compact(TEXTS)
    space = encoder.space_info
    implied = code_vectors([r.experience.code for r in records], space.head, space.v_ref)
    assert implied.shape == exact.shape
    np.testing.assert_allclose(np.linalg.norm(implied, axis=1), 1.0, atol=1e-5)
    cos = np.sum(implied * exact, axis=1)
    assert cos.min() > 0.95  # an honest record sits where its text will
    bad = hijack(encoder, Ed25519PrivateKey.generate(), "Buy cheap watches today", TEXTS[1])
    rule = AbsoluteAgreement(0.9)
    codes = [r.experience.code for r in records] + [bad.experience.code]
    texts = np.vstack([exact, encoder.encode_compact("Buy cheap watches today")])
    verdicts = rule(codes, texts, space)
    assert [v.accept for v in verdicts] == [True] * len(TEXTS) + [False]
    assert [v.ban for v in verdicts] == [False] * len(TEXTS) + [True]
    assert verdicts[-1].score < 0.5 and all(v.score > 0.95 for v in verdicts[:-1])


def test_backlog_bounds_ignore_newcomers_over_the_total_and_anyone_over_their_share(encoder, key):
    bounds = BacklogBounds(total=10, per_author=3)
    assert backlog_admits(9, 2, False, bounds)
    assert not backlog_admits(10, 0, False, bounds)  # a newcomer waits for the drain
    assert backlog_admits(10, 0, True, bounds)  # an author vouched for by a check does not
    assert backlog_admits(15, 2, True, bounds)
    assert not backlog_admits(0, 3, True, bounds)  # ... up to its own share
    assert not backlog_admits(20, 0, True, bounds)  # ... and nobody past twice the total
    assert bounds.hard == 20 and backlog_admits(19, 0, True, bounds)
    [record] = create_experiences(encoder, key, [{"text": TEXTS[0], "domain": "a.b"}])
    limiter = AuthorLimiter(rate=1.0, burst=1.0)
    policy = Policy(space=encoder.space)
    now = record.experience.created_at
    full = check_record(record.wire, policy, now, lambda _: False, limiter, backlog=lambda r: False)
    assert (full.verdict, full.reason) == (Verdict.IGNORE, Reason.BACKLOG)
    # Ignored for the backlog before the rate limit: no token spent, the next try passes.
    later = check_record(record.wire, policy, now, lambda _: False, limiter)
    assert later.verdict is Verdict.ACCEPT


def test_one_gossip_message_cannot_carry_records_past_the_backlog_bounds(encoder):
    """The records of one message are all validated before any is queued: each one's bound
    counts those accepted before it in the message, and those of earlier messages not yet
    handed over (``ahead``). A fresh review sent 30 records of one author in one message to
    a node with max_pending_per_author 10 and all 30 were stored."""
    bounds = BacklogBounds(total=6, per_author=3)
    x, y = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    texts = [f"Lesson {i}: retry step {i} once before you report it failed" for i in range(5)]
    xs = create_experiences(encoder, x, [{"text": t, "domain": "a"} for t in texts])
    ys = create_experiences(encoder, y, [{"text": t, "domain": "b"} for t in texts])
    policy = Policy(space=encoder.space)
    now = xs[0].experience.created_at

    def admits(record, ahead):  # a node with nothing waiting yet: only ``ahead`` counts
        author = record.experience.author
        return backlog_admits(ahead.total(), ahead[author], False, bounds)

    def check(data, ahead=None):
        limiter = AuthorLimiter(rate=100.0, burst=100.0)
        return check_message(
            data, policy, now, lambda _: False, limiter, backlog=admits, ahead=ahead
        )

    outcome = check(encode_batch([r.wire for r in xs]))
    assert outcome.verdict is Verdict.ACCEPT
    assert [c.reason for c in outcome.checked] == [Reason.OK] * 3 + [Reason.BACKLOG] * 2
    # Two authors: the total (6) is reached after 3 of x and 3 of y.
    mixed = [r.wire for pair in zip(xs, ys, strict=True) for r in pair]
    outcome = check(encode_batch(mixed))
    assert [c.reason for c in outcome.checked].count(Reason.OK) == 6
    # Earlier messages' lessons, accepted but not handed over, count as well.
    earlier = Counter({xs[0].experience.author: 2})
    outcome = check(encode_batch([r.wire for r in xs]), ahead=earlier)
    assert [c.reason for c in outcome.checked].count(Reason.OK) == 1
    assert earlier == Counter({xs[0].experience.author: 2})  # not changed


# -- replica ------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["usearch-i8", "hnswlib", "faiss-ivf"])
@pytest.mark.parametrize("size", [200, 600])  # faiss-ivf: flat below 64 x 4 lists, IVF above
def test_replica_replaces_and_removes_keys(tmp_path, backend, size):
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((size, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    replica = Replica(64, backend=backend, lists=4)
    replica.add(np.arange(1, size + 1), vectors)
    moved = rng.standard_normal((3, 64)).astype(np.float32)
    moved /= np.linalg.norm(moved, axis=1, keepdims=True)
    replica.replace(np.array([5, 6, 7]), moved)
    replica.remove(np.array([9, 10, 99_999]))  # an unknown key is skipped
    for r in (replica, _reloaded(replica, tmp_path)):
        keys, sims = r.search(moved[0], k=1, ef=512)
        assert keys[0] == 5 and sims[0] > 0.95
        keys, _ = r.search(vectors[8], k=5, ef=512)  # key 9's old vector
        assert 9 not in keys and 10 not in r.search(vectors[9], k=5, ef=512)[0]
        keys, _ = r.search(vectors[4], k=5, ef=512)  # key 5's old place: 5 has moved away
        assert 5 not in keys
        assert 11 in r.search(vectors[10], k=3, ef=512)[0]  # the rest is untouched


def _reloaded(replica: Replica, directory) -> Replica:
    replica.save(directory)
    return Replica.load(directory, 64, backend=replica.backend, lists=4)


def test_the_pending_index_adds_removes_and_finds_exactly():
    from zoonode.knowledge import PendingIndex

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    index = PendingIndex(16)
    index.add(range(1, 3001), vectors)  # grows past its first 1,024 slots
    index.remove([1, 2, 1500, 3000, 99_999])
    assert len(index) == 2996
    held = np.array([s for s in range(1, 3001) if s not in (1, 2, 1500, 3000)])
    for q in rng.standard_normal((5, 16)).astype(np.float32):
        expected = held[np.argsort(-(vectors[held - 1] @ q), kind="stable")[:10]]
        seqs, sims = index.search(q, 10)
        assert list(seqs) == list(expected)
        np.testing.assert_allclose(sims, vectors[expected - 1] @ q, rtol=1e-6)
        cut = float(vectors[expected[4] - 1] @ q)  # the 5th best's score: a floor
        assert list(index.search(q, 10, floor=cut)[0]) == list(expected[:5])
    assert len(PendingIndex(16).search(vectors[0], 5)[0]) == 0


def test_the_pending_index_int8_pass_keeps_the_exact_top_k_and_floor():
    """The int8 first pass only preselects: on 20,000 unit vectors in tight clusters (many
    near-ties, where quantisation could swap ranks), the answer is float32 brute force's,
    and a floor between two close scores cuts exactly there."""
    from zoonode.knowledge import PendingIndex

    rng = np.random.default_rng(8)
    centres = rng.standard_normal((40, 384)).astype(np.float32)
    vectors = centres[rng.integers(0, 40, 20_000)] + 0.15 * rng.standard_normal(
        (20_000, 384)
    ).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = PendingIndex(384)
    for start in range(0, 20_000, 500):  # stage 1 adds in batches
        index.add(range(start, start + 500), vectors[start : start + 500])
    for q in vectors[rng.integers(0, 20_000, 20)] + 0.05 * rng.standard_normal((20, 384)):
        q = (q / np.linalg.norm(q)).astype(np.float32)
        exact = vectors @ q
        best = np.argsort(-exact, kind="stable")[:150]
        seqs, sims = index.search(q, 150)
        assert list(seqs) == list(best)
        np.testing.assert_allclose(sims, exact[best], rtol=1e-5)
        floor = float((exact[best[40]] + exact[best[41]]) / 2)
        assert list(index.search(q, 150, floor=floor)[0]) == list(best[:41])


def test_a_waiting_record_under_the_lowest_floor_is_not_even_read():
    """Selection drops every candidate under its floor, which never goes below
    ``lowest_floor``; the query passes that to the search of waiting records."""
    from zoonode.selection import lowest_floor, similarity_floor

    assert lowest_floor(0.4, 0.3) == 0.3 and lowest_floor(0.4, None) == 0.4
    assert lowest_floor(0.4, 0.5) == 0.4
    for best in (0.0, 0.2, 0.35, 0.45, 0.9):
        assert similarity_floor(best, 0.4, 0.3, 0.1) >= lowest_floor(0.4, 0.3)


# -- store schema ---------------------------------------------------------------------------------
def test_a_version_1_store_of_main_upgrades_to_two_stage(tmp_path, encoder, key):
    """Schema 1 (authors table and content keys, no pending column nor replica journal)
    upgrades to 2 on open: its records stay checked, its authors keep their first
    acceptance, and a record stored pending afterwards is in the checker's queue."""
    path = tmp_path / "node"
    kb = KnowledgeBase(path, encoder.space, encoder.space_info.hidden)
    [item] = pending_items(
        encoder, create_experiences(encoder, key, [{"text": TEXTS[0], "domain": "a.b"}])
    )
    kb.ingest([replace(item, pending=None)])
    author = item.record.experience.author
    first = kb.authors_first_seen([author])
    kb.close()
    db = sqlite3.connect(path / DB_FILE)
    db.executescript(  # what zoonode wrote at schema 1
        "DROP TABLE feedback;"
        "DROP INDEX records_pending; DROP INDEX records_cluster_status;"
        "ALTER TABLE records DROP COLUMN pending; DROP TABLE replica_journal;"
        "CREATE INDEX records_cluster_status ON records(cluster, status)"
        " WHERE cluster IS NOT NULL;"
        "PRAGMA user_version = 1;"
    )
    db.close()
    kb = KnowledgeBase(path, encoder.space, encoder.space_info.hidden)
    assert kb.store.schema_version == SCHEMA_VERSION == 3
    row = kb.get(item.record.id)
    assert row.status is Status.ACTIVE and not row.pending
    assert kb.authors_first_seen([author]) == first
    indexes = {r[0]: r[1] for r in kb.store.db.execute("SELECT name, sql FROM sqlite_master")}
    assert "pending" in indexes["records_cluster_status"] and "records_pending" in indexes
    [waiting] = pending_items(
        encoder, create_experiences(encoder, key, [{"text": TEXTS[1], "domain": "a.b"}])
    )
    kb.ingest([waiting])
    assert [r.id for r in kb.pending(10)] == [waiting.record.id]
    assert kb.store.counts()["pending"] == 1
    kb.close()


def test_a_version_2_store_of_main_gains_the_feedback_table(tmp_path, encoder, key):
    """Schema 2 (two-stage ingest, no feedback table) upgrades to 3 on open: a checked and a
    pending record stay as they were (the pending one still in the checker's queue, the
    replica journal kept), and verdicts are then stored, one standing per voter and target."""
    path = tmp_path / "node"
    kb = KnowledgeBase(path, encoder.space, encoder.space_info.hidden)
    checked, waiting = pending_items(
        encoder,
        create_experiences(
            encoder, key, [{"text": TEXTS[0], "domain": "a.b"}, {"text": TEXTS[1], "domain": "a.b"}]
        ),
    )
    kb.ingest([replace(checked, pending=None), waiting])
    journal = kb.store.db.execute("SELECT count(*) FROM replica_journal").fetchone()[0]
    kb.close()
    db = sqlite3.connect(path / DB_FILE)
    db.executescript(  # what zoonode wrote at schema 2 (main after #23)
        "DROP TABLE feedback; PRAGMA user_version = 2;"
    )
    db.close()
    kb = KnowledgeBase(path, encoder.space, encoder.space_info.hidden)
    store = kb.store
    assert store.schema_version == SCHEMA_VERSION == 3
    assert store.db.execute("SELECT count(*) FROM replica_journal").fetchone()[0] == journal
    assert (
        kb.get(checked.record.id).status is Status.ACTIVE and not kb.get(checked.record.id).pending
    )
    assert [r.id for r in kb.pending(10)] == [waiting.record.id]
    indexes = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master")}
    assert {"feedback", "feedback_target", "feedback_created"} <= indexes
    voter = Ed25519PrivateKey.generate()
    at = checked.record.experience.created_at
    votes = [
        sign_feedback(
            Feedback(
                public_key_bytes(voter), encoder.space, at + i, checked.record.id,
                FeedbackVerdict(v), None,
            ),
            voter,
        )
        for i, v in enumerate((1, -1))
    ]  # fmt: skip
    outcomes = [r.outcome for r in store.feedback.insert([(v, "p") for v in votes])]
    assert outcomes == ["accepted", "replaced"]
    assert store.feedback.counts() == {"helpful": 0, "harmful": 1, "withdrawn": 0}
    kb.close()
    again = KnowledgeBase(path, encoder.space, encoder.space_info.hidden)  # opening again
    assert again.store.schema_version == 3 and again.store.feedback.counts()["harmful"] == 1
    again.close()


def test_a_version_0_store_upgrades_in_place_and_a_newer_one_is_refused(tmp_path, encoder, key):
    from zoonode.store import _SCHEMA

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(_SCHEMA)  # the schema every data dir had before versioning
    [item] = pending_items(
        encoder, create_experiences(encoder, key, [{"text": TEXTS[0], "domain": "a.b"}])
    )
    r = item.record
    db.execute(
        "INSERT INTO records (id, wire, op, author, domain, confidence, created_at, accepted_at,"
        " peer, parent, status, cluster, vector) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            r.id,
            r.wire,
            0,
            r.experience.author,
            "a.b",
            0.5,
            1,
            1,
            "x",
            None,
            0,
            1,
            item.vector.tobytes(),
        ),
    )
    db.execute("INSERT INTO meta VALUES ('space', ?)", (encoder.space,))
    db.commit()
    db.close()
    store = Store(path, encoder.space)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    row = store.get(r.id)
    assert row.status is Status.ACTIVE and not row.pending  # old records were checked
    assert store.counts()["active"] == 1 and store.counts()["pending"] == 0
    store.close()
    Store(path, encoder.space).close()  # opening again changes nothing
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 99"):
        Store(path, encoder.space)


# -- knowledge base -------------------------------------------------------------------------------
def test_pending_records_are_searched_only_when_asked_then_promoted_or_removed(
    tmp_path, encoder, key
):
    kb = KnowledgeBase(tmp_path, encoder.space, encoder.space_info.hidden)
    records = create_experiences(
        encoder, key, [{"text": t, "domain": "a.b", "confidence": 0.5} for t in TEXTS]
    )
    bad = hijack(encoder, Ed25519PrivateKey.generate(), "Buy cheap watches today", TEXTS[1])
    kb.ingest(pending_items(encoder, [*records, bad]))
    assert kb.backlog.total == 7 and kb.store.counts()["pending"] == 7
    assert len(kb.replica) == 0 and len(kb.pending_index) == 7  # not in the graph yet
    assert key_author(key) not in kb.backlog.vouched
    q = encoder.encode_compact("how do I avoid SQL injection")[0]
    assert kb.search(q, k=3) == []  # by default only checked records
    hits = kb.search(q, k=3, pending=True)
    assert {h.row.id for h in hits[:2]} == {records[1].id, bad.id}  # the hijack sits there too
    assert all(h.row.pending for h in hits)
    rows = kb.pending(10)
    assert rows[0].pending and len(rows) == 7
    exact = encoder.encode_compact(TEXTS)
    by_id = {r.id: r for r in rows}
    promoted = kb.promote([by_id[r.id] for r in records], exact)
    assert len(promoted) == 6 and kb.promote([by_id[records[0].id]], exact[:1]) == []  # once
    assert key_author(key) in kb.backlog.vouched and kb.backlog.total == 1
    assert len(kb.replica) == 6 and len(kb.pending_index) == 1  # entered once, exact
    [top] = kb.search(q, k=1)
    assert top.row.id == records[1].id and not top.row.pending
    assert top.score == pytest.approx(float(exact[1] @ q), abs=1e-5)  # the exact vector now
    removed = kb.remove([by_id[bad.id]], Reason.EMBEDDING_MISMATCH)
    assert [r.id for r in removed] == [bad.id] and kb.backlog.total == 0
    assert kb.get(bad.id) is None and kb.store.known(bad.id)  # tombstoned: never fetched again
    assert bad.id not in {h.row.id for h in kb.search(q, k=10, pending=True)}
    assert kb.store.counts() | {"total": 0} == {
        "total": 0,
        "active": 6,
        "pending": 0,
        "revoked": 0,
        "superseded": 0,
        "invalid": 0,
        "revocations": 0,
    }
    kb.close()


def test_a_waiting_record_is_a_candidate_only_where_it_would_be_one_in_the_replica(
    tmp_path, encoder, key
):
    """Waiting records scoring under the replica's last candidate are not read: as if they
    were in the replica, where the search would not have reached them either. Even a weight
    that would put one first (checked rows weighed 0.01) does not bring it back where the
    caller bounds every factor by the checked ones' (``max_factor``); with the sound bound
    (1) the search widens until no unread record could outrank its k-th, reading it."""
    dim = encoder.space_info.hidden
    rng = np.random.default_rng(4)
    q = np.zeros(dim, np.float32)
    q[0] = 1.0

    def at(score: float) -> np.ndarray:  # a unit vector with this cosine to q
        u = rng.standard_normal(dim).astype(np.float32)
        u[0] = 0.0
        v = score * q + np.sqrt(1 - score**2) * u / np.linalg.norm(u)
        return v.astype(np.float32)

    kb = KnowledgeBase(tmp_path, encoder.space, dim)
    records = create_experiences(
        encoder,
        key,
        [{"text": f"lesson number {i} on topic {i % 7}", "domain": "a.b"} for i in range(80)],
    )
    scores = np.linspace(0.9, 0.5, 80)  # k=10 reads the best 64: the last scores ~0.58
    kb.ingest([Incoming(r, at(s)) for r, s in zip(records, scores, strict=True)])
    near, far = create_experiences(  # another author's, weighed 100x the checked ones
        encoder,
        Ed25519PrivateKey.generate(),
        [{"text": f"lesson number {i} from a peer", "domain": "a.b"} for i in (80, 81)],
    )
    kb.ingest(
        [Incoming(near, at(0.7), "peer", pending=0), Incoming(far, at(0.45), "peer", pending=1)]
    )
    peer = near.experience.author

    def weigh(authors):
        return np.array([1.0 if a == peer else 0.01 for a in authors])

    found = kb.find(q, k=10, pending=True, weigh=weigh, dedupe=False, max_factor=0.01)
    ids = [h.row.id for h in found.hits]
    assert ids[0] == near.id and far.id not in ids
    ids = [h.row.id for h in kb.search(q, k=10, pending=True, weigh=weigh, dedupe=False)]
    assert ids[:2] == [near.id, far.id]
    wide = kb.search(q, k=100, pending=True, weigh=weigh, dedupe=False)  # reads all 80
    assert [h.row.id for h in wide][:2] == [near.id, far.id]


def test_waiting_records_above_the_replicas_last_take_its_place_not_an_extra_read(
    tmp_path, encoder, key
):
    """Where waiting records score above the replica's last candidate, the best ``fetch`` of
    both together are the candidates, as if the waiting ones were in the replica: the rows
    read stay ``fetch`` (a drained backlog of relevant records read twice that before), and
    the hits are the best of both."""
    dim = encoder.space_info.hidden
    rng = np.random.default_rng(6)
    q = np.zeros(dim, np.float32)
    q[0] = 1.0

    def at(score: float) -> np.ndarray:
        u = rng.standard_normal(dim).astype(np.float32)
        u[0] = 0.0
        return (score * q + np.sqrt(1 - score**2) * u / np.linalg.norm(u)).astype(np.float32)

    kb = KnowledgeBase(tmp_path, encoder.space, dim)
    texts = [f"lesson number {i} on topic {i % 7}" for i in range(120)]
    records = create_experiences(encoder, key, [{"text": t, "domain": "a.b"} for t in texts])
    checked_scores = np.linspace(0.8, 0.5, 80)  # k=10 fetches 64 from the replica
    waiting_scores = np.linspace(0.95, 0.45, 40)  # 23 of them above the 64th checked one
    kb.ingest([Incoming(r, at(s)) for r, s in zip(records[:80], checked_scores, strict=True)])
    kb.ingest(
        [
            Incoming(r, at(s), "peer", pending=i)
            for i, (r, s) in enumerate(zip(records[80:], waiting_scores, strict=True))
        ]
    )
    read: list[int] = []
    reads = kb.store.candidate_fields
    kb.store.candidate_fields = lambda seqs: read.append(len(seqs)) or reads(seqs)
    hits = kb.search(q, k=10, pending=True, dedupe=False)
    kb.store.candidate_fields = reads
    assert sum(read) == 64, read
    best = sorted(
        [(s, r.id) for r, s in zip(records, [*checked_scores, *waiting_scores], strict=True)],
        reverse=True,
    )[:10]
    assert [h.row.id for h in hits] == [i for _, i in best]
    kb.close()


def test_waiting_records_of_newer_authors_do_not_widen_the_search(tmp_path, encoder, key):
    """With ``weigh``, the waiting records above the replica's last candidate are candidates
    beside its ``fetch``: a newer author's (factor 0.2) does not push a checked lesson out.
    Cut by cosine to the best ``fetch`` of both they did: the k-th kept was then a waiting
    one, the pool could not be shown complete, and the search widened 4x (2 replica searches
    and ~330 rows a query at 100k while a backlog drained). One search here, and the hits
    are the best k by cosine x factor."""
    # k=50 fetches 66 from the replica; ~30 waiting ones score above the 66th checked one
    kb, q, weigh, scored = weighed_kb(
        tmp_path,
        encoder,
        key,
        np.linspace(0.8, 0.5, 80),
        {"newer": (0.2, np.linspace(0.95, 0.45, 40))},
    )
    searches: list[int] = []
    search = kb.replica.search
    kb.replica.search = lambda query, k: searches.append(k) or search(query, k=k)
    found = kb.find(q, k=50, pending=True, weigh=weigh, dedupe=False, max_factor=1.0)
    kb.replica.search = search
    assert searches == [66], searches
    assert [h.row.id for h in found.hits] == [i for _, i in sorted(scored, reverse=True)[:50]]
    kb.close()


def weighed_kb(tmp_path, encoder, key, checked_scores, groups, seed=8):
    """A knowledge base with checked lessons of ``key`` (factor 1) at these cosines to a
    query, and waiting records of other authors: ``groups`` name -> (factor, cosines).
    Records are signed without encoding their texts (``sign_lessons``): only the indexed
    vectors matter here. Returns (kb, query, weigh, every record's (weighted score, id))."""
    dim = encoder.space_info.hidden
    rng = np.random.default_rng(seed)
    q = np.zeros(dim, np.float32)
    q[0] = 1.0
    compact = encoder.encode_compact(["a lesson"])

    def at(score: float) -> np.ndarray:
        u = rng.standard_normal(dim).astype(np.float32)
        u[0] = 0.0
        return (score * q + np.sqrt(1 - score**2) * u / np.linalg.norm(u)).astype(np.float32)

    def signed(author, name: str, n: int):
        items = [{"text": f"{name} {i}", "domain": "a.b"} for i in range(n)]
        return sign_lessons(encoder, author, items, np.repeat(compact, n, 0))

    kb = KnowledgeBase(tmp_path, encoder.space, dim)
    records = signed(key, "lesson", len(checked_scores))
    kb.ingest([Incoming(r, at(s)) for r, s in zip(records, checked_scores, strict=True)])
    scored = [(float(s), r.id) for r, s in zip(records, checked_scores, strict=True)]
    factor = {public_key_bytes(key): 1.0}
    rank = 0
    for name, (f, scores) in groups.items():
        other = Ed25519PrivateKey.generate()
        factor[public_key_bytes(other)] = f
        waiting = signed(other, name, len(scores))
        pairs = enumerate(zip(waiting, scores, strict=True))
        kb.ingest([Incoming(r, at(s), "peer", pending=rank + i) for i, (r, s) in pairs])
        rank += len(scores)
        scored += [(f * float(s), r.id) for r, s in zip(waiting, scores, strict=True)]
    return kb, q, lambda authors: np.array([factor[a] for a in authors]), scored


def test_waiting_complete_bounds_the_unread_waiting_records():
    # k-th kept at cosine 0.8: unread waiting records score up to 0.85, any factor up to 1
    assert not waiting_complete(1.0, 0.8, 0.85, 1.0)
    assert waiting_complete(1.0, 0.9, 0.85, 1.0)
    assert waiting_complete(0.995, 0.9, 0.85, 1.0)  # within FACTOR_SLACK of the bound
    assert not waiting_complete(0.5, 0.9, 0.5, 1.0)  # 0.45 < 0.5
    assert waiting_complete(0.5, 0.9, 0.4, 1.0)
    assert waiting_complete(0.2, 0.9, 0.85, 0.2)  # every author fresh: cosine order
    # Negative cosines: an unread one at -0.5 with a factor near 0 ranks near 0, above -0.2.
    assert not waiting_complete(1.0, -0.2, -0.5, 1.0)
    assert not waiting_complete(0.5, -0.2, -0.5, 1.0)
    assert waiting_complete(0.5, 0.1, -0.5, 1.0)  # 0.05 >= 0


def flood_case(checked, flood, known):
    """(checked cosines, groups): a newer author's flood (factor 0.2) and an established
    author's waiting records (factor 1), each (first, last, count) spaced evenly."""
    return np.linspace(*checked), {
        "flood": (0.2, np.linspace(*flood)),
        "known": (1.0, np.linspace(*known)),
    }


@pytest.mark.parametrize(
    "checked, groups",
    [
        # a flood of more waiting records than one fetch hid an established author's
        flood_case((0.99, 0.6, 80), (0.97, 0.93, 50), (0.92, 0.90, 30)),
        flood_case((0.8, 0.5, 80), (0.95, 0.90, 66), (0.88, 0.85, 20)),
        # the replica exhausted, the pending index not
        flood_case((0.8, 0.5, 30), (0.95, 0.90, 70), (0.88, 0.85, 20)),
        # more than the pending index returns at once (WAITING_READ x fetch = 264)
        flood_case((0.99, 0.6, 80), (0.97, 0.93, 300), (0.92, 0.90, 30)),
        flood_case((0.8, 0.5, 30), (0.95, 0.90, 280), (0.88, 0.85, 20)),
    ],
)
def test_a_weighed_search_finds_the_best_k_whatever_floods_the_pending_index(
    tmp_path, encoder, key, checked, groups
):
    """The hits of a weighed search with records waiting are the best k by cosine x factor,
    where more waiting records than one fetch score above the replica's last (a fresh
    review found 14, 50 and 20 of the best 50 missing in the first three cases), and more
    than the pending index returns at once (the rest unread: the search widens)."""
    kb, q, weigh, scored = weighed_kb(tmp_path, encoder, key, checked, groups)
    found = kb.find(q, k=50, pending=True, weigh=weigh, dedupe=False, max_factor=1.0)
    assert [h.row.id for h in found.hits] == [i for _, i in sorted(scored, reverse=True)[:50]]
    kb.close()


def test_a_flood_of_waiting_records_on_one_topic_costs_a_query_a_bounded_read(
    tmp_path, encoder, key
):
    """3,000 newer authors' waiting records on one topic, above every checked lesson: the
    search reads at most WAITING_READ_CAP of them and accepts the pool there (counted in
    ``pools_capped``), never a scan of the store. Without the cap such floods cost a query
    22,600 rows and up to a scan of every row (0.7-2.8 s; second review)."""
    from zoonode.knowledge import WAITING_READ_CAP

    flood = np.random.default_rng(9).uniform(0.92, 0.97, 3000)
    kb, q, weigh, scored = weighed_kb(
        tmp_path, encoder, key, np.linspace(0.9, 0.5, 100), {"flood": (0.2, flood)}
    )
    rows: list[int] = []
    reads, exact = kb.store.candidate_fields, kb._exact
    kb.store.candidate_fields = lambda seqs: rows.append(len(seqs)) or reads(seqs)
    kb._exact = lambda *a, **kw: pytest.fail("a scan of the store")
    found = kb.find(q, k=50, pending=True, weigh=weigh, dedupe=False, max_factor=1.0)
    kb.store.candidate_fields, kb._exact = reads, exact
    assert kb.pools_capped == 1
    assert sum(rows) <= 66 + 264 + 264 + WAITING_READ_CAP, rows
    # The checked lessons still outrank the whole flood (0.5 > 0.2 x 0.97).
    assert [h.row.id for h in found.hits] == [i for _, i in sorted(scored, reverse=True)[:50]]
    kb.close()


@pytest.mark.parametrize("seed", range(6))
def test_a_weighed_search_with_records_waiting_equals_brute_force(tmp_path, encoder, key, seed):
    """Random cosines and factors: the best k by cosine x factor, as a scan of every
    record would rank them."""
    rng = np.random.default_rng(100 + seed)
    groups = {
        f"author{j}": (
            float(rng.choice([0.2, 0.5, 1.0])),
            rng.uniform(0.3, 0.99, int(rng.integers(5, 90))),
        )
        for j in range(int(rng.integers(1, 4)))
    }
    checked = rng.uniform(0.3, 0.99, int(rng.integers(10, 150)))
    kb, q, weigh, scored = weighed_kb(tmp_path, encoder, key, checked, groups, seed)
    k = int(rng.choice([5, 20, 50]))
    found = kb.find(q, k=k, pending=True, weigh=weigh, dedupe=False, max_factor=1.0)
    assert [h.row.id for h in found.hits] == [i for _, i in sorted(scored, reverse=True)[:k]]
    kb.close()


def test_a_query_encodes_with_every_thread_unless_a_check_at_normal_priority_runs_beside():
    assert query_threads(0, check_niced=False) is None  # nothing waits: the encoder's own
    assert query_threads(0, check_niced=True) is None
    assert query_threads(5, check_niced=True) is None  # the niced check yields the core
    assert query_threads(5, check_niced=False) == CHECK_THREADS == 1


def key_author(key) -> bytes:
    return public_key_bytes(key)


def test_checks_after_the_last_snapshot_are_replayed_after_a_crash(tmp_path, encoder, key):
    kb = KnowledgeBase(
        tmp_path, encoder.space, encoder.space_info.hidden, replica_backend="hnswlib"
    )
    records = create_experiences(encoder, key, [{"text": t, "domain": "a.b"} for t in TEXTS])
    kb.ingest(pending_items(encoder, records))
    kb.replica.save(tmp_path)  # a snapshot holding the code-implied vectors
    rows = {r.id: r for r in kb.pending(10)}
    exact = encoder.encode_compact(TEXTS[:3])
    kb.promote([rows[r.id] for r in records[:3]], exact)
    kb.remove([rows[records[5].id]], Reason.EMBEDDING_MISMATCH)
    kb.store.close()  # a crash: the store committed, the replica was never saved again
    again = KnowledgeBase(
        tmp_path, encoder.space, encoder.space_info.hidden, replica_backend="hnswlib"
    )
    for i in range(3):
        keys, sims = again.replica.search(exact[i], k=1)
        assert keys[0] == rows[records[i].id].seq and sims[0] == pytest.approx(1.0, abs=1e-5)
    gone = rows[records[5].id].seq
    assert gone not in again.replica.search(encoder.encode_compact(TEXTS[5])[0], k=6)[0]
    assert again.backlog.total == 2 and len(again.pending(10)) == 2
    again.close()
    # A clean close snapshots the replica and forgets the journal it includes.
    assert again.store.path.exists()
    final = KnowledgeBase(
        tmp_path, encoder.space, encoder.space_info.hidden, replica_backend="hnswlib"
    )
    assert final.store.journal_since(0)[1] == [] and final.replica.snapshot_journal > 0
    final.close()


def test_eviction_takes_waiting_records_before_checked_ones(tmp_path, encoder, key):
    kb = KnowledgeBase(tmp_path, encoder.space, encoder.space_info.hidden, capacity=4)
    checked = create_experiences(
        encoder, key, [{"text": t, "domain": "a.b", "confidence": 0.1} for t in TEXTS[:3]]
    )
    kb.ingest(
        [Incoming(r, v) for r, v in zip(checked, encoder.encode_compact(TEXTS[:3]), strict=True)]
    )
    other = Ed25519PrivateKey.generate()
    waiting = create_experiences(
        encoder, other, [{"text": t, "domain": "a.b", "confidence": 1.0} for t in TEXTS[3:]]
    )
    kb.ingest(pending_items(encoder, waiting, rank=NEWCOMER_RANK))
    assert kb.store.counts()["total"] == 4
    assert all(kb.get(r.id) is not None for r in checked)  # low confidence, but checked
    assert kb.backlog.total == 1  # the evicted waiting ones left the backlog too
    kb.close()


def test_records_in_the_ingest_queue_count_toward_the_backlog_bounds(tmp_path, encoder):
    """A burst is admitted against the backlog's counts while its records still wait in the
    ingest queue: those must count, or the bounds are overshot by up to the queue (10,000;
    a real node with max_pending 120 and max_pending_per_author 2 held 219, 4 of one author)."""
    import trio

    from zoonode.node import Node

    from netutil import node_config, run_trio, wait_until

    cfg = node_config(tmp_path / "n", ingest={"max_pending": 3, "max_pending_per_author": 2})
    x, y, z = (Ed25519PrivateKey.generate() for _ in range(3))
    texts = [f"Lesson {i}: check the inputs of step {i} before running it" for i in range(3)]
    xs = create_experiences(encoder, x, [{"text": t, "domain": "a"} for t in texts])
    ys = create_experiences(encoder, y, [{"text": t, "domain": "b"} for t in texts[:1]])
    zs = create_experiences(encoder, z, [{"text": t, "domain": "c"} for t in texts[:1]])

    async def main():
        async with trio.open_nursery() as nursery:
            node = Node(cfg, encoder=encoder)
            await nursery.start(node.run)
            async with node.checker._encoder_slot:  # no check: what is stored stays pending
                async with node._kb_lock:  # nothing stored yet: all of it in the queue
                    for r in xs[:2]:
                        await node.ingest.enqueue(r, "a-peer")
                    assert not node.backlog_admits(xs[2])  # per author: 2 queued
                    assert node.backlog_admits(ys[0])
                    await node.ingest.enqueue(ys[0], "a-peer")
                    assert not node.backlog_admits(zs[0])  # in total: 3 queued
                await wait_until(lambda: node.kb.backlog.total == 3)
                assert node.ingest.queued_lessons == 0 and not node.ingest.queued_of
                assert not node.backlog_admits(xs[2]) and not node.backlog_admits(zs[0])
                nursery.cancel_scope.cancel()

    run_trio(main)


def test_a_batch_being_stored_counts_once_toward_its_authors_bound(tmp_path, encoder):
    """While a batch of the ingest queue is being stored, its records are both in the backlog
    and still counted as queued: the per-author count must take them once (it took them
    twice, and refused an author's third record under max_pending_per_author 3)."""
    import trio

    from zoonode.node import Node

    from netutil import node_config, run_trio

    cfg = node_config(tmp_path / "n", ingest={"max_pending": 10, "max_pending_per_author": 3})
    x = Ed25519PrivateKey.generate()
    texts = [f"Lesson {i}: pin the version of tool {i} in the lock file" for i in range(3)]
    xs = create_experiences(encoder, x, [{"text": t, "domain": "a"} for t in texts])

    async def main():
        async with trio.open_nursery() as nursery:
            node = Node(cfg, encoder=encoder)
            await nursery.start(node.run)
            async with node.checker._encoder_slot:  # no check: what is stored stays pending
                async with node._kb_lock:
                    for r in xs[:2]:
                        await node.ingest.enqueue(r, "a-peer")
                    # The knowledge-base side of a store, caught before the queue side
                    # uncounts the batch (we hold the lock: no other store runs).
                    node.ingest._store_queued([(r, "a-peer") for r in xs[:2]])
                    author = xs[0].experience.author
                    assert node.kb.backlog.of(author) == 2 and node.ingest.queued_of[author] == 2
                    assert node.backlog_admits(xs[2])
                    assert node.ingest.waiting_of(author) == 2 and node.ingest.waiting() == 2
                    # Sync's admission (no ``ahead``) counts gossip's lessons accepted and
                    # not handed over yet too.
                    in_flight = node.gossip.channels[node.gossip.topic].inflight_of
                    in_flight[author] += 1
                    try:
                        assert not node.backlog_admits(xs[2])
                    finally:
                        del in_flight[author]
                nursery.cancel_scope.cancel()

    run_trio(main)


def test_sync_has_room_when_max_pending_is_under_one_get(tmp_path, encoder):
    """max_pending under one sync ``get`` (128): sync said "backlog full" with nothing waiting
    and never fetched (a real node with max_pending 120 stayed at 534 of 900 records)."""
    import trio

    from zoonode.node import Node

    from netutil import node_config, run_trio

    cfg = node_config(tmp_path / "n", ingest={"max_pending": 100})

    async def main():
        async with trio.open_nursery() as nursery:
            node = Node(cfg, encoder=encoder)
            await nursery.start(node.run)
            assert node.kb.backlog.total == 0 and node.antientropy._room()
            nursery.cancel_scope.cancel()

    run_trio(main)


def _scanned_counts(store) -> dict[tuple[int, int, int], int]:
    """What ``Store.counts`` kept by its triggers must equal: a scan of the table."""
    return {
        (op, status, pending): n
        for op, status, pending, n in store.db.execute(
            "SELECT op, status, pending IS NOT NULL, count(*) FROM records "
            "GROUP BY op, status, pending IS NOT NULL"
        )
    }


def test_record_counts_kept_by_triggers_match_a_scan_through_every_write(tmp_path, encoder, key):
    """Insert (checked, pending), modify, revoke, a revoke before its parent and a forged one
    (invalid), promote, remove, evict and a failed write: the O(1) counts equal the scan after
    each step, and after reopening."""
    kb = KnowledgeBase(tmp_path, encoder.space, encoder.space_info.hidden, capacity=7)
    store = kb.store

    def agree() -> None:
        assert store._state_counts() == _scanned_counts(store)

    checked = create_experiences(encoder, key, [{"text": t, "domain": "a.b"} for t in TEXTS[:3]])
    kb.ingest(
        [Incoming(r, v) for r, v in zip(checked, encoder.encode_compact(TEXTS[:3]), strict=True)]
    )
    other = Ed25519PrivateKey.generate()
    waiting = create_experiences(encoder, other, [{"text": t, "domain": "a.b"} for t in TEXTS[3:]])
    kb.ingest(pending_items(encoder, waiting, rank=NEWCOMER_RANK))
    agree()
    assert store.counts()["active"] == 3 and store.counts()["pending"] == 3
    [modified] = create_experiences(
        encoder, key, [{"text": TEXTS[0] + " first", "domain": "a.b", "parent": checked[0].id}]
    )
    kb.ingest([Incoming(modified, encoder.encode_compact(modified.experience.text)[0])])
    kb.ingest([Incoming(create_revocation(key, encoder.space, checked[1].id), None)])
    [late] = create_experiences(encoder, key, [{"text": "Revoked early", "domain": "a.b"}])
    early = create_revocation(key, encoder.space, late.id)
    forged = create_revocation(other, encoder.space, late.id)
    kb.ingest([Incoming(early, None), Incoming(forged, None)])
    agree()
    kb.ingest([Incoming(late, encoder.encode_compact(late.experience.text)[0])])  # evicts one
    agree()
    rows = {r.id: r for r in kb.pending(10)}
    kb.promote([rows[waiting[0].id]], encoder.encode_compact(TEXTS[3:4]))
    kb.remove([rows[waiting[1].id]], Reason.EMBEDDING_MISMATCH)
    agree()
    with pytest.raises(sqlite3.IntegrityError), store._write():  # rolled back: counts too
        store.db.execute("DELETE FROM records")
        store.db.execute("INSERT INTO records (id) VALUES (NULL)")
    agree()
    counts = store.counts()
    assert counts | {"total": 0} == {  # the superseded parent was evicted first
        "total": 0,
        "active": 3,
        "pending": 1,
        "revoked": 2,
        "superseded": 0,
        "invalid": 0,
        "revocations": 3,  # the forged one among them (invalid, counted as a revocation)
    }
    assert kb.get(forged.id).status is Status.INVALID
    kb.close()
    again = KnowledgeBase(tmp_path, encoder.space, encoder.space_info.hidden, capacity=7)
    assert again.store.counts() == counts and again.store._state_counts() == _scanned_counts(
        again.store
    )
    again.close()


def test_the_background_check_yields_to_queries_and_more_to_a_burst():
    """A quiet moment starts a batch at once, except during a burst of stage 1; otherwise the
    check waits 3x its last batch under queries (a quarter of the time), 19x in a burst."""
    assert may_start(0.0, 1.0, burst=False, busy=False)
    assert not may_start(0.0, 1.0, burst=True, busy=False)  # gaps in a burst are not quiet
    assert not may_start(2.9, 1.0, burst=False, busy=True)
    assert may_start(3.0, 1.0, burst=False, busy=True)
    assert not may_start(18.9, 1.0, burst=True, busy=True)
    assert may_start(19.0, 1.0, burst=True, busy=False)


def test_a_waiting_copy_of_a_checked_lesson_never_answers_for_it_and_joins_it_once_checked(
    tmp_path, encoder, key
):
    """A waiting record is linked to no cluster when stored (no graph search in stage 1); a
    query drops it where a checked candidate within the near-duplicate cosine answers, and
    once promoted it joins that candidate's cluster by its exact vector."""
    kb = KnowledgeBase(tmp_path, encoder.space, encoder.space_info.hidden)
    [original] = create_experiences(encoder, key, [{"text": TEXTS[1], "domain": "a.b"}])
    kb.ingest([Incoming(original, encoder.encode_compact(TEXTS[1])[0])])
    other = Ed25519PrivateKey.generate()
    copy_text = TEXTS[1] + "."
    [copy] = create_experiences(encoder, other, [{"text": copy_text, "domain": "a.b"}])
    kb.ingest(pending_items(encoder, [copy]))
    stored = kb.get(copy.id)
    assert stored.pending and stored.cluster == stored.seq  # not linked while it waits
    q = encoder.encode_compact("how do I avoid SQL injection")[0]
    hits = kb.search(q, k=5, pending=True)
    assert [h.row.id for h in hits] == [original.id]  # the checked one answers
    assert {h.row.id for h in kb.search(q, k=5, pending=True, dedupe=False)} == {
        original.id,
        copy.id,
    }
    kb.promote([stored], encoder.encode_compact(copy_text))
    assert kb.get(copy.id).cluster == kb.get(original.id).cluster
    assert [h.cluster_size for h in kb.search(q, k=5)] == [2]
    kb.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_the_check_thread_runs_niced_and_leaves_every_other_thread_alone():
    """The background check's encodes run in one thread of its own at a lower priority; the
    trio thread and trio's worker threads (queries, the knowledge base) keep the process's."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    niced, plain = CheckThread(19), CheckThread(0)

    def where() -> tuple[int, int]:
        tid = threading.get_native_id()
        return tid, os.getpriority(os.PRIO_PROCESS, tid)

    def fail() -> None:
        raise ValueError("boom")

    async def main():
        tid, nice = await niced.run(where)
        assert (tid, nice) == (niced.tid, min(base + 19, 19))
        assert niced.niced == (base < 19)  # read back: a process at 19 already gains nothing
        assert tid != threading.get_native_id()
        assert (await niced.run(where))[0] == tid  # always the same thread
        assert (await plain.run(where))[1] == base and not plain.niced
        with pytest.raises(ValueError, match="boom"):  # an encoder error reaches the checker
            await niced.run(fail)
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base
        worker_tids = set()
        for _ in range(4):
            worker, worker_nice = await trio.to_thread.run_sync(where)
            worker_tids.add(worker)
            assert worker_nice == base
        assert tid not in worker_tids
        # Cancelled, the caller returns at once; the thread finishes the call.
        gate = threading.Event()
        with trio.move_on_after(0.2):
            await niced.run(gate.wait, 5)
        gate.set()
        assert (await niced.run(where))[0] == tid
        await niced.aclose()
        await plain.aclose()
        # Started from a thread already at nice 19 (a node run under `nice -n 19`), the check
        # thread is not lower than the node's: not "niced" (queries then leave it a core).
        at_19 = {}

        def from_a_niced_thread() -> None:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            late = CheckThread(19)
            late._thread = threading.Thread(target=late._loop, daemon=True)
            late._thread.start()
            late._jobs.put(None)
            late._thread.join(5)
            at_19["niced"] = late.niced

        helper = threading.Thread(target=from_a_niced_thread)
        helper.start()
        helper.join(10)
        assert at_19 == {"niced": False}

    trio.run(main)
