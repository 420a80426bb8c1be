"""Does the faiss-ivf replica still find near-duplicates at 1M records?

    python benchmarks/ivf_duplicates.py [--size 1000000] [--pairs 1000]

The node links a new lesson to an earlier one at cos >= 0.9 (one cluster, counted once by
selection: the Sybil defence) by searching the replica at ef 32, which on the IVF probes only
8 of 1024 lists. This builds the replica (zoonode.replica.Replica, faiss-ivf) over the real
encoder vectors topped up with replica.py's synthetic ones, makes near-duplicates of real
vectors at a set cosine (the original rotated towards a random orthogonal direction), and
counts how often the original is among the top 4 found, as the store's lookup asks.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from replica import real_vectors, synthetic

from zoonode.native.encoder import Encoder
from zoonode.replica import Replica

from common import table, write_json

COSINES = (0.90, 0.93, 0.96)
WIDTHS = (32, 64)  # the store's lookup width, and twice it


def near_duplicates(v: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(v.shape).astype(np.float32)
    noise -= (noise * v).sum(1, keepdims=True) * v
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return (cos * v + np.sqrt(1 - cos**2) * noise).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--pairs", type=int, default=1000)
    args = parser.parse_args()
    real = real_vectors(Encoder.default())
    extra = synthetic(real, max(0, args.size - len(real)), np.random.default_rng(7))
    x = np.concatenate([real, extra]).astype(np.float32)[: args.size]
    replica = Replica(x.shape[1], backend="faiss-ivf")
    t0 = time.perf_counter()
    for start in range(0, len(x), 65_536):
        replica.add(
            np.arange(start + 1, min(start + 65_536, len(x)) + 1), x[start : start + 65_536]
        )
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(3)
    picks = rng.choice(min(len(real), len(x)), min(args.pairs, len(real)), replace=False)
    rows = []
    for cos in COSINES:
        dups = near_duplicates(x[picks], cos, rng)
        for ef in WIDTHS:
            keys, _ = replica.search_many(dups, k=4, ef=ef)
            found = (keys == (picks + 1)[:, None]).any(axis=1)
            rows.append(
                {"cos": cos, "ef": ef, "lists probed": ef // 4, "original found": found.mean()}
            )
    print(f"\nfaiss-ivf, {len(x)} records ({replica.lists} lists), {len(picks)} near-duplicates")
    print(table(rows, list(rows[0])))
    path = write_json(
        f"ivf-duplicates-{len(x)}",
        {"rows": rows, "build_s": build_s, "lists": replica.lists, "pairs": len(picks)},
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
