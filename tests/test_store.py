"""The store and replica with real database and index files, and real encoder vectors."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zoonode.experiences import create_experiences, create_revocation
from zoonode.knowledge import DB_FILE, Filters, KnowledgeBase, snapshot_due
from zoonode.native.space import data_dir
from zoonode.protocol import public_key_bytes
from zoonode.replica import BACKENDS, INDEX_FILES, META_FILE, Replica
from zoonode.store import SCHEMA_VERSION, Incoming, Outcome, Status, StoreError

from helpers import lessons

TEXTS = [
    "When solving geometry problems with intersections, validate solutions lie within "
    "bounded regions",
    "Before dividing both sides of an inequality, check the sign of the divisor",
    "Prefer parameterised SQL queries over string formatting to avoid injection attacks",
    "When a unit test is flaky, look for shared state between tests before adding retries",
    "Read the whole error message and the first traceback frame before editing code",
    "Check the units of every quantity before adding measured values together",
]
PARAPHRASE = (
    "When solving geometry problems involving intersections, validate that solutions "
    "lie within the bounded regions"
)


@pytest.fixture()
def kb(tmp_path, encoder):
    base = KnowledgeBase(tmp_path / "node", encoder.space, encoder.space_info.hidden)
    yield base
    base.close()


def test_insert_is_idempotent_and_durable(tmp_path, encoder, key):
    items = lessons(encoder, key, TEXTS)
    kb = KnowledgeBase(tmp_path, encoder.space, encoder.space_info.hidden)
    first = kb.ingest(items)
    assert [r.outcome for r in first] == [Outcome.ACCEPTED] * len(TEXTS)
    again = kb.ingest(items + items[:1])
    assert [r.outcome for r in again] == [Outcome.DUPLICATE] * (len(TEXTS) + 1)
    assert [r.seq for r in again[: len(TEXTS)]] == [r.seq for r in first]
    assert kb.store.counts()["active"] == len(TEXTS)
    kb.close()
    reopened = KnowledgeBase(tmp_path, encoder.space, encoder.space_info.hidden)
    for item in items:
        row = reopened.get(item.record.id)
        assert row is not None and row.wire == item.record.wire
    reopened.close()


def test_known_many_is_known_for_each_id(kb, encoder, key):
    items = lessons(encoder, key, TEXTS[:3])
    records = [it.record for it in items]
    kb.ingest(items[:1])
    kb.store.add_tombstone(records[1].id, records[1].experience.created_at, "test")
    ids = [r.id for r in records] + [bytes([i % 256, i // 256]) * 16 for i in range(900)]
    assert kb.store.known_many(ids) == {i for i in ids if kb.store.known(i)}
    assert kb.store.known_many(ids) == {records[0].id, records[1].id}
    assert kb.store.known_many([]) == set()


def test_one_id_twice_in_a_batch_is_stored_and_indexed_once(kb, encoder, key):
    items = lessons(encoder, key, TEXTS[:2])
    results = kb.ingest([items[0], items[1], items[0]])
    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.ACCEPTED, Outcome.DUPLICATE]
    assert results[2].seq == results[0].seq
    assert len(kb.replica) == 2  # the first copy was indexed, not dropped for the repeat
    hits = kb.search(items[0].vector, k=1)
    assert hits and hits[0].row.id == items[0].record.id


def test_search_finds_the_matching_lesson(kb, encoder, key):
    kb.ingest(lessons(encoder, key, TEXTS))
    query = encoder.encode_compact("how do I avoid SQL injection")[0]
    hits = kb.search(query, k=3)
    assert "SQL" in decode_text(hits[0])
    assert hits[0].score == pytest.approx(float(hits[0].vector @ query), abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def decode_text(hit):
    from zoonode.protocol import decode

    return decode(hit.row.wire).experience.text


def test_revoke_hides_and_only_the_author_may(kb, encoder, key):
    items = lessons(encoder, key, TEXTS)
    kb.ingest(items)
    target = items[2].record
    query = items[2].vector
    stranger = Ed25519PrivateKey.generate()
    forged = create_revocation(stranger, encoder.space, target.id)
    [res] = kb.ingest([Incoming(forged, None)])
    assert res.outcome is Outcome.REJECTED and res.reason == "not_author"
    assert kb.search(query, k=1)[0].row.id == target.id

    [res] = kb.ingest([Incoming(create_revocation(key, encoder.space, target.id), None)])
    assert res.outcome is Outcome.ACCEPTED
    assert kb.get(target.id).status is Status.REVOKED
    assert all(h.row.id != target.id for h in kb.search(query, k=6))


def test_modify_supersedes_its_parent(kb, encoder, key):
    [old] = lessons(encoder, key, TEXTS[:1])
    kb.ingest([old])
    [new_record] = create_experiences(
        encoder, key, [{"text": PARAPHRASE, "domain": "math.geometry", "parent": old.record.id}]
    )
    new = Incoming(new_record, encoder.encode_compact(PARAPHRASE)[0])
    assert kb.ingest([new])[0].outcome is Outcome.ACCEPTED
    assert kb.get(old.record.id).status is Status.SUPERSEDED
    hits = kb.search(new.vector, k=5)
    assert [h.row.id for h in hits] == [new_record.id]


def test_revoke_arriving_before_its_parent_applies_on_arrival(kb, encoder, key):
    [item] = lessons(encoder, key, TEXTS[:1])
    revoke = create_revocation(key, encoder.space, item.record.id)
    forged = create_revocation(Ed25519PrivateKey.generate(), encoder.space, item.record.id)
    kb.ingest([Incoming(forged, None), Incoming(revoke, None)])
    kb.ingest([item])
    assert kb.get(item.record.id).status is Status.REVOKED
    assert kb.get(forged.id).status is Status.INVALID
    assert kb.search(item.vector, k=5) == []


def test_near_duplicates_form_one_cluster(kb, encoder, key):
    other = Ed25519PrivateKey.generate()
    items = lessons(encoder, key, TEXTS)
    kb.ingest(items)
    [dup] = lessons(encoder, other, [PARAPHRASE])
    cos = float(dup.vector @ encoder.encode_compact(TEXTS[0])[0])
    assert cos >= 0.9, cos
    kb.ingest([dup])
    first = kb.get(items[0].record.id)
    assert kb.get(dup.record.id).cluster == first.cluster
    hits = kb.search(dup.vector, k=10)
    assert len(hits) == len(TEXTS)
    assert len({h.row.cluster for h in hits}) == len(hits)
    assert hits[0].cluster_size == 2
    assert len(kb.search(dup.vector, k=10, dedupe=False)) == len(hits) + 1


def test_weighed_search_lets_the_weightier_member_speak_for_a_cluster(kb, encoder, key):
    """The node weighs rows by their author's standing: a fresh author's paraphrase matches the
    query best but does not represent the established lesson's cluster; scores stay exact."""
    other = Ed25519PrivateKey.generate()
    items = lessons(encoder, key, TEXTS)
    kb.ingest(items)
    [dup] = lessons(encoder, other, [PARAPHRASE])
    kb.ingest([dup])
    fresh = other.public_key().public_bytes_raw()
    assert kb.search(dup.vector, k=1)[0].row.id == dup.record.id

    def weigh(authors):
        return np.array([0.2 if author == fresh else 1.0 for author in authors])

    hits = kb.search(dup.vector, k=len(TEXTS), weigh=weigh)
    assert hits[0].row.id == items[0].record.id
    assert hits[0].score == pytest.approx(float(items[0].vector @ dup.vector), abs=1e-5)
    assert hits[0].cluster_size == 2
    assert dup.record.id not in {h.row.id for h in hits}


