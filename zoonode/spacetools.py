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
    source = normalize(
        np.concatenate(
            [other.embed(anchors[i : i + batch_size]) for i in range(0, len(anchors), batch_size)]
        )
    )
    u, _, vt = np.linalg.svd(
        target.T.astype(np.float64) @ source.astype(np.float64), full_matrices=False
    )
    return (u @ vt).astype(np.float32)


def save_adapter(path: Path, adapter: np.ndarray, other: Backbone, space: Space) -> None:
    np.savez(
        path,
        adapter=adapter,
        weights_sha256=np.array(other.weights_sha256),
        space_id=np.array(space.hex),
        backbone=np.array(other.name),
    )
