"""usearch int8 insertion with 1 vs 2 adding threads, side by side: rate and unreachable nodes.

Why: usearch's concurrent add() can leave a node stored but unreachable by any search
(unum-cloud/USearch#735, open in 2.26); the replica now adds with one thread. This measures
what that costs and what it buys, in one run (runs alternate, medians quoted).

    .venv/bin/python benchmarks/usearch_add_threads.py [--n 50000] [--repeats 3]

Vectors: clustered unit vectors (10 vectors per cluster, noise 0.1), 384-d, the replica's
settings (M 16, ef_construction 200). Batches of 64 (the node's ingest batch) and 4096 (a
replay after restart). "Unreachable": labels that a search with k = ef = n from 8 probes does
not return. Writes benchmarks/results/usearch-add-threads.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from usearch.index import Index

from common import table, write_json


def vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 10), 384))
    v = centres[rng.integers(0, len(centres), n)] + 0.1 * rng.normal(size=(n, 384))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def build(v: np.ndarray, threads: int, batch: int) -> tuple[float, Index]:
    index = Index(ndim=384, metric="cos", dtype="i8", connectivity=16, expansion_add=200)
    keys = np.arange(1, len(v) + 1)
    start = time.perf_counter()
    for i in range(0, len(v), batch):
        index.add(keys[i : i + batch], v[i : i + batch], threads=threads)
    return len(v) / (time.perf_counter() - start), index


def unreachable(index: Index, v: np.ndarray) -> int:
    n = len(v)
    index.expansion_search = n
    found: set[int] = set()
    matches = index.search(v[:: max(1, n // 8)][:8], n, threads=2)
    for row, count in enumerate(matches.counts):
        found |= set(np.asarray(matches.keys[row][:count]).tolist())
    return n - len(found)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for batch in (64, 4096):
        runs: dict[int, list[tuple[float, int]]] = {1: [], 2: []}
        for r in range(args.repeats):
            v = vectors(args.n, seed=r)
            for threads in (1, 2) if r % 2 == 0 else (2, 1):  # alternate: fair on a busy box
                rate, index = build(v, threads, batch)
                runs[threads].append((rate, unreachable(index, v) if args.n <= 50_000 else -1))
        for threads, results in runs.items():
            rows.append(
                {
                    "batch": batch,
                    "threads": threads,
                    "vectors_per_s": statistics.median(r for r, _ in results),
                    "runs_per_s": [round(r) for r, _ in results],
                    "unreachable": [u for _, u in results],
                }
            )
    for batch in (64, 4096):
        one, two = (
            next(r for r in rows if r["batch"] == batch and r["threads"] == t) for t in (1, 2)
        )
        one["vs_2_threads"] = one["vectors_per_s"] / two["vectors_per_s"]
    columns = ["batch", "threads", "vectors_per_s", "vs_2_threads", "runs_per_s", "unreachable"]
    print(table(rows, columns))
    path = write_json(
        "usearch-add-threads",
        {"n": args.n, "repeats": args.repeats, "rows": rows},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
