"""Store + HNSW replica at scale: ingest, memory, recall, query latency, build time.

    python benchmarks/replica.py [--sizes 10000 100000 1000000]

Vectors: the real encoder vectors of every text we have (eg/cheat set + reference corpus,
~2.9k), plus synthetic ones drawn to match them: Gaussian with the real vectors' mean and
covariance in the 384-d compact coordinates, L2-normalised (so cosines have the real
distribution's spread). Records are real signed protocol records around those vectors.

Ingest = decode + verify + store (SQLite WAL, synchronous=FULL, batches of 256) + index
(the store config's replica backend or each --backends: usearch int8 or hnswlib float32; M16,
efC from the store config or --ef-construction, 2 threads, 384-d compact coordinates) +
near-duplicate lookup + the index snapshots a node writes on the way
(zoonode.knowledge.snapshot_due; results/replica-100k.json, replica-1m-efc*.json predate
this and leave them out).
Recall@10: KnowledgeBase.search(k=10) (replica at ef 256, or each --ef-search, then the
exact rerank of its candidates) against exact brute force over the same vectors.
Latency: the same calls end to end (replica + SQLite rows + rerank), p50/p99, after 20
warm-up searches.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zoonode.config import StoreConfig
from zoonode.knowledge import RERANK_CANDIDATES, KnowledgeBase
from zoonode.native.codec import compress_many
from zoonode.native.encoder import Encoder
from zoonode.native.head import lift
from zoonode.native.space import Space, data_dir
from zoonode.protocol import Experience, Op, decode, public_key_bytes, sign
from zoonode.replica import BACKENDS, INDEX_FILES
from zoonode.store import Incoming

from common import table, write_json
from datasets import load

BATCH = 256


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def real_vectors(enc: Encoder) -> np.ndarray:
    data = load()
    reference = (data_dir() / "reference_corpus.txt").read_text().splitlines()
    return enc.encode_compact(data.queries + data.corpus + reference, batch_size=64)


def synthetic(real: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    mean = real.mean(0)
    cov = np.cov(real, rowvar=False)
    x = rng.multivariate_normal(mean, cov, size=n, method="cholesky").astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def wires_for(vectors: np.ndarray, space: Space, keys: list[Ed25519PrivateKey]) -> list[bytes]:
    """Signed records carrying the real BitDelta code of each vector."""
    out = []
    for start in range(0, len(vectors), 4096):
        chunk = vectors[start : start + 4096]
        codes = compress_many(lift(chunk, space.head), space.v_ref)
        for j, code in enumerate(codes):
            i = start + j
            key = keys[i % len(keys)]
            exp = Experience(
                op=Op.ADD,
                author=public_key_bytes(key),
                space=space.id,
                created_at=1_700_000_000_000 + i,
                text=f"synthetic lesson {i}",
                domain="bench.replica",
                confidence=float((i % 10) / 10),
                code=code,
            )
            out.append(sign(exp, key).wire)
    return out


def loaded_rss_per_exp(work: Path, space_info: Space, n: int, backend: str) -> float:
    """RSS a fresh process gains by opening the knowledge base (snapshot loaded), per record:
    measured in a subprocess so memory freed earlier in this one cannot hide it."""
    import subprocess
    import sys

    script = (
        "import sys; from pathlib import Path; from replica import rss_mb;"
        "from zoonode.knowledge import KnowledgeBase;"
        "before = rss_mb();"
        f"kb = KnowledgeBase(Path({str(work)!r}), bytes.fromhex({space_info.id.hex()!r}), "
        f"{space_info.hidden}, replica_backend={backend!r});"
        "print(rss_mb() - before)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent,
    ).stdout
    return float(out.strip().splitlines()[-1]) * 1024 * 1024 / n


def run_size(
    n: int,
    real: np.ndarray,
    queries: np.ndarray,
    space_info: Space,
    rng: np.random.Generator,
    backend: str,
    ef_construction: int,
    ef_searches: list[int],
    rebuild: bool = True,
) -> dict:
    space, hidden = space_info.id, space_info.hidden
    vectors = np.concatenate([real, synthetic(real, max(0, n - len(real)), rng)])[:n]
    keys = [Ed25519PrivateKey.generate() for _ in range(64)]
    wires = wires_for(vectors, space_info, keys)
    work = Path(tempfile.mkdtemp(prefix="zoo-replica-"))
    try:
        rss0 = rss_mb()
        kb = KnowledgeBase(
            work,
            space,
            hidden,
            capacity=n + 1,
            snapshot_every=StoreConfig.snapshot_every,  # the node's snapshots are ingest cost
            hnsw_ef_construction=ef_construction,
            hnsw_ef_search=256,
            replica_backend=backend,
        )
        t0 = time.perf_counter()
        tail = (0, 0.0)  # (records, seconds) where the last 100k began: the rate at the end
        for start in range(0, n, BATCH):
            if n > 100_000 and tail[0] == 0 and start >= n - 100_000:
                tail = (start, time.perf_counter() - t0)
            items = [
                Incoming(decode(w), v)
                for w, v in zip(
                    wires[start : start + BATCH], vectors[start : start + BATCH], strict=True
                )
            ]
            kb.ingest(items)
        ingest_s = time.perf_counter() - t0
        rss_delta = rss_mb() - rss0
        t0 = time.perf_counter()
        kb.replica.save(work)
        snapshot_s = time.perf_counter() - t0
        index_bytes = (work / INDEX_FILES[backend]).stat().st_size

        exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10] + 1  # seq = row + 1
        by_ef = {}
        for q in queries[:20]:  # warm-up: the first searches after ingest touch cold pages
            kb.search(q, k=10, dedupe=False)
        for ef in ef_searches:  # the same index, searched wider
            kb.replica.ef_search = ef
            recalls, latencies = [], []
            for q, truth in zip(queries, exact, strict=True):
                t = time.perf_counter()
                hits = kb.search(q, k=10, dedupe=False)
                latencies.append((time.perf_counter() - t) * 1000)
                recalls.append(len({h.row.seq for h in hits} & set(truth.tolist())) / 10)
            by_ef[ef] = (
                float(np.mean(recalls)),
                float(np.percentile(latencies, 50)),
                float(np.percentile(latencies, 99)),
            )
        kb.close()

        loaded_rss = loaded_rss_per_exp(work, space_info, n, backend)
        build_s = float("nan")
        if rebuild:
            t0 = time.perf_counter()
            rebuilt = KnowledgeBase(
                work,
                space,
                hidden,
                hnsw_ef_construction=ef_construction,
                replica_backend=backend,
            )
            (work / INDEX_FILES[backend]).unlink()
            rebuilt.rebuild()
            build_s = time.perf_counter() - t0
            rebuilt.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    row = {
        "n": n,
        "backend": backend,
        "efC": ef_construction,
        "ingest/s": n / ingest_s,
        "ingest/s last 100k": (n - tail[0]) / (ingest_s - tail[1]) if tail[0] else None,
        "RAM/exp (B)": loaded_rss,
        "RSS growth while ingesting/exp (B)": rss_delta * 1024 * 1024 / n,
        "index file/exp (B)": index_bytes / n,
    }
    for i, (ef, (recall, p50, p99)) in enumerate(by_ef.items()):
        suffix = "" if i == 0 else f" ef{ef}"
        row |= {f"recall@10{suffix}": recall, f"p50 ms{suffix}": p50, f"p99 ms{suffix}": p99}
    return row | {"rebuild s": build_s, "snapshot s": snapshot_s}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument(
        "--ef-construction",
        type=int,
        nargs="+",
        default=[StoreConfig.hnsw_ef_construction],
        help="one row per value, side by side on the same vectors",
    )
    parser.add_argument(
        "--ef-search",
        type=int,
        nargs="+",
        default=[256],
        help="search widths measured on the same index; the first one is the headline",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=BACKENDS,
        default=[StoreConfig.replica_backend],
        help="one row per backend, side by side on the same vectors",
    )
    parser.add_argument("--no-rebuild", action="store_true", help="skip the rebuild timing")
    args = parser.parse_args()
    enc = Encoder.default()
    real = real_vectors(enc)
    rng = np.random.default_rng(7)
    # Queries: real held-out vectors (first 443 are eg queries) topped up with synthetic ones.
    queries = np.concatenate([real[:443], synthetic(real, max(0, args.queries - 443), rng)])
    queries = queries[: args.queries]
    rows = []
    for n in args.sizes:
        for backend in args.backends:
            for ef_construction in args.ef_construction:
                rng_n = np.random.default_rng(n)  # the same vectors for every row
                row = run_size(
                    n,
                    real,
                    queries,
                    enc.space_info,
                    rng_n,
                    backend,
                    ef_construction,
                    args.ef_search,
                    rebuild=not args.no_rebuild,
                )
                rows.append(row)
                print(table([row], list(row)), flush=True)
    print(f"\nReplica: {len(real)} real vectors + synthetic to size; {len(queries)} queries")
    print(table(rows, list(rows[0])))
    path = write_json(
        "replica",
        {
            "rows": rows,
            "real_vectors": len(real),
            "settings": {
                "M": 16,
                "backends": args.backends,
                "rerank_candidates_min": RERANK_CANDIDATES,
                "ef_construction": args.ef_construction,
                "ef": args.ef_search,
                "batch": BATCH,
                "synchronous": "FULL",
            },
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
