"""Where a query's time goes, in process on a real node data dir, and whether any part grows
with the store.

    python benchmarks/query_path.py [--sizes 20000 100000] [--authors own 64] [--queries 300]

Data dirs: benchmarks/selection_clean.py's (.bench-cache/nodes/<size>-<own|64>): "own" is a
node whose every lesson carries its own identity and that knows no peer (the bootstrap check
runs on every query), "64" a node holding 64 other authors' lessons (peers). A real Node
(no network started) answers the 443 eg queries with ``Node.query`` (k = 10), the query text
encoded as the API would; each stage is timed by wrapping the method the node calls:
encoding, replica search, SQLite candidate rows, standing (authors' first acceptance),
cluster sizes, robust selection, decoding the selected records. Per query also: SQL
statements run and SQLite VM steps (progress handler, thousands), the measure of store work
that does not depend on this machine's speed.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import trio

from zoonode.config import load_config
from zoonode.native.encoder import Encoder
from zoonode.node import Node
from zoonode.node import query as query_room

from common import table, write_json
from datasets import load as load_queries
from selection_clean import NODES


def timed(bucket: list[float], fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            bucket.append((time.perf_counter() - t) * 1000)

    return run


def profile(path: Path, enc: Encoder, queries: list[str]) -> dict:
    work = Path(tempfile.mkdtemp(prefix="zoo-qpath-")) / "node"
    shutil.copytree(path, work)  # the node writes (identity, snapshots): keep the cache clean
    try:
        cfg = load_config(
            env={}, overrides={"node": {"data_dir": str(work)}, "api": {"listen": ""}}
        )
        node = Node(cfg, encoder=enc)
        stages: dict[str, list[float]] = defaultdict(list)
        kb, store = node.kb, node.kb.store
        node.encoder.encode_compact = timed(stages["encode"], node.encoder.encode_compact)
        kb.replica.search = timed(stages["replica search"], kb.replica.search)
        store.rows_with_vectors = timed(stages["candidate rows"], store.rows_with_vectors)
        kb.authors_first_seen = timed(stages["standing"], kb.authors_first_seen)
        store.cluster_sizes = timed(stages["cluster sizes"], store.cluster_sizes)
        kb.first_peer_acceptance = timed(stages["first peer"], kb.first_peer_acceptance)
        query_room.select = timed(stages["select"], query_room.select)
        query_room.decode = timed(stages["decode selected"], query_room.decode)
        steps, statements, total = [0], [0], []

        def step() -> int:
            steps[0] += 1
            return 0

        def count(_sql: str) -> None:
            statements[0] += 1

        async def run() -> None:
            for q in queries[:10]:
                await node.query(text=q, k=10)
            for values in stages.values():
                values.clear()
            store.db.set_progress_handler(step, 1000)
            store.db.set_trace_callback(count)
            for q in queries:
                t = time.perf_counter()
                await node.query(text=q, k=10)
                total.append((time.perf_counter() - t) * 1000)

        trio.run(run)
        store.db.set_progress_handler(None, 0)
        store.db.set_trace_callback(None)
        n = len(queries)
        row = {"query p50 ms": float(np.median(total))}
        for name, values in stages.items():
            row[f"{name} ms/query"] = float(np.sum(values) / n)
        row["SQL statements/query"] = statements[0] / n
        row["SQLite kVM steps/query"] = steps[0] / n
        node.kb.close()
        return row
    finally:
        shutil.rmtree(work.parent, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--authors", nargs="+", default=["own", "64"], choices=["own", "64"])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--name", default="query-path")
    args = parser.parse_args()
    enc = Encoder.default()
    queries = load_queries().queries[: args.queries]
    rows = []
    for size in args.sizes:
        for mode in args.authors:
            path = NODES / f"{size}-{mode}"
            if not (path / "filled").exists():
                raise SystemExit(f"{path} missing: run selection_clean.py --size {size} first")
            row = {"lessons": size, "authors": mode, **profile(path, enc, queries)}
            rows.append(row)
            print(table([row], list(row)), flush=True)
    print(table(rows, list(rows[0])))
    path = write_json(args.name, {"rows": rows, "queries": len(queries), "k": 10})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