def test_duplicates_within_one_batch_are_linked(kb, encoder, key):
    items = lessons(encoder, key, [TEXTS[0], PARAPHRASE])
    kb.ingest(items)
    a, b = (kb.get(i.record.id) for i in items)
    assert a.cluster == b.cluster == a.seq


def test_filters(kb, encoder, key):
    other = Ed25519PrivateKey.generate()
    kb.ingest(
        lessons(encoder, key, TEXTS[:3], domain="math.algebra", confidence=0.9, created_at=1000)
    )
    kb.ingest(
        lessons(
            encoder, other, TEXTS[3:], domain="software.testing", confidence=0.3, created_at=2000
        )
    )
    q = encoder.encode_compact("check your work")[0]
    assert {h.row.domain for h in kb.search(q, 10, Filters(domain="math"))} == {"math.algebra"}
    assert kb.search(q, 10, Filters(domain="mat")) == []
    assert {
        h.row.author
        for h in kb.search(q, 10, Filters(author=other.public_key().public_bytes_raw()))
    } == {other.public_key().public_bytes_raw()}
    assert all(h.row.confidence >= 0.5 for h in kb.search(q, 10, Filters(min_confidence=0.5)))
    assert len(kb.search(q, 10, Filters(created_after=1500))) == 3
    assert len(kb.search(q, 10, Filters(created_before=1500))) == 3


