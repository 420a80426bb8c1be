"""Query latency through the HTTP API of a real `zoonode start` process, at 100k experiences.

    python benchmarks/api.py [--sizes 2000 100000] [--queries 300]

Per size: a data dir is filled with the 1,334 real eg/cheat tips (real text, real encoder
vectors) topped up with synthetic records (replica.py's synthetic vectors, real BitDelta codes,
real signatures), its replica snapshot saved; then a real node process serves it and this
script sends the 443 real eg queries one at a time over HTTP (keep-alive), as an agent would.
End to end = HTTP + JSON + encoding the query text + replica search + SQLite rows + robust
selection (150 candidates, geometric median) + the answer's JSON. Right after, this script
encodes the same texts itself while the node idles: the encoder's share, measured in the same
minutes (this machine is shared and its speed drifts), so the table shows where the time goes.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from replica import real_vectors, synthetic, wires_for

from zoonode.experiences import sign_lessons
from zoonode.knowledge import KnowledgeBase
from zoonode.native.encoder import Encoder
from zoonode.protocol import decode
from zoonode.store import Incoming

from common import table, write_json
from datasets import load

ZOONODE = str(Path(sys.executable).with_name("zoonode"))
API_RE = re.compile(r"HTTP API (\S+)")


def fill(data: Path, enc: Encoder, corpus: list[str], corpus_vecs, extra, size: int) -> float:
    """Write ``size`` records into a node data dir; returns seconds spent."""
    t0 = time.perf_counter()
    keys = [Ed25519PrivateKey.generate() for _ in range(64)]
    n_real = min(size, len(corpus))
    items = [{"text": t, "domain": "bench.tips", "confidence": 0.7} for t in corpus[:n_real]]
    real_records = sign_lessons(enc, keys[0], items, corpus_vecs[:n_real])
    kb = KnowledgeBase(
        data, enc.space, enc.space_info.hidden, capacity=size + 1, snapshot_every=10 * size
    )
    for start in range(0, n_real, 256):
        kb.ingest(
            [
                Incoming(r, v)
                for r, v in zip(
                    real_records[start : start + 256],
                    corpus_vecs[start : start + 256],
                    strict=True,
                )
            ]
        )
    vectors = extra[: size - n_real]
    wires = wires_for(vectors, enc.space_info, keys[1:])
    for start in range(0, len(wires), 256):
        kb.ingest(
            [
                Incoming(decode(w), v)
                for w, v in zip(
                    wires[start : start + 256], vectors[start : start + 256], strict=True
                )
            ]
        )
    kb.replica.save(data)
    kb.close()
    return time.perf_counter() - t0


def serve_and_measure(data: Path, queries: list[str], enc: Encoder) -> dict:
    """Right after the HTTP queries, the same texts are encoded here while the node idles: the
    encoder's share, measured in the same minutes as the end-to-end latency. (Interleaving
    them one by one skewed the HTTP timings: this process's torch threads still spin.)"""
    proc = subprocess.Popen(
        [ZOONODE, "start", "--data-dir", str(data), "--api", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        t0 = time.perf_counter()
        url = next(m.group(1) for line in proc.stdout if (m := API_RE.search(line)))
        start_s = time.perf_counter() - t0
        with httpx.Client(base_url=url, timeout=60) as http:
            for q in queries[:10]:  # warm-up: first calls allocate and fault pages in
                http.post("/v1/query", json={"text": q})
            # Pass 1 right after start pages the freshly loaded index in (cold); pass 2 is
            # the steady state of a node that has been serving for a while.
            passes: list[list[float]] = [[], []]
            encoding, selected = [], []
            for latencies in passes:
                for q in queries:
                    t = time.perf_counter()
                    r = http.post("/v1/query", json={"text": q})
                    latencies.append((time.perf_counter() - t) * 1000)
                    r.raise_for_status()
                    selected.append(len(r.json()["selected"]))
            cold, latencies = passes
            context = []
            for q in queries[:100]:
                t = time.perf_counter()
                http.post("/v1/context", json={"task": q}).raise_for_status()
                context.append((time.perf_counter() - t) * 1000)
            replica = http.get("/v1/status").json()["replica"]
            for q in queries:
                t = time.perf_counter()
                enc.encode_compact(q)
                encoding.append((time.perf_counter() - t) * 1000)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return {
        "replica": replica,
        "node start s": start_s,
        "cold query p50 ms": float(np.percentile(cold, 50)),
        "query p50 ms": float(np.percentile(latencies, 50)),
        "query p99 ms": float(np.percentile(latencies, 99)),
        "context p50 ms": float(np.percentile(context, 50)),
        "mean selected": statistics.mean(selected),
        "encode p50 ms": float(np.percentile(encoding, 50)),
        "query - encode p50 ms": float(np.median(latencies) - np.median(encoding)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 100_000])
    parser.add_argument("--queries", type=int, default=443)
    args = parser.parse_args()
    enc = Encoder.default()
    data = load()
    queries = data.queries[: args.queries]
    corpus_vecs = enc.encode_compact(data.corpus, batch_size=64)
    real = real_vectors(enc)
    extra = synthetic(real, max(args.sizes), np.random.default_rng(11))

    rows = []
    for size in args.sizes:
        work = Path(tempfile.mkdtemp(prefix="zoo-apibench-"))
        try:
            fill_s = fill(work, enc, data.corpus, corpus_vecs, extra, size)
            row = {"experiences": size, "fill s": fill_s, **serve_and_measure(work, queries, enc)}
            rows.append(row)
            print(table([row], list(row)), flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nAPI query latency, {len(queries)} real queries one at a time over HTTP")
    print(table(rows, list(rows[0])))
    path = write_json(
        "api",
        {
            "rows": rows,
            "queries": len(queries),
            "settings": {"candidates": 150, "k": 5, "ef": 256, "keep_alive": True},
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
