"""Calibrate the embedding check: does a record's code agree with its text?

    python benchmarks/embedding_check.py

For every real text we have (eg queries, cheat tips, reference corpus): the agreement
cos(W^T v_hat, u) between the 384-d sketch of its own code and its re-encoded text (honest),
against three hijacks: the code of a random other text; the code of its nearest neighbour
(the best an attacker can do with a real text's code); and the code of a paraphrase-level
neighbour (cos >= 0.9). The node stores a record only if agreement >= 0.9 (zoonode.node).
"""

from __future__ import annotations

import numpy as np

from zoonode.native.codec import compress_many
from zoonode.native.encoder import Encoder
from zoonode.native.head import lift
from zoonode.native.space import data_dir
from zoonode.net.validation import embedding_agreement

from common import table, write_json
from datasets import load


def main() -> None:
    enc = Encoder.default()
    data = load()
    texts = (
        data.queries + data.corpus + (data_dir() / "reference_corpus.txt").read_text().splitlines()
    )
    compact = enc.encode_compact(texts, batch_size=64)
    codes = compress_many(lift(compact, enc.space_info.head), enc.space_info.v_ref)
    head, v_ref = enc.space_info.head, enc.space_info.v_ref
    honest = embedding_agreement(codes, compact, head, v_ref)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(texts))
    random_other = embedding_agreement([codes[j] for j in perm], compact, head, v_ref)
    sims = compact @ compact.T
    np.fill_diagonal(sims, -1)
    nearest = sims.argmax(1)
    neighbour = embedding_agreement([codes[j] for j in nearest], compact, head, v_ref)
    close = sims.max(1) >= 0.9
    rows = []
    for name, values in (
        ("honest (own code)", honest),
        ("hijack: random text's code", random_other),
        ("hijack: nearest neighbour's code", neighbour),
        ("hijack: neighbour with cos >= 0.9", neighbour[close]),
    ):
        rows.append(
            {
                "case": name,
                "n": len(values),
                "min": float(values.min()),
                "p1": float(np.percentile(values, 1)),
                "median": float(np.median(values)),
                "p99": float(np.percentile(values, 99)),
                "max": float(values.max()),
                "share >= 0.9": float(np.mean(values >= 0.9)),
            }
        )
    print(f"\nAgreement cos(W^T v_hat, u) on {len(texts)} real texts")
    print(table(rows, ["case", "n", "min", "p1", "median", "p99", "max", "share >= 0.9"]))
    path = write_json("embedding_check", {"rows": rows, "threshold": 0.9})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