def test_eviction_removes_lowest_value_first_and_reports_it(tmp_path, encoder, key):
    evicted = []
    kb = KnowledgeBase(
        tmp_path, encoder.space, encoder.space_info.hidden, capacity=4, on_evict=evicted.extend
    )
    low = lessons(encoder, key, TEXTS[:2], confidence=0.1)
    high = lessons(encoder, key, TEXTS[2:5], confidence=0.9)
    kb.ingest(low + high)
    assert kb.store.counts()["active"] == 4
    assert [v.id for v in evicted] == [low[0].record.id]
    kb.ingest([Incoming(create_revocation(key, encoder.space, high[0].record.id), None)])
    kb.ingest(lessons(encoder, key, TEXTS[5:], confidence=0.5))
    assert evicted[-1].id == high[0].record.id  # revoked goes before any active lesson
    kb.close()
    # The lesson count behind capacity is read back on open: a smaller capacity evicts the
    # excess at the next batch, and nothing while the store is within it.
    smaller = KnowledgeBase(
        tmp_path, encoder.space, encoder.space_info.hidden, capacity=3, on_evict=evicted.extend
    )
    before = len(evicted)
    smaller.ingest([])  # four lessons stored, capacity three
    assert len(evicted) == before + 1
    assert len(smaller.store.active_page(0, 100)) == 3
    smaller.ingest([])
    assert len(evicted) == before + 1
    smaller.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_snapshot_then_replay(tmp_path, encoder, key, backend):
    items = lessons(encoder, key, TEXTS)
    space, hidden = encoder.space, encoder.space_info.hidden
    kb = KnowledgeBase(tmp_path, space, hidden, snapshot_every=3, replica_backend=backend)
    kb.ingest(items[:4])  # crosses snapshot_every: snapshot at seq 4
    kb.ingest(items[4:])  # not yet snapshotted
    assert (tmp_path / INDEX_FILES[backend]).exists() and kb.replica.snapshot_seq == 4
    kb.store.close()  # simulate a crash: no final snapshot
    reopened = KnowledgeBase(tmp_path, space, hidden, replica_backend=backend)
    assert reopened.replica.snapshot_seq == 4 and len(reopened.replica) == len(TEXTS)
    for item in items:
        assert reopened.search(item.vector, k=1)[0].row.id == item.record.id
    assert reopened.rebuild() == len(TEXTS)
    reopened.close()


