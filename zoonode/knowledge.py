"""What a node knows: the durable store plus its HNSW replica, kept consistent.

Write path: verified records with their exact compact vectors -> near-duplicate cluster
lookup -> one store transaction (durable: the acknowledgement) -> replica -> eviction.
Read path: replica candidates -> store rows with their exact vectors -> rerank by exact
inner product (the default replica's int8 scores are approximate) -> status and filters ->
at most ``per_cluster`` hits per near-duplicate cluster -> top k. A caller may weigh rows
(the node weighs them by their author's standing) to choose which members speak for a
cluster and which clusters fill the k.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zoonode.protocol import Op
from zoonode.replica import Replica, SnapshotError
from zoonode.store import Incoming, InsertResult, Outcome, Row, Status, StorageFull, Store

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

Weigh = Callable[[list[Row]], np.ndarray]


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
        if self.domain and not (
            row.domain == self.domain or row.domain.startswith(self.domain + ".")
        ):
            return False
        if self.author is not None and row.author != self.author:
            return False
        if self.min_confidence is not None and row.confidence < self.min_confidence:
            return False
        if self.created_after is not None and row.created_at < self.created_after:
            return False
        return self.created_before is None or row.created_at < self.created_before

    @property
    def empty(self) -> bool:
        return self == Filters()


@dataclass(frozen=True)
class Hit:
    row: Row
    score: float  # exact inner product with the query (cosine: both unit vectors)
    cluster_size: int
    vector: np.ndarray = field(repr=False)


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
        """Bring the replica up to the store: add every lesson accepted after the snapshot,
        then check that it holds every active lesson and add any it lacks."""
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
        self.replica.save(self.directory)
        return total

    def close(self) -> None:
        """Snapshot the replica if it grew (skipped, with a warning, on a full disk: the next
        start replays the store), then close the store."""
        if self.replica.max_seq > self.replica.snapshot_seq:
            self._snapshot()
        self.store.close()

    def _snapshot(self) -> None:
        try:
            self.replica.save(self.directory)
        except SnapshotError as exc:
            log.warning(
                "%s; the next start replays the store after seq %d", exc, self.replica.snapshot_seq
            )

    # -- writes -------------------------------------------------------------------------------
    def ingest(self, items: Sequence[Incoming]) -> list[InsertResult]:
        """Store a batch durably, then index it. Returns one result per item, in order."""
        # The same id twice in one batch: the first copy is the one stored and indexed.
        first = {it.record.id: i for i, it in reversed(list(enumerate(items)))}
        fresh = [
            it
            for i, it in enumerate(items)
            if first[it.record.id] == i and not self.store.has(it.record.id)
        ]
        hinted = self._with_cluster_hints(fresh)
        by_id = {r.id: r for r in self.store.insert(hinted)}
        accepted = [
            it
            for it in hinted
            if by_id[it.record.id].outcome is Outcome.ACCEPTED and it.vector is not None
        ]
        if accepted:
            self.replica.add(
                np.array([by_id[it.record.id].seq for it in accepted]),
                np.stack([it.vector for it in accepted]),
            )
        self._evict()
        new = self.replica.max_seq - self.replica.snapshot_seq
        if snapshot_due(new, len(self.replica), self.snapshot_every):
            self._snapshot()
        results = []
        for i, it in enumerate(items):
            res = by_id.get(it.record.id) if first[it.record.id] == i else None
            if res is None:  # already known before this batch, or a repeat within it
                row = self.store.get(it.record.id)
                res = InsertResult(it.record.id, Outcome.DUPLICATE, row.seq if row else None)
            results.append(res)
        return results

    def _with_cluster_hints(self, items: list[Incoming]) -> list[Incoming]:
        """Link each lesson to an active near-duplicate (cos >= threshold), in the replica or
        earlier in the same batch, so queries and selection count the cluster once. One
        batched replica query and one store read for the whole batch."""
        lessons = [
            i
            for i, it in enumerate(items)
            if it.vector is not None and it.record.experience.op is not Op.REVOKE
        ]
        stored = (
            self._nearest_active_clusters(np.stack([items[i].vector for i in lessons]))
            if lessons
            else []
        )
        hints: dict[int, int | bytes | None] = dict(zip(lessons, stored, strict=True))
        # Within the batch: one Gram matrix; a lesson links to the most similar *earlier* one.
        if lessons:
            matrix = np.stack([items[i].vector for i in lessons])
            gram = matrix @ matrix.T
            gram[np.triu_indices(len(lessons))] = -np.inf  # only earlier lessons count
            nearest = np.argmax(gram, axis=1)
        position = {i: p for p, i in enumerate(lessons)}
        out: list[Incoming] = []
        for i, it in enumerate(items):
            if i not in hints:
                out.append(it)
                continue
            hint, p = hints[i], position[i]
            if hint is None and p > 0 and gram[p, nearest[p]] >= self.duplicate_cosine:
                hint = items[lessons[nearest[p]]].record.id
            out.append(Incoming(it.record, it.vector, it.peer, hint))
        return out

    def _nearest_active_clusters(self, vectors: np.ndarray) -> list[int | None]:
        """For each vector, the cluster of an active stored record with cos >= threshold."""
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
    ) -> list[Hit]:
        """Top ``k`` active lessons by exact cosine, at most ``per_cluster`` (the best) per
        near-duplicate cluster (``dedupe``; all of them otherwise).

        ``weigh`` maps rows to factors in [0, 1]: the order is then by cosine x factor, so a
        low-weight row neither speaks for a cluster a higher-weight member also matches nor
        pushes such a cluster out of the k. Hit scores stay the exact cosine."""
        filters = filters or Filters()
        query = np.asarray(query, np.float32)
        # A quarter more than asked covers filtered-out and same-cluster hits in the common
        # case; the loop below widens the search when it does not.
        fetch = max(candidates or 0, k + max(k // 4, 16), RERANK_CANDIDATES)
        while True:
            seqs, _approximate = self.replica.search(query, k=fetch)
            hits = self._keep(seqs, query, filters, dedupe, k, weigh, per_cluster)
            exhausted = len(seqs) < fetch
            if len(hits) >= k or exhausted:
                return (
                    hits[:k]
                    if len(hits) >= k or filters.empty
                    else self._exact(query, k, filters, dedupe, weigh, per_cluster)
                )
            if fetch >= 4096:
                return self._exact(query, k, filters, dedupe, weigh, per_cluster)
            fetch *= 4

    def _keep(
        self,
        seqs: np.ndarray,
        query: np.ndarray,
        filters: Filters,
        dedupe: bool,
        limit: int | None = None,
        weigh: Weigh | None = None,
        per_cluster: int = 1,
    ) -> list[Hit]:
        """The best ``limit`` active, matching candidates by exact inner product, at most
        ``per_cluster`` per cluster, with their vectors."""
        rows = self.store.rows_with_vectors(list(seqs))
        found = [rows[int(s)] for s in seqs if int(s) in rows]  # evicted ones are gone
        if not found:
            return []
        sims = np.stack([vector for _, vector in found]) @ query
        rank = sims if weigh is None else sims * weigh([row for row, _ in found])
        members: dict[int, int] = {}
        kept: list[tuple[int, Row, float, np.ndarray]] = []
        for i in np.argsort(-rank, kind="stable"):
            row, vector = found[i]
            if row.status is not Status.ACTIVE or not filters.match(row):
                continue
            group = row.cluster if dedupe and row.cluster is not None else -row.seq
            if members.get(group, 0) < per_cluster:
                members[group] = members.get(group, 0) + 1
                kept.append((group, row, float(sims[i]), vector))
                if limit is not None and len(kept) >= limit:
                    break
        sizes = self.store.cluster_sizes([g for g in members if g > 0]) if dedupe else {}
        return [Hit(row, sim, sizes.get(g, 1), vector) for g, row, sim, vector in kept]

    def _exact(
        self,
        query: np.ndarray,
        k: int,
        filters: Filters,
        dedupe: bool,
        weigh: Weigh | None = None,
        per_cluster: int = 1,
    ) -> list[Hit]:
        """Brute force over the rows that match a selective filter."""
        where, params = filters.sql()
        seqs, vectors = self.store.filtered_vectors(where, params)
        if len(seqs) == 0:
            return []
        order = np.argsort(-(vectors @ query), kind="stable")
        return self._keep(seqs[order], query, filters, dedupe, k, weigh, per_cluster)

    def authors_first_seen(self, authors: Iterable[bytes]) -> dict[bytes, int]:
        return self.store.authors_first_seen(authors)

    def first_peer_acceptance(self, own: bytes) -> int | None:
        return self.store.first_peer_acceptance(own)

    def get(self, record_id: bytes) -> Row | None:
        return self.store.get(record_id)
