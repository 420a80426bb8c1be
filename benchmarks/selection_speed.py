"""How fast is robust selection? The geometric median and the whole ``select`` on real vectors.

    python benchmarks/selection_speed.py [--repeats 50]

Real text (the first cheat 2.5.1 tips of benchmarks/datasets.py) embedded by the shipped
encoder. The geometric median runs over 200 x 7680 canonical vectors (the issue's budget:
10 ms) and over the same 200 as 384-d compact coordinates, which is what the node uses: the
head is orthonormal, so distances are the same. ``select`` runs as the node runs it: 150 and
200 candidates in compact coordinates, one query, every candidate above the floor, 40
authors, clusters from the store's rule (budget: 20 ms). Medians over ``--repeats`` calls.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from zoonode.native.encoder import Encoder
from zoonode.selection import Candidate, SelectionSettings, geometric_median, select

from common import table, write_json
from datasets import load

POINTS = 200


def median_ms(fn, repeats: int) -> tuple[float, float]:
    """Median and worst wall time of ``fn`` in ms, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), max(times)


def candidates(query: np.ndarray, compact: np.ndarray, n: int) -> list[Candidate]:
    sims = compact @ query
    order = np.argsort(-sims)[:n]
    reps: list[int] = []
    cluster: dict[int, int] = {}
    for i in order:
        match = [r for r in reps if float(compact[r] @ compact[i]) >= 0.9]
        cluster[int(i)] = match[0] if match else int(i)
        if not match:
            reps.append(int(i))
    return [
        Candidate(
            bytes([i % 256, i // 256]),
            compact[i],
            float(sims[i]),
            bytes([i % 40]) * 32,
            cluster[int(i)],
            0.8,
            1.0 if i % 3 else 0.4,
        )
        for i in order
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()

    texts = load().corpus[:POINTS]
    encoder = Encoder.default()
    compact = encoder.encode_compact(texts)
    full = encoder.encode(texts)
    query = compact[0]
    rows = []
    for name, points in (("200 x 7680, float32", full), ("200 x 384 compact", compact)):
        result = geometric_median(points)
        p50, worst = median_ms(lambda p=points: geometric_median(p), args.repeats)
        rows.append(
            {
                "operation": f"geometric median, {name}",
                "p50 ms": p50,
                "max ms": worst,
                "iterations": result.iterations,
                "budget ms": 10,
            }
        )
    settings = SelectionSettings(k=5, min_similarity=-1.0, newcomer_weight=0.2)
    for n in (150, 200):
        cands = candidates(query, compact, n)
        p50, worst = median_ms(lambda c=cands: select(query, c, settings), args.repeats)
        rows.append(
            {
                "operation": f"select, {n} candidates",
                "p50 ms": p50,
                "max ms": worst,
                "iterations": select(query, cands, settings).iterations,
                "budget ms": 20,
            }
        )
    print(table(rows, ["operation", "p50 ms", "max ms", "iterations", "budget ms"]))
    path = write_json(
        "selection-speed", {"rows": rows, "settings": {"repeats": args.repeats, "points": POINTS}}
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