def test_ivf_replica_trains_when_its_lists_can_be_filled_and_survives_snapshots(tmp_path, encoder):
    texts = (data_dir() / "reference_corpus.txt").read_text().splitlines()[:400]
    vectors = encoder.encode_compact(texts)
    dim, seqs = vectors.shape[1], np.arange(1, len(texts) + 1)
    replica = Replica(dim, backend="faiss-ivf", lists=4)  # trains at 4 x 64 = 256 records
    replica.add(seqs[:200], vectors[:200])
    assert not replica.index.trained
    replica.save(tmp_path)
    loaded = Replica.load(tmp_path, dim, backend="faiss-ivf", lists=4)
    assert len(loaded) == 200 and loaded.contains(200) and not loaded.contains(201)
    loaded.add(seqs[150:], vectors[150:])  # a replay repeats 50 records: indexed once
    assert len(loaded) == len(texts) and loaded.index.trained
    keys, sims = loaded.search_many(vectors, k=1, ef=16)  # probes all 4 lists
    exact = np.einsum("ij,ij->i", vectors, vectors)
    found_self = keys[:, 0] == seqs
    assert found_self.mean() >= 0.95  # the rest: identical texts in the corpus
    assert np.abs(sims[found_self, 0] - exact[found_self]).max() < 0.05  # 8-bit scores
    loaded.save(tmp_path)
    again = Replica.load(tmp_path, dim, backend="faiss-ivf", lists=4)
    assert again.index.trained and len(again) == len(texts) and again.contains(400)
    assert again.search(vectors[7], k=1)[0][0] == keys[7, 0]
    # Another list count cannot use these lists: the caller rebuilds from the store.
    assert len(Replica.load(tmp_path, dim, backend="faiss-ivf", lists=8)) == 0


def test_snapshot_replayed_twice_is_indexed_once(tmp_path, encoder, key):
    """A crash between the index file's rename and the meta file's: the snapshot already
    holds records the meta says to replay."""
    items = lessons(encoder, key, TEXTS)
    kb = KnowledgeBase(tmp_path, encoder.space, encoder.space_info.hidden)
    kb.ingest(items)
    kb.close()
    meta = json.loads((tmp_path / META_FILE).read_text())
    (tmp_path / META_FILE).write_text(json.dumps(meta | {"seq": 2}))
    reopened = KnowledgeBase(tmp_path, encoder.space, encoder.space_info.hidden)
    assert len(reopened.replica) == len(TEXTS)
    assert reopened.search(items[3].vector, k=1)[0].row.id == items[3].record.id
    reopened.close()


@pytest.mark.parametrize(
    ("before", "after"), [("hnswlib", "usearch-i8"), ("usearch-i8", "faiss-ivf")]
)
def test_switching_backend_rebuilds_the_replica_from_the_store(
    tmp_path, encoder, key, before, after
):
    items = lessons(encoder, key, TEXTS)
    space, hidden = encoder.space, encoder.space_info.hidden
    old = KnowledgeBase(tmp_path, space, hidden, replica_backend=before)
    old.ingest(items)
    old.close()
    assert (tmp_path / INDEX_FILES[before]).exists()
    kb = KnowledgeBase(tmp_path, space, hidden, replica_backend=after)
    assert kb.replica.backend == after and len(kb.replica) == len(TEXTS)
    for item in items:
        assert kb.search(item.vector, k=1)[0].row.id == item.record.id
    kb.close()
    assert (tmp_path / INDEX_FILES[after]).exists()
    assert not (tmp_path / INDEX_FILES[before]).exists()  # the dead snapshot is removed
    assert json.loads((tmp_path / META_FILE).read_text())["backend"] == after


def test_unreadable_snapshot_is_rebuilt_from_the_store(tmp_path, encoder, key):
    items = lessons(encoder, key, TEXTS)
    kb = KnowledgeBase(tmp_path, encoder.space, encoder.space_info.hidden)
    kb.ingest(items)
    kb.close()
    (tmp_path / INDEX_FILES["usearch-i8"]).write_bytes(b"not an index")
    reopened = KnowledgeBase(tmp_path, encoder.space, encoder.space_info.hidden)
    assert len(reopened.replica) == len(TEXTS)
    assert reopened.search(items[0].vector, k=1)[0].row.id == items[0].record.id
    reopened.close()


def test_search_scores_are_exact_after_the_int8_index(kb, encoder, key):
    """The default index stores 1-byte coordinates; what the caller sees is the exact
    inner product of the stored float vectors, best first."""
    kb.ingest(lessons(encoder, key, TEXTS))
    assert not kb.replica.exact_scores
    query = encoder.encode_compact("geometry intersections inside bounded regions")[0]
    hits = kb.search(query, k=len(TEXTS), dedupe=False)
    assert len(hits) == len(TEXTS)
    exact = [float(h.vector @ query) for h in hits]
    assert [h.score for h in hits] == pytest.approx(exact, abs=1e-6)
    assert exact == sorted(exact, reverse=True)


