"""Queries while the background check drains a backlog, node variants side by side in one
run: the check's encode thread at normal priority (``ingest.check_nice = 0``, as before)
against a niced one (the default), or with ``--compare process`` the check encoding in a
thread against a worker process (``ingest.check_process``), alternating, each on a fresh
copy of the same 100k data dir fed the same records through ``POST /v1/records``. With
``--baseline-ref REF``, the variants are instead the node of git ref REF (a worktree with
its own editable install, as ingest.py's baseline) and this tree's, both with their
defaults.

    python benchmarks/drain_query.py [--size 100000] [--records 8000] [--rounds 2]
        [--baseline-ref REF] [--compare nice|process]

Per run, a real `zoonode start` process: queries on the idle node (the reference), the
records POSTed, then queries one at a time for ``--query-s`` while the backlog drains, then
the drain with no queries for ``--drain-s``. The data and the helpers are ingest.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ingest import (
    ROOT,
    ZOONODE,
    NodeProc,
    base_dir,
    baseline_binary,
    copy_of,
    drain_for,
    honest_records,
    post_all,
    queries_for,
    texts_and_vectors,
)

from zoonode.experiences import now_ms
from zoonode.native.codec import compress_many
from zoonode.native.encoder import Encoder

from common import table, write_json
from datasets import load

VARIANTS = {
    "nice": {
        "check at normal priority (nice 0)": {"ZOONODE_INGEST__CHECK_NICE": "0"},
        "check niced (nice 19, default)": {"ZOONODE_INGEST__CHECK_NICE": "19"},
    },
    "process": {
        "check in a thread (default)": {"ZOONODE_INGEST__CHECK_PROCESS": "false"},
        "check in a worker process": {"ZOONODE_INGEST__CHECK_PROCESS": "true"},
    },
}


def one(
    name: str, binary: str, env: dict, base: Path, work: Path, wires, queries, args, r: int
) -> dict:
    path = copy_of(base, work, f"node-{r}-{len(os.listdir(work))}")
    node = NodeProc(binary, path, **env)
    try:
        row: dict = {"variant": name, "round": r, "load start": os.getloadavg()[0]}
        queries_for(node, queries, 3)  # warm-up
        idle = queries_for(node, queries, args.query_s / 2)
        row["idle query p50 ms"] = idle["query p50 ms"]
        row["stored /s"] = len(wires) / post_all(node, wires)
        q = queries_for(node, queries, args.query_s)
        row |= {
            "draining query p50 ms": q["query p50 ms"],
            "draining query p99 ms": q["query p99 ms"],
            "no-check p50 ms": q["no-check p50 ms"],
            "queries": q["queries"],
            "queries checking": q["queries"] - q["queries with no check"],
            "drain /s under queries": q["drain /s"],
        }
        row["drain /s, no queries"] = drain_for(node, args.drain_s)
        row["load end"] = os.getloadavg()[0]
        return row
    finally:
        node.stop()
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--records", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--query-s", type=float, default=20.0)
    parser.add_argument("--drain-s", type=float, default=10.0)
    parser.add_argument("--name", default="drain-query", help="results/NAME.json")
    parser.add_argument("--baseline-ref", default="", help="compare with this git ref's node")
    parser.add_argument(
        "--compare", choices=sorted(VARIANTS), default="nice", help="this tree's variants"
    )
    args = parser.parse_args()
    enc = Encoder.default()
    texts, vectors = texts_and_vectors(enc, "lessons")
    queries = load().queries
    codes = compress_many(enc.lift(vectors), enc.space_info.v_ref)
    base = base_dir(enc, vectors, args.size)
    keys = [Ed25519PrivateKey.generate() for _ in range(64)]
    start = now_ms() - 3_600_000
    made = honest_records(
        enc, texts, codes, keys, args.records, "drain", start, 3_600_000 // args.records
    )
    wires = [w for w, _ in made]
    del enc
    work = Path(tempfile.mkdtemp(prefix="zoo-drain-"))
    rows: list[dict] = []
    load_start = os.getloadavg()
    variants = {name: (ZOONODE, env) for name, env in VARIANTS[args.compare].items()}
    try:
        if args.baseline_ref:
            ref = subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", args.baseline_ref],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            variants = {f"{ref[:10]} (baseline)": (baseline_binary(ref, work), {})}
            variants["this tree"] = (ZOONODE, {})
        for r in range(args.rounds):
            # Alternate which variant goes first: the box's load drifts within a round.
            for name, (binary, env) in list(variants.items())[:: 1 if r % 2 == 0 else -1]:
                row = one(name, binary, env, base, work, wires, queries, args, r)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        if (work / "baseline").exists():
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / "baseline")],
                check=False,
            )
        shutil.rmtree(work, ignore_errors=True)
    summary = []
    for name in variants:
        mine = [row for row in rows if row["variant"] == name]
        summary.append(
            {"variant": name}
            | {
                key: statistics.median(row[key] for row in mine)
                for key in mine[0]
                if key not in ("variant", "round")
            }
        )
    columns = [
        "variant",
        "idle query p50 ms",
        "draining query p50 ms",
        "draining query p99 ms",
        "no-check p50 ms",
        "drain /s under queries",
        "drain /s, no queries",
        "load start",
    ]
    print(f"\nMedians of {args.rounds} rounds at {args.size:,} records, {args.records:,} waiting")
    print(table(summary, columns))
    path = write_json(
        args.name,
        {
            "rows": rows,
            "medians": summary,
            "load average start/end": [load_start, os.getloadavg()],
            "settings": vars(args),
            "variants": {name: env for name, (_, env) in variants.items()},
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
