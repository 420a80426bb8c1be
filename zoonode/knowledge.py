"""What a node knows: the durable store plus its HNSW replica, kept consistent.

Write path: verified records with their compact vectors -> near-duplicate cluster lookup -> one
store transaction (durable: the acknowledgement) -> replica -> eviction. A peer's record comes
*pending*, with the vector its code implies, and waits in the backlog for the embedding check;
:meth:`KnowledgeBase.promote` then gives it its text's exact vector (store and replica) and
:meth:`KnowledgeBase.remove` drops one that failed.
Read path: replica candidates -> their stored values with their exact vectors (one read) ->
rerank by exact inner product (the default replica's int8 scores are approximate) -> status
and filters -> at most ``per_cluster`` hits per near-duplicate cluster -> top k -> Rows and
cluster sizes for those alone. A caller may weigh the candidates' authors (the node weighs
them by standing) to choose which members speak for a cluster and which clusters fill the k,
and may leave out the checked hits under its similarity floor (:meth:`KnowledgeBase.find`):
their Rows are not made (~120 of a query's 150 candidates at 20k lessons).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numkong
import numpy as np

from zoonode.protocol import Op
from zoonode.replica import Replica, SnapshotError
from zoonode.store import (
    CANDIDATE_AUTHOR,
    CANDIDATE_CLUSTER,
    CANDIDATE_CONFIDENCE,
    CANDIDATE_CREATED,
    CANDIDATE_DOMAIN,
    CANDIDATE_PENDING,
    CANDIDATE_SEQ,
    CANDIDATE_STATUS,
    CANDIDATE_VECTOR,
    Incoming,
    InsertResult,
    Outcome,
    Row,
    Status,
    StorageFull,
    Store,
    candidate_row,
)

log = logging.getLogger(__name__)

DB_FILE = "experiences.sqlite"

# A snapshot rewrites the whole index (~4 s at 1M records). Every 10k records at 1M that is a
# quarter of the ingest time, so the interval grows with the index: at least ``snapshot_every``
# new records and at least 1/SNAPSHOT_SHARE of the index. The cost stays near 5 % of ingest,
# and a restart after a crash replays at most that share (about 1 min at 1M records).
SNAPSHOT_SHARE = 20

# At least this many replica candidates are reranked exactly per query: with int8 scores,
# reranking the top 50 keeps recall@10 >= 0.98 at 1M records (README, ann_backends.py).
RERANK_CANDIDATES = 64

# Near-duplicate candidates whose approximate score is within this of the threshold are
# checked against their exact vectors (int8 score error: median 0.003, max 0.02 measured).
APPROX_MARGIN = 0.05
# Candidates read to find the best lesson a query's floor is set by (KnowledgeBase._above_floor).
FLOOR_PROBE = 8
# The widest replica search a weighed query makes to prove its pool complete (find): there,
# the pool found so far is accepted (``KnowledgeBase.pools_capped`` counts it) rather than
# reading every row of the store.
WEIGHED_FETCH_CAP = 4096
# Waiting records a search reads per replica candidate it fetches, at most (find): while
# 8,000 records drained at 100k, ~110 of them scored above the replica's 66th candidate for a
# typical query; reading only 66 left the rest unread, and the whole search widened 4x.
WAITING_READ = 4
# The most waiting records one search reads (a flood on one topic: the pool is then accepted,
# ``KnowledgeBase.pools_capped`` counts it, as at WEIGHED_FETCH_CAP).
WAITING_READ_CAP = 1024
# Factors this close to the bound count as the bound (pool_complete): 1 % of a factor is ~2 h
# of standing at 7 days' maturity; an unread lesson it could let outrank the k-th one scores
# within ~1 % of it.
FACTOR_SLACK = 0.01

# Candidates' authors -> score factors in [0, 1] (KnowledgeBase.search).
Weigh = Callable[[list[bytes]], np.ndarray]
# A caller's similarity floor from candidates (exact score, author, waiting for the check) and
# whether they are all its candidates (True) or only the best few (False); None: it cannot
# tell from these (find, _above_floor, _found). It must never be above the caller's floor.
FloorOf = Callable[[list[tuple[float, bytes, bool]], bool], float | None]
# A candidate _keep kept: (group, Store.candidate_fields tuple, exact score, vector).
_Kept = tuple[int, tuple, float, np.ndarray]

# The checker's queue: a newcomer's records (no lesson of theirs has passed the check here)
# wait behind every record of an author who has passed it; within each group the order is
# each author's first pending record, then each one's second, ... (newest first).
NEWCOMER_RANK = 1_000_000_000


class PendingIndex:
    """In-memory index of the records waiting for the embedding check, at the vectors their
    codes imply. They stay out of the replica until checked: an HNSW insertion costs ~1 ms at
    100k records, more than the rest of stage 1 together, and a checked record then enters the
    graph once, at its exact vector (no replace).

    Brute force in two passes: every waiting vector is also held as int8 (its own scale per
    row, 384 bytes), and a query scores those with integer SIMD (numkong), then rescores the
    best ``2k + 32`` at float32. Reading 100k float32 vectors took ~30 ms a query on this
    2-core machine (153 MB; the backlog holds up to ``ingest.max_pending`` = 100,000, the
    whole store during a sync catch-up); the int8 pass reads a quarter of that, ~4-7 ms.
    Quantisation moves a score by < 0.003 on real vectors (a bound per row is computed, and
    the floor is applied with it, then exactly), so the result is the exact top k except in
    the rare case where one of them ranks below ``2k + 32`` in the int8 pass."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.seqs = np.zeros(1024, np.int64)
        self.vectors = np.zeros((1024, dim), np.float32)
        self.codes = np.zeros((1024, dim), np.int8)  # round(vector / unit)
        self.units = np.zeros(1024, np.float32)  # per row: max |coordinate| / 127
        self.l1 = np.zeros(1024, np.float32)  # per row: sum |coordinate| (the error bound)
        self.slot: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.slot)

    def add(self, seqs: Sequence[int], vectors: np.ndarray) -> None:
        seqs = list(seqs)
        vectors = np.asarray(vectors, np.float32).reshape(-1, self.dim)
        if len(seqs) != len(vectors):
            raise ValueError(f"{len(seqs)} seqs for {len(vectors)} vectors")
        codes, units = quantize(vectors)
        l1 = np.abs(vectors).sum(axis=1)
        for j, seq in enumerate(seqs):
            seq = int(seq)
            i = self.slot.get(seq)
            if i is None:
                i = len(self.slot)
                if i == len(self.seqs):
                    self._grow(2 * i)
                self.seqs[i], self.slot[seq] = seq, i
            self.vectors[i], self.codes[i], self.units[i], self.l1[i] = (
                vectors[j],
                codes[j],
                units[j],
                l1[j],
            )

    def _grow(self, size: int) -> None:
        self.seqs = np.resize(self.seqs, size)
        self.vectors = np.resize(self.vectors, (size, self.dim))
        self.codes = np.resize(self.codes, (size, self.dim))
        self.units = np.resize(self.units, size)
        self.l1 = np.resize(self.l1, size)

    def remove(self, seqs: Iterable[int]) -> None:
        for seq in seqs:
            i = self.slot.pop(int(seq), None)
            if i is None:
                continue
            last = len(self.slot)  # the old last slot moves into the hole
            if i != last:
                moved = int(self.seqs[last])
                self.seqs[i] = moved
                self.vectors[i], self.codes[i] = self.vectors[last], self.codes[last]
                self.units[i], self.l1[i] = self.units[last], self.l1[last]
                self.slot[moved] = i

    def search(
        self, query: np.ndarray, k: int, floor: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(seqs, exact inner products) of the ``k`` nearest, best first; with ``floor``,
        only those scoring at least that."""
        n = len(self.slot)
        if n == 0 or k < 1:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        query = np.asarray(query, np.float32).reshape(-1)
        (qcode,), (qunit,) = quantize(query[None])
        raw = np.empty((1, n), np.float32)  # |dot| <= dim x 127^2 < 2^24: exact in float32
        numkong.cdist(qcode[None], self.codes[:n], metric="dot", out=raw, out_dtype="float32")
        approx = raw[0] * self.units[:n] * qunit
        rows = np.arange(n)
        if floor is not None:
            # |exact - approx| <= half a unit on each side of every product (and their product)
            bound = 0.5 * (
                self.units[:n] * float(np.abs(query).sum())
                + qunit * self.l1[:n]
                + 0.5 * qunit * self.units[:n] * self.dim
            )
            rows = np.flatnonzero(approx + bound + 1e-5 >= floor)  # + float32 rounding
        keep = 2 * k + 32
        if len(rows) > keep:
            rows = rows[np.argpartition(-approx[rows], keep - 1)[:keep]]
        sims = self.vectors[rows] @ query
        order = np.argsort(-sims, kind="stable")[:k]
        rows, sims = rows[order], sims[order]
        if floor is not None:
            above = sims >= floor
            rows, sims = rows[above], sims[above]
        return self.seqs[rows], sims


def quantize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes of float vectors (n, d), one scale per row: code = round(v / unit), unit =
    max |v| / 127 (a zero row gets unit 1). Pure."""
    top = np.abs(vectors).max(axis=1)
    units = np.where(top > 0, top / 127.0, 1.0).astype(np.float32)
    codes = np.rint(vectors / units[:, None]).clip(-127, 127).astype(np.int8)
    return codes, units


class Backlog:
    """Counts of records waiting for the embedding check, by author, kept in memory (read by
    the gossip validator without touching SQLite) and the authors vouched for by a check.

    Changed only on the knowledge-base thread; the validator's reads of single ints and set
    membership are atomic under the GIL."""

    def __init__(self, by_author: dict[bytes, int], vouched: set[bytes]) -> None:
        self.by_author: Counter[bytes] = Counter(by_author)
        self.total = sum(self.by_author.values())
        self.vouched = vouched

    def rank(self, author: bytes) -> int:
        """The queue place of this author's next pending record."""
        return self.by_author[author] + (0 if author in self.vouched else NEWCOMER_RANK)

    def added(self, author: bytes) -> None:
        self.by_author[author] += 1
        self.total += 1

    def left(self, author: bytes) -> None:
        left = self.by_author[author] - 1
        if left > 0:
            self.by_author[author] = left
        else:
            del self.by_author[author]
        self.total -= 1

    def of(self, author: bytes) -> int:
        return self.by_author.get(author, 0)


def snapshot_due(new_records: int, indexed: int, snapshot_every: int) -> bool:
    """Whether enough was indexed since the last snapshot to write another one."""
    return new_records >= max(snapshot_every, indexed // SNAPSHOT_SHARE)


@dataclass(frozen=True)
class Filters:
    domain: str | None = None  # prefix on dotted words: "math" matches "math.geometry"
    author: bytes | None = None
    min_confidence: float | None = None
    created_after: int | None = None  # ms, inclusive
    created_before: int | None = None  # ms, exclusive

    def sql(self) -> tuple[str, list]:
        clauses, params = ["op != 2"], []
        if self.domain:
            clauses.append("(domain = ? OR domain LIKE ? ESCAPE '\\')")
            escaped = self.domain.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            params += [self.domain, escaped + ".%"]
        if self.author is not None:
            clauses.append("author = ?")
            params.append(self.author)
        if self.min_confidence is not None:
            clauses.append("confidence >= ?")
            params.append(self.min_confidence)
        if self.created_after is not None:
            clauses.append("created_at >= ?")
            params.append(self.created_after)
        if self.created_before is not None:
            clauses.append("created_at < ?")
            params.append(self.created_before)
        return " AND ".join(clauses), params

    def match(self, row: Row) -> bool:
        return self.match_fields(row.author, row.domain, row.confidence, row.created_at)

    def match_fields(self, author: bytes, domain: str, confidence: float, created_at: int) -> bool:
        if self.domain and not (domain == self.domain or domain.startswith(self.domain + ".")):
            return False
        if self.author is not None and author != self.author:
            return False
        if self.min_confidence is not None and confidence < self.min_confidence:
            return False
        if self.created_after is not None and created_at < self.created_after:
            return False
        return self.created_before is None or created_at < self.created_before

    @property
    def empty(self) -> bool:
        return self == Filters()


@dataclass(frozen=True)
class Hit:
    row: Row
    score: float  # exact inner product with the query (cosine: both unit vectors)
    cluster_size: int
    vector: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class Found:
    """A search's hits, how many checked hits it left out under the caller's floor, and how
    many members of a near-duplicate cluster beyond ``per_cluster`` it left out (above the
    floor; those under it count in ``below_floor``)."""

    hits: list[Hit]
    below_floor: int = 0
    cluster_member_limit: int = 0


def waiting_complete(
    kth_factor: float, kth_score: float, truncated: float, max_factor: float
) -> bool:
    """Whether the ``k``-th kept candidate (its author's factor, its exact cosine) outranks
    every waiting record the pending index left unread, whose cosine is at most
    ``truncated`` (the last it returned, exact) and whose factor at most ``max_factor``
    (1 for an unweighed search). Factors within ``FACTOR_SLACK`` of the bound count as the
    bound (as in :func:`pool_complete`). Factors are in [0, ``max_factor``]: an unread
    record ranks at most ``truncated x max_factor``, or 0 where ``truncated`` is negative
    (a low factor then ranks a negative cosine higher). Pure."""
    if kth_factor >= max_factor - FACTOR_SLACK:
        kth_factor = max_factor  # within the slack: as the bound, the cosines decide
    return kth_factor * kth_score >= (truncated * max_factor if truncated > 0 else 0.0)


def pool_complete(
    kth_factor: float, kth_score: float, last: float, max_factor: float, margin: float
) -> bool:
    """Whether a weighed search's ``k`` kept candidates are the best by cosine x factor over
    the whole replica: the ``k``-th kept one (its author's factor, its exact cosine) outranks
    every candidate the replica did not return, whose cosine is at most ``last`` (the
    replica's last score) plus its error ``margin`` and whose factor at most ``max_factor``.
    Where no unseen author can weigh more than the ``k``-th (``kth_factor >= max_factor``: one
    author, or every author fresh), the replica's order is trusted as for unweighed searches;
    within ``FACTOR_SLACK`` too (authors met minutes apart differ by ~1e-5); but not where the
    ``k``-th's cosine is negative: a lower factor ranks a negative cosine higher, so the
    bound below decides (unreachable from a node, whose floor is >= 0.3)."""
    if kth_factor >= max_factor - FACTOR_SLACK and kth_score >= 0:
        return True
    bound = last + margin
    # Factors are in [0, 1]: a negative cosine ranks at most 0 whatever its author.
    return (max_factor * bound if bound > 0 else 0.0) < kth_factor * kth_score


class KnowledgeBase:
    def __init__(
        self,
        directory: Path,
        space: bytes,
        dim: int,
        *,
        capacity: int = 1_000_000,
        duplicate_cosine: float = 0.9,
        snapshot_every: int = 10_000,
        hnsw_m: int = 16,
        hnsw_ef_construction: int = 200,
        hnsw_ef_search: int = 256,
        replica_backend: str = "usearch-i8",
        ivf_lists: int = 1024,
        durable: bool = True,
        on_evict: Callable[[list[Row]], None] | None = None,
    ) -> None:
        self.directory = directory
        self.capacity = capacity
        self.duplicate_cosine = duplicate_cosine
        self.snapshot_every = snapshot_every
        self.on_evict = on_evict
        self.store = Store(directory / DB_FILE, space, durable=durable)
        self.backlog = Backlog(self.store.pending_by_author(), self.store.checked_authors())
        self._journalled = 0  # replica journal entries since the last snapshot
        self.pools_capped = 0  # weighed searches that stopped at WEIGHED_FETCH_CAP (find)
        self.pending_index = PendingIndex(dim)
        for seqs, vectors in self.store.vectors_since(0, pending=True):
            self.pending_index.add(seqs, vectors)
        self.replica = Replica.load(
            directory,
            dim,
            backend=replica_backend,
            m=hnsw_m,
            ef_construction=hnsw_ef_construction,
            ef_search=hnsw_ef_search,
            lists=ivf_lists,
        )
        self._replay()

    def _replay(self) -> None:
        """Bring the replica up to the store: add every checked lesson accepted after the
        snapshot, apply the journalled promotions and removals the snapshot does not hold,
        then check that it holds every checked active lesson and add any it lacks. Records
        waiting for the check are not in the replica (``pending_index``)."""
        replayed = 0
        for seqs, vectors in self.store.vectors_since(self.replica.snapshot_seq):
            self.replica.add(seqs, vectors)
            replayed += len(seqs)
        if replayed:
            log.info(
                "replica: replayed %d records after snapshot seq %d",
                replayed,
                self.replica.snapshot_seq,
            )
        _, changed = self.store.journal_since(self.replica.snapshot_journal)
        older = sorted({s for s in changed if s <= self.replica.snapshot_seq})
        for start in range(0, len(older), 4096):
            chunk = older[start : start + 4096]
            rows = self.store.rows_with_vectors(chunk)
            held = [s for s in chunk if s in rows]
            if held:
                self.replica.replace(np.array(held), np.stack([rows[s][1] for s in held]))
            self.replica.remove(np.array([s for s in chunk if s not in rows], dtype=np.int64))
        self._journalled = len(changed)
        if older:
            log.info("replica: re-applied %d checked or removed records", len(older))
        self.repair()

    def repair(self) -> int:
        """Add to the replica every active lesson of the store it does not hold (a snapshot
        from another writer, a lost file); returns how many. ~0.2 s per 100k records."""
        missing = self.replica.missing(self.store.active_lesson_seqs())
        if len(missing) == 0:
            return 0
        found = self.store.rows_with_vectors(missing.tolist())
        seqs = np.array(sorted(found), np.int64)
        if len(seqs):
            self.replica.add(seqs, np.stack([found[int(s)][1] for s in seqs]))
        log.warning("replica: %d active records were missing from it; added", len(seqs))
        return len(seqs)

    def rebuild(self, progress: Callable[[int], None] | None = None) -> int:
        """Drop the replica and rebuild it from the store's vectors (``zoonode index rebuild``)."""
        old = self.replica
        self.replica = Replica(
            old.dim,
            backend=old.backend,
            m=old.m,
            ef_construction=old.ef_construction,
            ef_search=old.ef_search,
            threads=old.threads,
            lists=old.lists,
        )
        total = 0
        for seqs, vectors in self.store.vectors_since(0):
            self.replica.add(seqs, vectors)
            total += len(seqs)
            if progress:
                progress(len(seqs))
        self._save_replica()
        return total

    def _save_replica(self) -> None:
        """Snapshot the replica with the last journal entry it holds, then forget the journal
        up to there. On a full disk: a warning; the next start replays store and journal."""
        serial = self.store.journal_serial()
        try:
            self.replica.save(self.directory, journal=serial)
        except SnapshotError as exc:
            log.warning(
                "%s; the next start replays the store after seq %d", exc, self.replica.snapshot_seq
            )
            return
        self.store.trim_journal(serial)
        self._journalled = 0

    def close(self) -> None:
        """Snapshot the replica if it grew or changed (skipped, with a warning, on a full disk:
        the next start replays the store and the journal), then close the store."""
        if self.replica.max_seq > self.replica.snapshot_seq or self._journalled:
            self._save_replica()
        self.store.close()

    # -- writes -------------------------------------------------------------------------------
    def ingest(self, items: Sequence[Incoming]) -> list[InsertResult]:
        """Store a batch durably, then index it. Returns one result per item, in order.
        Items with ``pending`` set join the backlog of the embedding check."""
        # The same id twice in one batch: the first copy is the one stored and indexed.
        first = {it.record.id: i for i, it in reversed(list(enumerate(items)))}
        # Known ones need no cluster hint (the insert itself finds duplicates); a waiting
        # record gets no hint, so it skips this lookup (stage 1 checked ``known`` already).
        fresh = [
            it
            for i, it in enumerate(items)
            if first[it.record.id] == i
            and (it.pending is not None or not self.store.has(it.record.id))
        ]
        hinted = self._with_cluster_hints(fresh)
        by_id = {r.id: r for r in self.store.insert(hinted)}
        accepted = [
            it
            for it in hinted
            if by_id[it.record.id].outcome is Outcome.ACCEPTED and it.vector is not None
        ]
        for it in accepted:  # before the replica: the validator reads these counts
            if it.pending is not None:
                self.backlog.added(it.record.experience.author)
            else:
                self.backlog.vouched.add(it.record.experience.author)
        checked = [it for it in accepted if it.pending is None]
        if checked:
            self.replica.add(
                np.array([by_id[it.record.id].seq for it in checked]),
                np.stack([it.vector for it in checked]),
            )
        waiting = [it for it in accepted if it.pending is not None]
        if waiting:
            self.pending_index.add(
                [by_id[it.record.id].seq for it in waiting], np.stack([it.vector for it in waiting])
            )
        self._evict()
        self._maybe_snapshot()
        results = []
        for i, it in enumerate(items):
            res = by_id.get(it.record.id) if first[it.record.id] == i else None
            if res is None:  # already known before this batch, or a repeat within it
                row = self.store.get(it.record.id)
                res = InsertResult(it.record.id, Outcome.DUPLICATE, row.seq if row else None)
            results.append(res)
        return results

    def _maybe_snapshot(self) -> None:
        new = self.replica.max_seq - self.replica.snapshot_seq + self._journalled
        if snapshot_due(new, len(self.replica), self.snapshot_every):
            self._save_replica()

    # -- the embedding check's outcomes -----------------------------------------------------------
    def pending(self, limit: int, seqs: Sequence[int] | None = None) -> list[Row]:
        """The next ``limit`` records for the checker, or those of ``seqs`` still pending."""
        return self.store.pending_rows(limit, seqs)

    def pending_seqs(self, seqs: Sequence[int]) -> set[int]:
        """Those of ``seqs`` still pending (the checker: which of a batch read earlier a query
        has not checked meanwhile)."""
        return self.store.pending_seqs(seqs)

    def promote(self, rows: Sequence[Row], vectors: np.ndarray) -> list[int]:
        """Checked records become active with their texts' exact vectors (store, then
        replica); each joins the near-duplicate cluster its exact vector falls in, among
        checked records (else it keeps its own). Returns the seqs promoted now."""
        if not rows:
            return []
        vectors = np.asarray(vectors, np.float32)
        clusters = self._nearest_active_clusters(vectors)
        done = set(
            self.store.promote(
                [(r.seq, v, c) for r, v, c in zip(rows, vectors, clusters, strict=True)]
            )
        )
        keep = [i for i, r in enumerate(rows) if r.seq in done]
        if keep:  # into the replica once, at the exact vector
            self.replica.add(np.array([rows[i].seq for i in keep]), vectors[keep])
            self.pending_index.remove(rows[i].seq for i in keep)
        for i in keep:
            self.backlog.left(rows[i].author)
            self.backlog.vouched.add(rows[i].author)
        self._journalled += len(keep)
        self._maybe_snapshot()
        return [rows[i].seq for i in keep]

    def remove(self, rows: Sequence[Row], reason: str) -> list[Row]:
        """Delete records (store, tombstone, replica): ones that failed the embedding check
        or whose author was banned for it. Returns the rows removed now."""
        done = self.store.remove(rows, reason)
        self.replica.remove(np.array([r.seq for r in done if not r.pending], dtype=np.int64))
        self.pending_index.remove(r.seq for r in done)
        for r in done:
            if r.pending:
                self.backlog.left(r.author)
        self._journalled += len(done)
        self._maybe_snapshot()
        return done

    def pending_of(self, author: bytes) -> list[Row]:
        return self.store.pending_of(author)

    def _with_cluster_hints(self, items: list[Incoming]) -> list[Incoming]:
        """Link each checked lesson to an active near-duplicate (cos >= threshold), in the
        replica or earlier in the same batch, so queries and selection count the cluster once.
        One batched replica query and one store read for the whole batch.

        A record waiting for the embedding check is linked to nothing here: it joins its
        cluster when it is promoted, by its exact vector (``promote``), and until then a query
        drops it where a checked candidate within the near-duplicate cosine answers (``_keep``).
        Searching the graph for it at insertion cost ~0.15 ms a record at 100k, a sixth of
        stage 1, for a link the promotion recomputes anyway."""
        lessons = [
            i
            for i, it in enumerate(items)
            if it.vector is not None
            and it.pending is None
            and it.record.experience.op is not Op.REVOKE
        ]
        stored = (
            self._nearest_active_clusters(np.stack([items[i].vector for i in lessons]))
            if lessons
            else []
        )
        hints: dict[int, int | bytes | None] = dict(zip(lessons, stored, strict=True))
        # Within the batch: one Gram matrix; a lesson links to the most similar *earlier* one.
        # Records waiting for the embedding check link to nothing, and nothing to them: a
        # hijack must not become the anchor of an honest record's cluster.
        linkable = lessons
        if linkable:
            matrix = np.stack([items[i].vector for i in linkable])
            gram = matrix @ matrix.T
            gram[np.triu_indices(len(linkable))] = -np.inf  # only earlier lessons count
            nearest = np.argmax(gram, axis=1)
        position = {i: p for p, i in enumerate(linkable)}
        out: list[Incoming] = []
        for i, it in enumerate(items):
            if i not in hints:
                out.append(it)
                continue
            hint, p = hints[i], position.get(i, 0)
            if hint is None and p > 0 and gram[p, nearest[p]] >= self.duplicate_cosine:
                hint = items[linkable[nearest[p]]].record.id
            out.append(Incoming(it.record, it.vector, it.peer, hint, it.pending))
        return out

    def _nearest_active_clusters(self, vectors: np.ndarray) -> list[int | None]:
        """For each vector, the cluster of an active, checked stored record with cos >=
        threshold (a record waiting for the embedding check is nobody's anchor)."""
        # cos >= 0.9 neighbours are the easiest for HNSW to find: a small ef suffices.
        labels, sims = self.replica.search_many(vectors, k=4, ef=32)
        floor = self.duplicate_cosine - (0.0 if self.replica.exact_scores else APPROX_MARGIN)
        close = [
            [int(s) for s, sim in zip(row_l, row_s, strict=True) if sim >= floor]
            for row_l, row_s in zip(labels, sims, strict=True)
        ]
        wanted = sorted({s for row in close for s in row})
        rows = self.store.rows_with_vectors(wanted) if wanted else {}
        out: list[int | None] = []
        for vector, row in zip(vectors, close, strict=True):
            found = None
            for seq in row:  # best first; the exact cosine decides
                r, stored = rows.get(seq, (None, None))
                if (
                    r is not None
                    and r.status is Status.ACTIVE
                    and r.cluster is not None
                    and float(stored @ vector) >= self.duplicate_cosine
                ):
                    found = r.cluster
                    break
            out.append(found)
        return out

    def _evict(self) -> None:
        try:
            victims = self.store.evict_over(self.capacity)
        except StorageFull as exc:  # the batch is stored; evicting waits for the next one
            log.warning("eviction postponed: %s", exc)
            return
        for v in victims:
            if v.pending:
                self.backlog.left(v.author)
        self.pending_index.remove(v.seq for v in victims if v.pending)
        if victims and self.on_evict:
            self.on_evict(victims)

    # -- reads --------------------------------------------------------------------------------
    def search(
        self,
        query: np.ndarray,
        k: int = 10,
        filters: Filters | None = None,
        candidates: int | None = None,
        dedupe: bool = True,
        weigh: Weigh | None = None,
        per_cluster: int = 1,
        pending: bool = False,
        pending_floor: float | None = None,
    ) -> list[Hit]:
        """Top ``k`` active lessons by exact cosine, at most ``per_cluster`` (the best) per
        near-duplicate cluster (``dedupe``; all of them otherwise).

        ``weigh`` maps the candidates' authors to factors in [0, 1]: the order is then by
        cosine x factor, so a low-weight row neither speaks for a cluster a higher-weight
        member also matches nor pushes such a cluster out of the k. Hit scores stay the exact
        cosine. ``pending``: also records waiting for the embedding check (scored by their
        code's vector; a caller that returns one must check it first, ``Hit.row.pending``),
        those that would be among the replica's candidates if they were in it;
        ``pending_floor``: only those scoring at least this (a caller that drops every
        candidate under a similarity floor passes its lowest: the others' rows are not read)."""
        return self.find(
            query, k, filters, candidates, dedupe, weigh, per_cluster, pending, pending_floor
        ).hits

    def find(
        self,
        query: np.ndarray,
        k: int = 10,
        filters: Filters | None = None,
        candidates: int | None = None,
        dedupe: bool = True,
        weigh: Weigh | None = None,
        per_cluster: int = 1,
        pending: bool = False,
        pending_floor: float | None = None,
        floor: FloorOf | None = None,
        sizes: bool = True,
        max_factor: float = 1.0,
        wires: bool = True,
    ) -> Found:
        """:meth:`search`, where ``floor`` (:data:`FloorOf`: a lower bound of the caller's
        similarity floor from some of its candidates) leaves out the checked hits that score
        under it: the caller would drop them anyway. Their rows are not read;
        ``Found.below_floor`` counts them. Hits waiting for the check are kept. ``sizes``
        False: every hit's ``cluster_size`` is 1, not read (a caller that reports it for a
        few hits alone reads theirs, ``Store.cluster_sizes``: ~0.4 ms for ~150 at 100k).
        ``wires`` False: every hit's ``row.wire`` is None, not read (a caller that returns a
        few of ~150 hits reads theirs, ``Store.wires_by_seq``: reading all cost ~0.8 ms at 100k).

        With ``weigh``, the ``k`` kept are the best by cosine x factor over everything above
        the floor (a threshold algorithm): the replica ranks by cosine alone, so the search
        widens until no candidate it has not returned could outrank the ``k``-th kept one
        (:func:`pool_complete`). ``max_factor``: an upper bound of ``weigh``'s factor for any
        author (1: always sound); the caller's tighter bound spares clean data the widening."""
        filters = filters or Filters()
        query = np.asarray(query, np.float32)
        # A quarter more than asked covers filtered-out and same-cluster hits in the common
        # case; the loop below widens the search when it does not.
        fetch = max(candidates or 0, k + max(k // 4, 16), RERANK_CANDIDATES)
        overflow: list[float] = []  # scores of cluster members beyond per_cluster (_keep)
        while True:
            seqs, sims = self.replica.search(query, k=fetch)
            exhausted = len(seqs) < fetch
            early = 0  # candidates left out before their rows are read (_above_floor)
            waiting = np.zeros(0, np.int64)
            # The last (exact) score of the waiting records where the pending index returned
            # all it may: more may wait under it, unread (None: none unread above the cut).
            truncated: float | None = None
            waiting_read = 0
            if pending and len(self.pending_index):
                # Only waiting records that would be among the replica's ``fetch`` if they
                # were in it: one scoring under its last candidate is not read.
                cut = pending_floor
                if not exhausted and len(sims):
                    last = float(sims.min())
                    cut = last if cut is None else max(cut, last)
                # Up to WAITING_READ x ``fetch`` of them: a backlog of relevant records is
                # often more than one fetch above the replica's last, and leaving some unread
                # widens the whole search (see ``truncated`` below).
                waiting_read = min(WAITING_READ * fetch, WAITING_READ_CAP)
                waiting, near = self.pending_index.search(query, waiting_read, cut)
                if len(waiting) >= waiting_read:
                    truncated = float(near.min())
                if not exhausted and len(waiting) and weigh is None:
                    # Unweighed, the best ``fetch`` of both together are the candidates, as
                    # if in one index (the rows read stay ``fetch``; while a backlog of
                    # relevant records drained a query read ~300 rows instead of ~180).
                    # Weighed, every one returned is a candidate beside the replica's
                    # ``fetch``: cut by cosine, the waiting records of newer authors (factor
                    # 0.2) pushed checked lessons out although they rank far under them,
                    # the pool looked incomplete and the search widened 4x (at 100k while
                    # 8,000 records drained: 2 replica searches and ~330 candidates a query
                    # instead of 1 and ~70, search 20 ms instead of 8; drain_query.py).
                    nth = np.partition(np.concatenate([sims, near]), -fetch)[-fetch]
                    seqs, sims = seqs[sims >= nth], sims[sims >= nth]
                    waiting = waiting[near >= nth]
            # The checked candidates' floor bounds the caller's from below with records
            # waiting too (a waiting one can only raise the best, or fail and leave).
            read: dict[int, tuple] = {}  # candidate_fields already read (the floor's probe)
            if floor is not None and len(seqs):
                seqs, early = self._above_floor(seqs, sims, query, filters, floor, read)
            if len(waiting):
                both = np.concatenate([seqs, waiting])
                seqs = np.fromiter(dict.fromkeys(both.tolist()), np.int64)
            overflow.clear()
            kept = self._keep(
                seqs, query, filters, dedupe, k, weigh, per_cluster, pending, overflow, read
            )
            # The replica's candidates reach under the caller's floor (some were cut before
            # their rows were read, or the last is under the floor the lessons kept so far
            # set): the rest of the replica ranks under them, so under the floor too. The
            # search is done, filtered or not: no wider search, no brute force over every
            # row a broad filter matches (~1 s a query at 100k lessons).
            floored = early > 0 or self._reached_floor(kept, sims, floor)
            kth_factor = (
                float(weigh([kept[k - 1][1][CANDIDATE_AUTHOR]])[0])
                if weigh is not None and len(kept) >= k
                else 1.0
            )
            complete = len(kept) >= k and (
                weigh is None
                or not len(sims)
                or pool_complete(
                    kth_factor,
                    kept[k - 1][2],
                    float(sims.min()),
                    max_factor,
                    0.0 if self.replica.exact_scores else APPROX_MARGIN,
                )
            )
            capped = len(kept) >= k and not (exhausted or floored) and fetch >= WEIGHED_FETCH_CAP
            if not complete and capped:
                # A flood of low-weight lessons around one query: accept the pool (the best by
                # weighted rank among the replica's best ``fetch``) rather than reading every
                # row of the store (_exact without a filter: ~1 s a query at 100k lessons).
                self.pools_capped += 1
                complete = True
            if (complete or exhausted or floored) and truncated is not None:
                # Waiting records the pending index left unread score up to ``truncated``: the
                # search is done only where they are under the floor the replica reached, or
                # none could outrank the k-th kept one (a flood of waiting records on a topic
                # hid an established author's waiting ones: review). Otherwise read more of
                # them, up to WAITING_READ_CAP; there, accept the pool as at
                # WEIGHED_FETCH_CAP (a flood of 17,000 waiting records on one topic cost a
                # query 22,600 rows and 0.7 s, or a scan of the store, when the wider reads
                # went on to _exact: second review).
                under = floored and len(sims) > 0 and truncated <= float(sims.min())
                outranked = len(kept) >= k and waiting_complete(
                    kth_factor, kept[k - 1][2], truncated, max_factor if weigh else 1.0
                )
                if not (under or outranked):
                    if waiting_read < WAITING_READ_CAP:
                        fetch *= 4
                        continue
                    self.pools_capped += 1
            if complete or exhausted or floored:
                if len(kept) < k and not filters.empty and not floored:
                    overflow.clear()
                    kept = self._exact(
                        query, k, filters, dedupe, weigh, per_cluster, pending, overflow
                    )
                found = self._found(kept[:k], dedupe and sizes, floor, overflow, wires)
                # Those cut early rank under every kept one: counted only where the k
                # candidates had room for them (as if read), so a query never reports more
                # than k considered, cut or not.
                # Under a filter they are not counted: unread, they may not match it (a
                # min_confidence filter matching 1 of 52 lessons reported 41 under the
                # floor: issue 25 review).
                room = max(0, k - min(k, len(kept))) if filters.empty else 0
                return replace(found, below_floor=found.below_floor + min(early, room))
            if fetch >= 4096:
                overflow.clear()
                kept = self._exact(query, k, filters, dedupe, weigh, per_cluster, pending, overflow)
                return self._found(kept, dedupe and sizes, floor, overflow, wires)
            # Wider for the weighted rank alone (the pool is full): at most WEIGHED_FETCH_CAP.
            fetch = min(fetch * 4, WEIGHED_FETCH_CAP) if len(kept) >= k else fetch * 4

    def _reached_floor(self, kept: list[_Kept], sims: np.ndarray, floor: FloorOf | None) -> bool:
        """Whether the replica's last candidate (``sims``: the replica's scores) is surely
        under the floor the caller takes from the candidates kept so far."""
        if floor is None or not kept or not len(sims):
            return False
        entries = [(sim, f[CANDIDATE_AUTHOR], bool(f[CANDIDATE_PENDING])) for _, f, sim, _ in kept]
        cut = floor(entries, False)
        margin = 0.0 if self.replica.exact_scores else APPROX_MARGIN
        return cut is not None and float(sims.min()) < cut - margin

    def _above_floor(
        self,
        seqs: np.ndarray,
        sims: np.ndarray,
        query: np.ndarray,
        filters: Filters,
        floor: FloorOf,
        read: dict[int, tuple] | None = None,
    ) -> tuple[np.ndarray, int]:
        """The replica's candidates (``seqs``, best first by the replica's scores ``sims``)
        less those surely under the caller's floor, and how many those are: their rows are
        not read (~half of a query's candidates at 20k lessons, most of its read cost).

        The floor is the caller's (``floor``, told these are not all its candidates) from
        the active checked lessons matching ``filters`` among the best ``FLOOR_PROBE``
        candidates, at their exact scores (a revoked or evicted lesson the replica still
        holds does not count); a candidate is surely under it when its replica score is more
        than the replica's error (``APPROX_MARGIN``, 0 for exact backends) below it. No floor
        from those: nothing is left out. ``read`` receives the probe's fields (for
        :meth:`_keep`: not read twice)."""
        margin = 0.0 if self.replica.exact_scores else APPROX_MARGIN
        probe = seqs[:FLOOR_PROBE].tolist()
        fields = self.store.candidate_fields(probe)
        if read is not None:
            read.update(fields)
        entries = [
            (
                float(np.frombuffer(f[CANDIDATE_VECTOR], np.float32) @ query),
                f[CANDIDATE_AUTHOR],
                False,
            )
            for f in (fields.get(s) for s in probe)
            if f is not None
            and f[CANDIDATE_STATUS] == Status.ACTIVE
            and not f[CANDIDATE_PENDING]
            and (
                filters.empty
                or filters.match_fields(
                    f[CANDIDATE_AUTHOR],
                    f[CANDIDATE_DOMAIN],
                    f[CANDIDATE_CONFIDENCE],
                    f[CANDIDATE_CREATED],
                )
            )
        ]
        cut = floor(entries, False) if entries else None
        if cut is None:
            return seqs, 0
        keep = sims >= cut - margin
        return seqs[keep], int(len(seqs) - np.count_nonzero(keep))

    def _found(
        self,
        kept: list[_Kept],
        sizes: bool,
        floor: FloorOf | None,
        overflow: Sequence[float] = (),
        wires: bool = True,
    ) -> Found:
        """Hits of the kept candidates (minus those under ``floor``): their Rows, and (if
        ``sizes``) their clusters' sizes read for these alone. ``overflow``: scores of the
        cluster members left out beyond ``per_cluster`` (:meth:`_keep`), counted as such where
        they clear the floor, under it otherwise. ``wires``: the hits' signed bytes read
        (None otherwise)."""
        below = 0
        cut = None
        if floor is not None and kept:
            entries = [
                (sim, f[CANDIDATE_AUTHOR], bool(f[CANDIDATE_PENDING])) for _, f, sim, _ in kept
            ]
            cut = floor(entries, True)
            if cut is not None:
                before = len(kept)
                kept = [e for e in kept if e[1][CANDIDATE_PENDING] or e[2] >= cut]
                below = before - len(kept)
        held = self.store.cluster_sizes(list({g for g, *_ in kept if g > 0})) if sizes else {}
        if wires and kept:
            got = self.store.wires_by_seq([f[CANDIDATE_SEQ] for _, f, _, _ in kept])
            kept = [(g, (*f[:2], got.get(f[0]), *f[3:]), sim, v) for g, f, sim, v in kept]
        hits = [Hit(candidate_row(f), sim, held.get(g, 1), vector) for g, f, sim, vector in kept]
        limited = sum(1 for sim in overflow if cut is None or sim >= cut)
        return Found(hits, below + len(overflow) - limited, limited)

    def _keep(
        self,
        seqs: np.ndarray,
        query: np.ndarray,
        filters: Filters,
        dedupe: bool,
        limit: int | None = None,
        weigh: Weigh | None = None,
        per_cluster: int = 1,
        pending: bool = False,
        overflow: list[float] | None = None,
        read: dict[int, tuple] | None = None,
    ) -> list[_Kept]:
        """The best ``limit`` active, matching candidates by exact inner product, at most
        ``per_cluster`` per cluster, with their vectors; pending ones only if ``pending``, and
        never in place of a checked member of their cluster among the candidates. One read of
        the candidates (``Store.candidate_fields``); Rows are made for the hits alone.
        ``overflow`` receives the scores of the members left out beyond ``per_cluster``
        (ranked before the ``limit``-th kept one). ``read``: candidates' fields already read
        (``Store.candidate_fields``), not read again."""
        order = seqs.tolist() if isinstance(seqs, np.ndarray) else [int(s) for s in seqs]
        if read:
            fields = self.store.candidate_fields([s for s in order if s not in read])
            fields.update((s, read[s]) for s in order if s in read)
        else:
            fields = self.store.candidate_fields(order)
        check = not filters.empty
        found = []
        for s in order:
            f = fields.get(s)  # evicted ones are gone
            if (
                f is None
                or f[CANDIDATE_STATUS] != Status.ACTIVE
                or (f[CANDIDATE_PENDING] and not pending)
            ):
                continue
            if check and not filters.match_fields(
                f[CANDIDATE_AUTHOR],
                f[CANDIDATE_DOMAIN],
                f[CANDIDATE_CONFIDENCE],
                f[CANDIDATE_CREATED],
            ):
                continue
            found.append(f)
        if not found:
            return []
        # One flat copy of the vectors (not ~190 small arrays stacked).
        matrix = np.frombuffer(b"".join(f[CANDIDATE_VECTOR] for f in found), np.float32)
        matrix = matrix.reshape(len(found), -1)
        sims = matrix @ query
        rank = sims if weigh is None else sims * weigh([f[CANDIDATE_AUTHOR] for f in found])

        def group_of(f: tuple) -> int:
            cluster = f[CANDIDATE_CLUSTER]
            return cluster if dedupe and cluster is not None else -f[CANDIDATE_SEQ]

        spoken = {group_of(f) for f in found if not f[CANDIDATE_PENDING]}
        # A waiting record is linked to no cluster yet; among the candidates, one within the
        # near-duplicate cosine of a checked one is that lesson again: the checked one answers
        # and the query need not check the copy. (Waiting records are not grouped with each
        # other: a hijack carrying an honest record's code would then hide it.)
        checked = [i for i, f in enumerate(found) if not f[CANDIDATE_PENDING]]
        waiting = [i for i, f in enumerate(found) if f[CANDIDATE_PENDING]]
        copy_of_checked: set[int] = set()
        if dedupe and checked and waiting:  # one product for all, not one per waiting row
            closest = np.max(matrix[checked] @ matrix[waiting].T, 0)
            copy_of_checked = {
                i for i, c in zip(waiting, closest, strict=True) if c >= self.duplicate_cosine
            }
        members: dict[int, int] = {}
        kept: list[_Kept] = []
        for i in np.argsort(-rank, kind="stable").tolist():
            f = found[i]
            group = group_of(f)
            if f[CANDIDATE_PENDING] and group in spoken:
                continue
            if i in copy_of_checked:
                continue
            if members.get(group, 0) < per_cluster:
                members[group] = members.get(group, 0) + 1
                kept.append((group, f, float(sims[i]), matrix[i]))
                if limit is not None and len(kept) >= limit:
                    break
            elif overflow is not None:
                overflow.append(float(sims[i]))
        return kept

    def _exact(
        self,
        query: np.ndarray,
        k: int,
        filters: Filters,
        dedupe: bool,
        weigh: Weigh | None = None,
        per_cluster: int = 1,
        pending: bool = False,
        overflow: list[float] | None = None,
    ) -> list[_Kept]:
        """Brute force over the rows that match a selective filter."""
        where, params = filters.sql()
        if not pending:
            where += " AND pending IS NULL"
        seqs, vectors = self.store.filtered_vectors(where, params)
        if len(seqs) == 0:
            return []
        order = np.argsort(-(vectors @ query), kind="stable")
        return self._keep(
            seqs[order], query, filters, dedupe, k, weigh, per_cluster, pending, overflow
        )

    def authors_first_seen(self, authors: Iterable[bytes]) -> dict[bytes, int]:
        return self.store.authors_first_seen(authors)

    def first_peer_acceptance(self, own: bytes) -> int | None:
        return self.store.first_peer_acceptance(own)

    def get(self, record_id: bytes) -> Row | None:
        return self.store.get(record_id)