def test_snapshot_interval_grows_with_the_index():
    assert snapshot_due(10_000, 50_000, 10_000)  # small index: the configured interval
    assert not snapshot_due(9_999, 50_000, 10_000)
    assert not snapshot_due(10_000, 1_000_000, 10_000)  # 1M: every 50k (5 %), not 10k
    assert snapshot_due(50_000, 1_000_000, 10_000)
    assert snapshot_due(3, 0, 3)


def test_store_of_another_space_is_refused(tmp_path, encoder):
    KnowledgeBase(tmp_path, encoder.space, encoder.space_info.hidden).close()
    with pytest.raises(StoreError, match="space"):
        KnowledgeBase(tmp_path, b"\x01" * 16, encoder.space_info.hidden)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_9_mid_ingest_loses_no_acknowledged_record(tmp_path, encoder, backend):
    texts = (data_dir() / "reference_corpus.txt").read_text().splitlines()[:400]
    (tmp_path / "texts.txt").write_text("\n".join(texts))
    np.save(tmp_path / "vectors.npy", encoder.encode_compact(texts))
    writer = Path(__file__).with_name("crash_writer.py")
    node_dir = tmp_path / "node"
    acked: list[str] = []
    rng = random.Random(1)
    kills = 0
    while True:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(writer),
                str(node_dir),
                str(tmp_path / "vectors.npy"),
                str(tmp_path / "texts.txt"),
                str(len(acked)),
                backend,
                "2",  # faiss-ivf trains at 128 records: kills land before, during and after
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ | {"PYTHONUNBUFFERED": "1"},
        )
        target = len(acked) + rng.randint(5, 60)
        done = False
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.strip()
            if line == "done":
                done = True
                break
            acked.append(line)
            if len(acked) >= target and kills < 8:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
        proc.wait(timeout=60)
        if done:
            break
    assert kills == 8
    assert len(acked) == len(texts)
    kb = KnowledgeBase(node_dir, encoder.space, encoder.space_info.hidden, replica_backend=backend)
    vectors = np.load(tmp_path / "vectors.npy")
    ids = [bytes.fromhex(a) for a in acked]
    for i, record_id in enumerate(ids):
        row = kb.get(record_id)
        assert row is not None, f"acknowledged record {i} lost"
        assert kb.replica.contains(row.seq), f"record {i} missing from the replica"
        hits = kb.search(vectors[i], k=3)
        assert row.cluster in {h.row.cluster for h in hits}, f"record {i} not searchable"
    assert kb.store.counts()["total"] == len(texts)
    kb.close()


def test_authors_first_seen_is_the_first_acceptance_on_our_clock(kb, encoder, key):
    """Standing's basis: when *this node* accepted an author's first lesson, whatever
    created_at the author claims (a backdated record gains nothing)."""
    other = Ed25519PrivateKey.generate()
    before = int(time.time() * 1000)
    kb.ingest(lessons(encoder, key, TEXTS[:2]))
    assert kb.first_peer_acceptance(public_key_bytes(key)) is None  # only our own lessons
    kb.ingest(lessons(encoder, other, TEXTS[2:3], created_at=1_000))  # claims 1970
    after = int(time.time() * 1000)
    ours = public_key_bytes(key)
    theirs = public_key_bytes(other)
    seen = kb.authors_first_seen([ours, theirs, b"\x00" * 32, ours])
    assert set(seen) == {ours, theirs}  # an author we hold nothing from is absent
    assert before <= seen[ours] <= seen[theirs] <= after
    # How long the node has known any peer: our own lessons do not count.
    assert kb.first_peer_acceptance(theirs) == seen[ours]
    assert kb.first_peer_acceptance(ours) == seen[theirs]


def _plans(store, sql, params) -> str:
    return " | ".join(r[-1] for r in store.db.execute(f"EXPLAIN QUERY PLAN {sql}", params))


