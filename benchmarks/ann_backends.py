"""Index libraries side by side on the replica's workload: can another one ingest faster?

    python benchmarks/ann_backends.py [--sizes 300000 1000000] [--backends hnswlib usearch-i8]
        [--ef-construction 200 128 64]

The replica's ingest at 1M records misses its 1000/s goal (benchmarks/replica.py); this
measures the index alone, the part that slows down as it grows. Every backend gets the same
384-d compact vectors (the real encoder vectors of every text we have, topped up with
replica.py's synthetic ones), added in batches of 256 as the node does, on 2 threads, M 16,
efConstruction 200, inner product. Recall@10 against exact brute force for the 443 real eg
queries, at search widths 256, 512 and 1024. ``usearch-i8`` stores 1-byte coordinates, so its
distances are approximate: it is also scored the way the node would use it, the top 50
reranked with the exact float vectors (which the store already returns with the rows).
``faiss-ivf-sq8`` is not HNSW: an inverted file (1024 lists) of 8-bit vectors, trained on the
first 65,536 vectors, reranked the same way; a search width w probes w / 4 lists.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from replica import real_vectors, rss_mb, synthetic

from zoonode.native.encoder import Encoder

from common import table, write_json
from datasets import load

BATCH = 256
WIDTHS = (256, 512, 1024)
RERANK = 50
IVF_LISTS = 1024  # about sqrt(1M)
IVF_TRAIN = 65_536

Search = Callable[[np.ndarray, int, int], np.ndarray]  # (query, k, ef) -> labels


def open_backend(
    name: str, n: int, efc: int = 200
) -> tuple[Callable[[np.ndarray, np.ndarray], None], Search]:
    """(add(ids, vectors), search(query, k, ef)) for one library."""
    if name == "hnswlib":
        import hnswlib

        index = hnswlib.Index(space="ip", dim=384)
        index.init_index(max_elements=n, M=16, ef_construction=efc)
        index.set_num_threads(2)

        def search(q: np.ndarray, k: int, ef: int) -> np.ndarray:
            index.set_ef(max(ef, k))
            return index.knn_query(q[None], k=k)[0][0]

        return lambda ids, x: index.add_items(x, ids), search
    if name.startswith("usearch-"):
        from usearch.index import Index

        uindex = Index(
            ndim=384,
            metric="ip",
            dtype=name.split("-", 1)[1],
            connectivity=16,
            expansion_add=efc,
            expansion_search=256,
        )

        def usearch(q: np.ndarray, k: int, ef: int) -> np.ndarray:
            uindex.expansion_search = max(ef, k)
            return uindex.search(q, k).keys

        return lambda ids, x: uindex.add(ids, x, threads=2), usearch
    if name == "faiss-ivf-sq8":
        return _faiss_ivf(n)
    if name == "faiss":
        import faiss

        faiss.omp_set_num_threads(2)
        findex = faiss.IndexHNSWFlat(384, 16, faiss.METRIC_INNER_PRODUCT)
        findex.hnsw.efConstruction = efc

        def fsearch(q: np.ndarray, k: int, ef: int) -> np.ndarray:
            findex.hnsw.efSearch = max(ef, k)
            return findex.search(q[None], k)[1][0]

        return lambda ids, x: findex.add(x), fsearch
    raise SystemExit(f"unknown backend {name!r}")


def _faiss_ivf(n: int) -> tuple[Callable[[np.ndarray, np.ndarray], None], Search]:
    """Not HNSW: an inverted file of 8-bit vectors, whose insertion cost does not grow with
    the index (one nearest-centroid search per vector). Trained on the first vectors it sees,
    as a node would train on its first records; a search width w probes w / 4 lists."""
    import faiss

    faiss.omp_set_num_threads(2)
    nlist = max(16, min(IVF_LISTS, n // 64))
    index = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(384),
        384,
        nlist,
        faiss.ScalarQuantizer.QT_8bit,
        faiss.METRIC_INNER_PRODUCT,
    )
    pending: list[np.ndarray] = []

    def add(ids: np.ndarray, x: np.ndarray) -> None:
        if not index.is_trained:  # hold vectors back until there are enough to train on
            pending.append(x)
            held = sum(len(p) for p in pending)
            if held < min(IVF_TRAIN, n) and ids[-1] + 1 < n:
                return
            x = np.concatenate(pending)
            pending.clear()
            index.train(x)
        index.add(x)

    def search(q: np.ndarray, k: int, ef: int) -> np.ndarray:
        index.nprobe = max(1, ef // 4)
        return index.search(q[None], k)[1][0]

    return add, search


def measure(
    name: str, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, efc: int = 200
) -> dict:
    n = len(vectors)
    rss0 = rss_mb()
    add, search = open_backend(name, n, efc)
    t0 = time.perf_counter()
    marks = []
    for start in range(0, n, BATCH):
        add(np.arange(start, min(start + BATCH, n)), vectors[start : start + BATCH])
        if (start + BATCH) % 100_000 < BATCH:
            marks.append(time.perf_counter() - t0)
    build_s = time.perf_counter() - t0
    row: dict = {
        "backend": name,
        "efC": efc,
        "n": n,
        "add/s": n / build_s,
        "add/s last 100k": 100_000 / (marks[-1] - marks[-2]) if len(marks) > 1 else None,
        "RSS/vec (B)": (rss_mb() - rss0) * 2**20 / n,
    }
    rerank = name in ("usearch-i8", "faiss-ivf-sq8")
    for ef in WIDTHS:
        recalls, latencies = [], []
        for q, true in zip(queries, truth, strict=True):
            t = time.perf_counter()
            labels = np.asarray(search(q, RERANK if rerank else 10, ef), np.int64)
            if rerank:  # exact scores for the candidates, as the store's rows carry them
                labels = labels[np.argsort(-(vectors[labels] @ q))[:10]]
            latencies.append((time.perf_counter() - t) * 1000)
            recalls.append(len(set(labels.tolist()) & set(true.tolist())) / 10)
        row[f"recall@10 ef{ef}"] = float(np.mean(recalls))
        row[f"p50 ms ef{ef}"] = float(np.median(latencies))
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[300_000])
    parser.add_argument(
        "--backends", nargs="+", default=["hnswlib", "faiss", "usearch-f32", "usearch-i8"]
    )
    parser.add_argument(
        "--ef-construction",
        type=int,
        nargs="+",
        default=[200],
        help="build widths to compare (the replica uses 200)",
    )
    args = parser.parse_args()
    enc = Encoder.default()
    real = real_vectors(enc)
    queries = enc.encode_compact(load().queries, batch_size=64).astype(np.float32)
    extra = synthetic(real, max(args.sizes), np.random.default_rng(7))
    every = np.concatenate([real, extra]).astype(np.float32)
    rows = []
    for n in args.sizes:
        vectors = every[:n]
        truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
        for name in args.backends:
            for efc in args.ef_construction:
                rows.append(measure(name, vectors, queries, truth, efc))
                print(table(rows[-1:], list(rows[-1])), flush=True)
    print("\nIndexes alone, batches of 256, 2 threads, HNSW M 16")
    print(table(rows, list(rows[0])))
    path = write_json(
        f"ann-backends-{'-'.join(str(n) for n in args.sizes)}"
        + (
            ""
            if args.ef_construction == [200]
            else f"-efc{'-'.join(map(str, args.ef_construction))}"
        ),
        {
            "rows": rows,
            "settings": {
                "batch": BATCH,
                "threads": 2,
                "M": 16,
                "efConstruction": args.ef_construction,
            },
            "rerank_top_for_i8": RERANK,
            "vectors": f"{len(real)} real + synthetic (replica.py)",
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
