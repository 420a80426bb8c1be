"""The local HNSW replica (hnswlib): derived from the store, rebuildable, snapshotted.

It indexes *compact* coordinates (the head's 384-d basis), not the 7680-d vectors: the head is
orthonormal, so inner products, and hence the ranking, are the canonical 7680-d ones exactly,
while memory drops from ~31 KB to ~1.7 KB per experience (notes/ann-and-codes.md,
benchmarks/replica.py). Labels are the store's ``seq``.

Crash safety: a snapshot is written to a temporary file, fsynced and renamed, with the highest
seq it contains beside it; after a crash the node loads the last snapshot and replays
``store.vectors_since(seq)``, so the replica never misses an acknowledged record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import hnswlib
import numpy as np

INDEX_FILE = "replica.hnsw"
META_FILE = "replica.json"


class Replica:
    def __init__(
        self,
        dim: int,
        *,
        m: int = 16,
        ef_construction: int = 200,
        ef_search: int = 128,
        capacity: int = 1024,
        threads: int = 2,
        init: bool = True,  # False: load_index() follows and allocates the index
    ) -> None:
        self.dim, self.m, self.ef_construction = dim, m, ef_construction
        self.ef_search = ef_search
        self.index = hnswlib.Index(space="ip", dim=dim)
        if init:
            self.index.init_index(
                max_elements=max(capacity, 16),
                M=m,
                ef_construction=ef_construction,
                allow_replace_deleted=False,
            )
            self.index.set_ef(ef_search)
        self.index.set_num_threads(threads)
        self.snapshot_seq = 0
        self.max_seq = 0

    def __len__(self) -> int:
        return self.index.get_current_count()

    def add(self, seqs: np.ndarray, vectors: np.ndarray) -> None:
        if len(seqs) == 0:
            return
        needed = len(self) + len(seqs)
        if needed > self.index.get_max_elements():
            self.index.resize_index(max(needed, int(self.index.get_max_elements() * 1.5)))
        self.index.add_items(np.asarray(vectors, np.float32), np.asarray(seqs, np.int64))
        self.max_seq = max(self.max_seq, int(np.max(seqs)))

    def contains(self, seq: int) -> bool:
        try:
            self.index.get_items([seq])
        except RuntimeError:
            return False
        return True

    def search(
        self, query: np.ndarray, k: int, ef: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(seqs, inner products), best first. ``ef`` >= k is raised automatically."""
        n = len(self)
        if n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        k = min(k, n)
        self.index.set_ef(max(ef or self.ef_search, k))
        labels, distances = self.index.knn_query(np.asarray(query, np.float32)[None, :], k=k)
        return labels[0].astype(np.int64), (1.0 - distances[0]).astype(np.float32)

    def search_many(
        self, queries: np.ndarray, k: int, ef: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One knn_query for many vectors (hnswlib spreads it over its threads)."""
        n = len(self)
        if n == 0 or len(queries) == 0:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        k = min(k, n)
        self.index.set_ef(max(ef or self.ef_search, k))
        labels, distances = self.index.knn_query(np.asarray(queries, np.float32), k=k)
        return labels.astype(np.int64), (1.0 - distances).astype(np.float32)

    # -- snapshots ----------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / (INDEX_FILE + ".tmp")
        self.index.save_index(str(tmp))
        _fsync(tmp)
        os.replace(tmp, directory / INDEX_FILE)
        meta = {"seq": self.max_seq, "dim": self.dim, "m": self.m, "count": len(self)}
        tmp_meta = directory / (META_FILE + ".tmp")
        tmp_meta.write_text(json.dumps(meta))
        _fsync(tmp_meta)
        os.replace(tmp_meta, directory / META_FILE)
        self.snapshot_seq = self.max_seq

    @classmethod
    def load(cls, directory: Path, dim: int, **kwargs: int) -> Replica:
        """The last snapshot, or an empty replica if there is none or it is unusable."""
        try:
            meta = json.loads((directory / META_FILE).read_text())
            if meta["dim"] != dim:
                return cls(dim, **kwargs)
            replica = cls(dim, init=False, **kwargs)
            replica.index.load_index(
                str(directory / INDEX_FILE), max_elements=max(meta["count"] + 1024, 16)
            )
        except (OSError, ValueError, KeyError, RuntimeError):
            return cls(dim, **kwargs)
        replica.index.set_ef(replica.ef_search)
        replica.snapshot_seq = replica.max_seq = int(meta["seq"])
        return replica


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