def test_a_store_written_before_schema_versions_is_migrated_on_open(tmp_path, encoder, key):
    """Schema 0 (no authors table, no content key) upgrades in place on open: standing keeps
    each author's first acceptance, re-sharing a lesson finds it by index, and the query
    path's store reads use indexes, not table scans."""
    path = tmp_path / "node"
    other = Ed25519PrivateKey.generate()
    kb = KnowledgeBase(path, encoder.space, encoder.space_info.hidden)
    kb.ingest(lessons(encoder, key, TEXTS[:3]))
    kb.ingest(lessons(encoder, other, TEXTS[3:5]))
    before = {
        a: t
        for a, t in kb.store.db.execute(
            "SELECT author, min(accepted_at) FROM records GROUP BY author"
        )
    }
    kb.close()
    db = sqlite3.connect(path / DB_FILE)
    db.executescript(  # what zoonode wrote before this change
        "DROP TABLE authors; DROP INDEX records_content; DROP INDEX records_cluster_status;"
        "ALTER TABLE records DROP COLUMN content_key;"
        "CREATE INDEX records_cluster ON records(cluster) WHERE cluster IS NOT NULL;"
        "DROP INDEX records_pending; ALTER TABLE records DROP COLUMN pending;"
        "DROP TABLE replica_journal;"
        "PRAGMA user_version = 0;"
    )
    db.close()

    kb = KnowledgeBase(path, encoder.space, encoder.space_info.hidden)
    store = kb.store
    assert store.schema_version == SCHEMA_VERSION
    ours, theirs = public_key_bytes(key), public_key_bytes(other)
    assert kb.authors_first_seen([ours, theirs]) == before
    assert kb.first_peer_acceptance(ours) == before[theirs]
    [row] = store.own_active(ours, "test.lessons", TEXTS[1])
    assert row.seq == 2
    assert store.own_active(theirs, "test.lessons", TEXTS[1]) == []
    assert store.own_active(ours, "other.domain", TEXTS[1]) == []
    indexes = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "records_cluster" not in indexes and "records_cluster_status" in indexes
    # New records keep both up to date.
    third = Ed25519PrivateKey.generate()
    kb.ingest(lessons(encoder, third, TEXTS[5:6]))
    assert set(kb.authors_first_seen([public_key_bytes(third)])) == {public_key_bytes(third)}
    assert len(store.own_active(public_key_bytes(third), "test.lessons", TEXTS[5])) == 1
    # No table scan on the paths a query or a share takes.
    for sql, params in [
        ("SELECT first_seen FROM authors WHERE author IN (?, ?)", [ours, theirs]),
        ("SELECT first_seen FROM authors WHERE author != ? ORDER BY first_seen LIMIT 1", [ours]),
        (
            "SELECT cluster, count(*) FROM records WHERE status = 0 AND cluster IN (?, ?) "
            "GROUP BY cluster",
            [1, 2],
        ),
        (
            "SELECT seq FROM records WHERE content_key = ? AND author = ? AND domain = ? "
            "AND op != 2 AND status = 0",
            [b"k" * 16, ours, "d"],
        ),
    ]:
        plan = _plans(store, sql, params)
        assert "USING" in plan and "SCAN records" not in plan, (sql, plan)
        assert not re.search(r"SCAN authors(?! USING)", plan), (sql, plan)
    kb.close()


def test_a_store_from_a_newer_zoonode_is_refused(tmp_path, encoder):
    path = tmp_path / "node"
    KnowledgeBase(path, encoder.space, encoder.space_info.hidden).close()
    db = sqlite3.connect(path / DB_FILE)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="schema version"):
        KnowledgeBase(path, encoder.space, encoder.space_info.hidden)


