"""The local replica (HNSW by default): derived from the store, rebuildable, snapshotted.

It indexes *compact* coordinates (the head's 384-d basis), not the 7680-d vectors: the head is
orthonormal, so inner products, and hence the ranking, are the canonical 7680-d ones exactly.
Labels are the store's ``seq``.

Three indexes, chosen by ``store.replica_backend`` (measured side by side in README):

- ``usearch-i8`` (default): usearch with 1-byte coordinates, 0.6 KB per experience, ~1.8x
  hnswlib's insertion rate near 1M records. Its scores are approximate (|error| ~0.003), so
  the knowledge base reranks every candidate with the exact float vectors the store returns
  with the rows, and checks near-duplicates against them.
- ``hnswlib``: float32 coordinates (the design card's library), exact scores, 1.8 KB per
  experience; cannot add 1000 vectors/s near 1M records on 2 cores.
- ``faiss-ivf``: not a graph but an inverted file of 8-bit vectors (faiss IVF-SQ8). Adding a
  vector costs one search among ``store.ivf_lists`` centroids however large the index is, so
  insertion does not slow down near 1M records as HNSW's does; search probes ``ef // 4`` lists
  and its scores are approximate (reranked like usearch's). Exact flat search until 64
  records per list have arrived, which then train the lists.

Crash safety: a snapshot is written to a temporary file, fsynced and renamed, with the highest
seq it contains beside it; after a crash the node loads the last snapshot and replays
``store.vectors_since(seq)``, so the replica never misses an acknowledged record. Keys are
replaced (a pending record promoted to its exact vector) or removed (a record that failed the
embedding check) after insertion too; the store journals those changes, the snapshot names the
last journal entry it includes, and load replays the entries after it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

META_FILE = "replica.json"
BACKENDS = ("usearch-i8", "hnswlib", "faiss-ivf")
INDEX_FILES = {
    "usearch-i8": "replica.usearch",
    "hnswlib": "replica.hnsw",
    "faiss-ivf": "replica.faiss",
}
# faiss-ivf: records per list before training (faiss asks for at least 39), and the share of
# lists a search probes: ef // PROBE_DIVISOR (ef 1024 probes 256 of 1024 lists).
IVF_TRAIN_PER_LIST = 64
PROBE_DIVISOR = 4
# Snapshots written before the backend was recorded are hnswlib's.
_LEGACY_BACKEND = "hnswlib"


class SnapshotError(OSError):
    """A replica snapshot could not be written (e.g. a full disk); none was left half-done."""


class _Index(Protocol):
    """What the replica needs from an HNSW library."""

    exact_scores: bool

    def __len__(self) -> int: ...
    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None: ...
    def replace(self, keys: np.ndarray, vectors: np.ndarray) -> None: ...
    def remove(self, keys: np.ndarray) -> None: ...
    def contains(self, key: int) -> bool: ...
    def contains_many(self, keys: np.ndarray) -> np.ndarray: ...
    def search(self, queries: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]: ...
    def save(self, path: Path) -> None: ...


class _Hnswlib:
    exact_scores = True

    def __init__(self, dim: int, m: int, ef_construction: int, threads: int) -> None:
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=dim)
        self.index.init_index(max_elements=1024, M=m, ef_construction=ef_construction)
        self.index.set_num_threads(threads)

    @classmethod
    def load(cls, path: Path, dim: int, count: int, threads: int) -> _Hnswlib:
        import hnswlib

        self = cls.__new__(cls)
        self.index = hnswlib.Index(space="ip", dim=dim)
        self.index.load_index(str(path), max_elements=max(count + 1024, 16))
        self.index.set_num_threads(threads)
        return self

    def __len__(self) -> int:
        return self.index.get_current_count()

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        needed = len(self) + len(keys)
        if needed > self.index.get_max_elements():
            self.index.resize_index(max(needed, int(self.index.get_max_elements() * 1.5)))
        self.index.add_items(vectors, keys)  # a known label is replaced: replay is idempotent

    def replace(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        self.add(keys, vectors)  # updates a known label in place (and undeletes it)

    def remove(self, keys: np.ndarray) -> None:
        for key in keys:
            with contextlib.suppress(RuntimeError):  # not held, or already deleted
                self.index.mark_deleted(int(key))

    def contains(self, key: int) -> bool:
        try:
            self.index.get_items([key])
        except RuntimeError:
            return False
        return True

    def contains_many(self, keys: np.ndarray) -> np.ndarray:
        return np.isin(keys, np.asarray(self.index.get_ids_list(), np.int64))

    def search(self, queries: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        """hnswlib answers all k or raises ("Cannot return the results in a contiguous 2D
        array"): a graph walk can reach fewer than k labels, e.g. among thousands of near
        duplicates. Then ask again for half as many, until it answers; the rest is padded
        with label -1 and score -inf, as the other indexes do."""
        self.index.set_ef(ef)
        want = k
        while True:
            try:
                labels, distances = self.index.knn_query(queries, k=want)
                break
            except RuntimeError:
                if want == 1:
                    return np.full((len(queries), k), -1, np.int64), np.full(
                        (len(queries), k), -np.inf, np.float32
                    )
                want = max(1, want // 2)
        keys = np.full((len(queries), k), -1, np.int64)
        sims = np.full((len(queries), k), -np.inf, np.float32)
        keys[:, :want] = labels
        sims[:, :want] = 1.0 - distances
        return keys, sims

    def save(self, path: Path) -> None:
        # hnswlib writes through an unchecked std::ofstream: on a full disk it "succeeds" with
        # a truncated file. Its own count of the bytes it meant to write tells.
        self.index.save_index(str(path))
        written, expected = path.stat().st_size, self.index.index_file_size()
        if written != expected:
            raise OSError(errno.ENOSPC, f"hnswlib wrote {written} of {expected} bytes", str(path))


def _onnxruntime_first() -> None:
    """Import onnxruntime (where installed) before usearch: onnxruntime 1.32 crashes the
    process (SIGSEGV in its import) when usearch 2.26 was imported first, and the encoder
    (``encoder.runtime = "onnx"``) may load after a replica, e.g. a script that opens a
    knowledge base and then an encoder. Imported in the other order, both work."""
    with contextlib.suppress(ImportError):
        import onnxruntime  # noqa: F401


class _UsearchI8:
    exact_scores = False

    def __init__(self, dim: int, m: int, ef_construction: int, threads: int) -> None:
        _onnxruntime_first()
        from usearch.index import Index

        # "cos" on unit vectors is the inner product, scaled back from usearch's int8 units.
        self.index = Index(
            ndim=dim, metric="cos", dtype="i8", connectivity=m, expansion_add=ef_construction
        )
        self.threads = threads

    @classmethod
    def load(cls, path: Path, dim: int, m: int, ef_construction: int, threads: int) -> _UsearchI8:
        self = cls(dim, m, ef_construction, threads)
        self.index.load(str(path))
        if self.index.ndim != dim:
            raise ValueError(f"snapshot has {self.index.ndim} dimensions, expected {dim}")
        self.index.expansion_add = ef_construction  # not kept in the file
        return self

    def __len__(self) -> int:
        return len(self.index)

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        fresh = ~self.contains_many(keys)  # replay may repeat a few keys
        if fresh.any():
            # One thread: usearch's concurrent add() can leave a node stored but unreachable
            # by any search (unum-cloud/USearch#735, open in 2.26). With 2 threads here, 5 of
            # 40 kill -9 runs of tests/test_store.py left records unsearchable; with 1, none.
            self.index.add(keys[fresh], vectors[fresh], threads=1)

    def replace(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        self.index.remove(keys)  # a removed key may be added again
        self.index.add(keys, vectors, threads=1)  # one thread: see add()

    def remove(self, keys: np.ndarray) -> None:
        self.index.remove(keys)  # keys not held are skipped

    def contains(self, key: int) -> bool:
        return bool(self.index.contains(key))

    def contains_many(self, keys: np.ndarray) -> np.ndarray:
        if len(keys) == 0:
            return np.zeros(0, bool)
        return np.asarray(self.index.contains(keys), bool).reshape(len(keys))

    def search(self, queries: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        self.index.expansion_search = ef
        found = self.index.search(queries, k, threads=self.threads)
        keys = np.full((len(queries), k), -1, np.int64)  # -1: fewer than k reachable
        sims = np.full((len(queries), k), -np.inf, np.float32)
        # One query answers Matches (only what was found), several BatchMatches (+ counts).
        counts = getattr(found, "counts", [len(found.keys)])
        got = np.asarray(found.keys).reshape(len(queries), -1)
        dist = np.asarray(found.distances).reshape(len(queries), -1)
        for row, count in enumerate(counts):
            keys[row, :count], sims[row, :count] = got[row, :count], 1.0 - dist[row, :count]
        return keys, sims

    def save(self, path: Path) -> None:
        self.index.save(str(path))


class _FaissIvf:
    exact_scores = False

    def __init__(self, dim: int, lists: int, threads: int, index: object | None = None) -> None:
        import faiss

        faiss.omp_set_num_threads(threads)
        self.dim, self.lists = dim, lists
        # Until trained: exact inner products over the vectors held so far.
        self.index = index if index is not None else faiss.IndexIDMap(faiss.IndexFlatIP(dim))
        self.seen = np.zeros(1024, bool)  # by key (the store's seq): what replay may repeat
        held = self._keys()
        if len(held):
            self._mark(held)

    @property
    def trained(self) -> bool:
        import faiss

        return isinstance(self.index, faiss.IndexIVF)

    @classmethod
    def load(cls, path: Path, dim: int, lists: int, threads: int) -> _FaissIvf:
        import faiss

        index = faiss.read_index(str(path))
        if index.d != dim:
            raise ValueError(f"snapshot has {index.d} dimensions, expected {dim}")
        if isinstance(index, faiss.IndexIVF) and index.nlist != lists:
            raise ValueError(f"snapshot has {index.nlist} lists, store.ivf_lists is {lists}")
        return cls(dim, lists, threads, index)

    def _keys(self) -> np.ndarray:
        import faiss

        if not self.trained:
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        inv = self.index.invlists
        parts = [
            faiss.rev_swig_ptr(inv.get_ids(i), inv.list_size(i)).copy()
            for i in range(self.index.nlist)
            if inv.list_size(i)
        ]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def _mark(self, keys: np.ndarray) -> None:
        top = int(np.max(keys)) + 1
        if top > len(self.seen):
            grown = np.zeros(max(top, 2 * len(self.seen)), bool)
            grown[: len(self.seen)] = self.seen
            self.seen = grown
        self.seen[keys] = True

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        known = np.zeros(len(keys), bool)
        inside = keys < len(self.seen)
        known[inside] = self.seen[keys[inside]]
        keys, vectors = keys[~known], vectors[~known]
        if len(keys) == 0:
            return
        self.index.add_with_ids(np.ascontiguousarray(vectors), keys)
        self._mark(keys)
        if not self.trained and len(self) >= IVF_TRAIN_PER_LIST * self.lists:
            self._train()

    def replace(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        self.remove(keys)
        self.index.add_with_ids(np.ascontiguousarray(vectors), keys)
        self._mark(keys)

    def remove(self, keys: np.ndarray) -> None:
        """One pass over the lists for the whole batch (faiss keeps no id -> list map here):
        ~3 ms at 100k records, so callers remove in batches."""
        import faiss

        self.index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(keys, np.int64)))

    def _train(self) -> None:
        """Move the flat vectors into lists trained on them (a few seconds, once)."""
        import faiss

        flat = faiss.downcast_index(self.index.index)
        vectors = flat.reconstruct_n(0, flat.ntotal)
        keys = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        ivf = faiss.IndexIVFScalarQuantizer(
            faiss.IndexFlatIP(self.dim),
            self.dim,
            self.lists,
            faiss.ScalarQuantizer.QT_8bit,
            faiss.METRIC_INNER_PRODUCT,
        )
        ivf.train(vectors)
        ivf.add_with_ids(vectors, keys)
        self.index = ivf

    def contains(self, key: int) -> bool:
        return 0 <= key < len(self.seen) and bool(self.seen[key])

    def contains_many(self, keys: np.ndarray) -> np.ndarray:
        inside = (keys >= 0) & (keys < len(self.seen))
        out = np.zeros(len(keys), bool)
        out[inside] = self.seen[keys[inside]]
        return out

    def search(self, queries: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        if self.trained:
            self.index.nprobe = max(1, min(self.lists, ef // PROBE_DIVISOR))
            # One query: its lists are scanned on every thread (p50 at 1M: 22 -> 12 ms);
            # a batch: one query per thread, as faiss does by default.
            self.index.parallel_mode = 1 if len(queries) == 1 else 0
        sims, keys = self.index.search(np.ascontiguousarray(queries), k)
        sims[keys < 0] = -np.inf  # fewer than k found
        return keys.astype(np.int64), sims.astype(np.float32)

    def save(self, path: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))


class Replica:
    def __init__(
        self,
        dim: int,
        *,
        backend: str = "usearch-i8",
        m: int = 16,
        ef_construction: int = 200,
        ef_search: int = 128,
        threads: int = 2,
        lists: int = 1024,
        _index: _Index | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown replica backend {backend!r}; choose one of {BACKENDS}")
        if lists < 1:
            raise ValueError(f"the IVF needs at least one list, got {lists}")
        self.dim, self.backend, self.m, self.lists = dim, backend, m, lists
        self.ef_construction, self.ef_search, self.threads = ef_construction, ef_search, threads
        if _index is not None:
            self.index: _Index = _index
        elif backend == "hnswlib":
            self.index = _Hnswlib(dim, m, ef_construction, threads)
        elif backend == "faiss-ivf":
            self.index = _FaissIvf(dim, lists, threads)
        else:
            self.index = _UsearchI8(dim, m, ef_construction, threads)
        self.snapshot_seq = 0
        self.max_seq = 0
        self.snapshot_journal = 0  # store journal serial the last snapshot includes

    @property
    def exact_scores(self) -> bool:
        """False: search scores are approximate and callers rerank with the exact vectors."""
        return self.index.exact_scores

    def __len__(self) -> int:
        return len(self.index)

    def add(self, seqs: np.ndarray, vectors: np.ndarray) -> None:
        if len(seqs) == 0:
            return
        self.index.add(np.asarray(seqs, np.int64), np.asarray(vectors, np.float32))
        self.max_seq = max(self.max_seq, int(np.max(seqs)))

    def replace(self, seqs: np.ndarray, vectors: np.ndarray) -> None:
        """Give held keys new vectors (a pending record's code-implied vector replaced by its
        text's exact one); keys not held are added."""
        if len(seqs) == 0:
            return
        self.index.replace(np.asarray(seqs, np.int64), np.asarray(vectors, np.float32))
        self.max_seq = max(self.max_seq, int(np.max(seqs)))

    def remove(self, seqs: np.ndarray) -> None:
        """Drop keys (a record that failed the embedding check); keys not held are skipped."""
        if len(seqs) == 0:
            return
        self.index.remove(np.asarray(seqs, np.int64))

    def contains(self, seq: int) -> bool:
        return self.index.contains(int(seq))

    def missing(self, seqs: np.ndarray) -> np.ndarray:
        """The seqs of ``seqs`` that the index does not hold."""
        seqs = np.asarray(seqs, np.int64)
        return seqs[~self.index.contains_many(seqs)]

    def search(
        self, query: np.ndarray, k: int, ef: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(seqs, inner products), best first. ``ef`` >= k is raised automatically."""
        seqs, sims = self.search_many(np.asarray(query, np.float32)[None, :], k, ef)
        keep = seqs[0] >= 0
        return seqs[0][keep], sims[0][keep]

    def search_many(
        self, queries: np.ndarray, k: int, ef: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One search for many vectors, spread over the library's threads. Rows are padded
        with seq -1 and score -inf where fewer than ``k`` were found."""
        n = len(self)
        if n == 0 or len(queries) == 0:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        k = min(k, n)
        return self.index.search(np.asarray(queries, np.float32), k, max(ef or self.ef_search, k))

    # -- snapshots ----------------------------------------------------------------------------
    def save(self, directory: Path, journal: int | None = None) -> None:
        """Write a snapshot: the index, then its meta (the seq it holds and ``journal``, the
        last serial of the store's replica journal, replacements and removals, that it
        includes; replayed after it on load), each to a temporary file that is fsynced and
        renamed. A meta never names a seq its index lacks.

        Raises SnapshotError, with no temporary file left, if the disk refuses (full disk):
        the previous snapshot stays, and a restart replays the store after it."""
        name = INDEX_FILES[self.backend]
        tmp = directory / (name + ".tmp")
        tmp_meta = directory / (META_FILE + ".tmp")
        meta = {
            "seq": self.max_seq,
            "dim": self.dim,
            "m": self.m,
            "count": len(self),
            "backend": self.backend,
            "journal": self.snapshot_journal if journal is None else journal,
        }
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self.index.save(tmp)
            _fsync(tmp)
            os.replace(tmp, directory / name)
            tmp_meta.write_text(json.dumps(meta))
            _fsync(tmp_meta)
            os.replace(tmp_meta, directory / META_FILE)
        except (OSError, RuntimeError) as exc:  # usearch and faiss raise RuntimeError
            for path in (tmp, tmp_meta):
                path.unlink(missing_ok=True)
            raise SnapshotError(f"replica snapshot not written to {directory}: {exc}") from exc
        self.snapshot_seq = self.max_seq
        self.snapshot_journal = meta["journal"]
        for other, stale in INDEX_FILES.items():  # a snapshot of the other backend is dead
            if other != self.backend:
                (directory / stale).unlink(missing_ok=True)

    @classmethod
    def load(
        cls, directory: Path, dim: int, *, backend: str = "usearch-i8", **settings: int
    ) -> Replica:
        """The last snapshot, or an empty replica (the caller replays the store into it) if
        there is none, it is unusable, or it was written by another backend. ``settings``
        are ``__init__``'s."""
        empty = cls(dim, backend=backend, **settings)  # also validates backend and settings
        try:
            meta = json.loads((directory / META_FILE).read_text())
            written_by = meta.get("backend", _LEGACY_BACKEND)
            if meta["dim"] != dim or written_by != backend:
                log.info("replica: snapshot by %s, %d-d: rebuilding", written_by, meta["dim"])
                return empty
            path = directory / INDEX_FILES[backend]
            if backend == "hnswlib":
                index: _Index = _Hnswlib.load(path, dim, int(meta["count"]), empty.threads)
            elif backend == "faiss-ivf":
                index = _FaissIvf.load(path, dim, empty.lists, empty.threads)
            else:
                index = _UsearchI8.load(path, dim, empty.m, empty.ef_construction, empty.threads)
        except FileNotFoundError:
            return empty
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.warning("replica: snapshot unusable (%s): rebuilding from the store", exc)
            return empty
        replica = cls(dim, backend=backend, _index=index, **settings)
        replica.snapshot_seq = replica.max_seq = int(meta["seq"])
        replica.snapshot_journal = int(meta.get("journal", 0))
        return replica


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