def test_find_leaves_unread_only_candidates_the_floor_drops(tmp_path, encoder, key):
    """``KnowledgeBase.find`` with a floor does not read the rows of replica candidates
    surely under it, and returns exactly the hits a full search keeps above that floor. The
    floor comes from the best *active* lesson: a revoked lesson the replica still holds, far
    above every other, must not raise it (it would cut candidates the query answers with)."""
    from zoonode.experiences import sign_lessons
    from zoonode.selection import similarity_floor

    rng = np.random.default_rng(5)
    dim = encoder.space_info.hidden
    q = rng.normal(size=dim).astype(np.float32)
    q /= np.linalg.norm(q)

    def at(cosines: np.ndarray) -> np.ndarray:
        noise = rng.normal(size=(len(cosines), dim)).astype(np.float32)
        noise -= np.outer(noise @ q, q)  # orthogonal to the query
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        return (cosines[:, None] * q + np.sqrt(1 - cosines[:, None] ** 2) * noise).astype(
            np.float32
        )

    def floor_of(entries, complete):  # one author, established: the best checked one's
        return similarity_floor(max(s for s, _, waiting in entries if not waiting), 0.4, 0.3, 0.1)

    def floor_at(best: float) -> float:
        return similarity_floor(best, 0.4, 0.3, 0.1)

    read: list[int] = []
    for case, top in (("weak best, a revoked lesson above it", 0.38), ("strong best", 0.6)):
        kb = KnowledgeBase(tmp_path / case, encoder.space, dim)
        cosines = np.concatenate([[0.95, top], np.linspace(0.02, top - 0.01, 298)])
        items = [{"text": f"lesson {i}", "domain": "test.floor"} for i in range(len(cosines))]
        records = sign_lessons(encoder, key, items, at(cosines))
        kb.ingest([Incoming(r, v) for r, v in zip(records, at(cosines), strict=True)])
        revoked = records[0].id
        kb.ingest([Incoming(create_revocation(key, encoder.space, revoked), None)])

        full = kb.search(q, k=150, per_cluster=3)
        assert revoked not in {h.row.id for h in full}
        cut = floor_at(max(h.score for h in full))
        expected = [h.row.id for h in full if h.score >= cut]
        assert len(expected) < len(full)  # the floor drops some of the full search's hits

        reads = kb.store.candidate_fields
        read.clear()
        kb.store.candidate_fields = lambda seqs, reads=reads: read.append(len(seqs)) or reads(seqs)
        found = kb.find(q, k=150, per_cluster=3, floor=floor_of)
        kb.store.candidate_fields = reads
        assert [h.row.id for h in found.hits] == expected, case
        assert found.below_floor >= len(full) - len(expected)
        assert sum(read) < 150 + 8, (case, read)  # the cut candidates' rows were not read

        # Filtered: the same hits as the filtered exhaustive search above the floor, and a
        # broad filter costs no wider search (it used to widen to 12k rows, then brute force).
        for flt in (Filters(min_confidence=0.0), Filters(domain="test"), Filters(domain="x")):
            full = kb.search(q, k=150, per_cluster=3, filters=flt)
            expected = []
            if full:
                cut = floor_at(max(h.score for h in full))
                expected = [h.row.id for h in full if h.score >= cut]
            read.clear()
            kb.store.candidate_fields = lambda seqs, reads=reads: (
                read.append(len(seqs)) or reads(seqs)
            )
            found = kb.find(q, k=150, per_cluster=3, filters=flt, floor=floor_of)
            kb.store.candidate_fields = reads
            assert [h.row.id for h in found.hits] == expected, (case, flt)
            if flt.domain != "x":
                assert sum(read) < 150 + 8, (case, flt, read)
        kb.close()


def test_settled_names_what_this_node_has_its_own_word_on(kb, encoder, key):
    """Store.settled: held ids whatever their status, tombstoned ids, and ids a held
    revocation names even before its target arrived; not an id nobody here knows. Federated
    answers drop these (a peer's copy of a lesson revoked here must not come back)."""
    items = lessons(encoder, key, TEXTS[:3])
    kb.ingest(items)
    revoked = items[0].record.id
    kb.ingest([Incoming(create_revocation(key, encoder.space, revoked), None)])
    [unheard] = lessons(encoder, key, TEXTS[3:4])  # its revocation arrives first
    kb.ingest([Incoming(create_revocation(key, encoder.space, unheard.record.id), None)])
    kb.store.add_tombstone(b"t" * 32, 0, "evicted")
    [stranger] = lessons(encoder, key, TEXTS[4:5])
    asked = [revoked, items[1].record.id, unheard.record.id, b"t" * 32, stranger.record.id]
    assert kb.store.settled(asked) == set(asked[:4])
