"""The canonical space: its manifest, pinned files and 16-byte fingerprint.

A space is defined by its *anchor* backbone (weights hash), the head (hash), the reference
vector v_ref (hash) and the dimension. Its id is the first 16 bytes of SHA-256 over those, and
every experience carries it. Other backbones join the same space through a fitted adapter
(see ``zoonode space fit-head``): they embed into the same coordinates, so peers never project.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .head import array_sha256

SPACE_ID_BYTES = 16
DEFAULT_MANIFEST = "space-v1.json"


class SpaceError(ValueError):
    """A space file is missing or does not match its pinned hash, or two spaces differ."""


def space_id(anchor_weights_sha256: str, head_sha256: str, vref_sha256: str, dim: int) -> bytes:
    """The space fingerprint: stable across machines, changes if any pinned part changes."""
    canonical = json.dumps(
        {
            "anchor_weights_sha256": anchor_weights_sha256,
            "dim": dim,
            "head_sha256": head_sha256,
            "vref_sha256": vref_sha256,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).digest()[:SPACE_ID_BYTES]


@dataclass(frozen=True)
class Space:
    """A loaded, hash-checked canonical space."""

    name: str
    id: bytes
    dim: int
    hidden: int
    head: np.ndarray  # (dim, hidden) float32, orthonormal columns
    v_ref: np.ndarray  # (dim,) float32
    anchor_backbone: str
    anchor_weights_sha256: str
    manifest: dict

    @property
    def hex(self) -> str:
        return self.id.hex()

    def check_peer_space(self, other: bytes) -> None:
        """Refuse a record or a peer from another space, saying which two differ."""
        if other != self.id:
            raise SpaceError(
                f"space mismatch: ours is {self.hex} ({self.name}), theirs is {other.hex()}"
            )


def data_dir() -> Path:
    return Path(str(resources.files("zoonode.native") / "data"))


def load_space(manifest_path: str | Path | None = None) -> Space:
    """Load a space manifest and its head and v_ref files, checking every pinned hash."""
    path = Path(manifest_path) if manifest_path else data_dir() / DEFAULT_MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SpaceError(f"space manifest not found: {path}") from exc
    base = path.parent
    head = _load_pinned(base / manifest["head"]["file"], manifest["head"]["sha256"], "head")
    v_ref = _load_pinned(
        base / manifest["reference"]["file"], manifest["reference"]["sha256"], "reference vector"
    )
    dim = int(manifest["dim"])
    if head.shape[0] != dim or v_ref.shape != (dim,):
        raise SpaceError(f"head {head.shape} / v_ref {v_ref.shape} do not match dim {dim}")
    anchor = manifest["anchor_backbone"]
    sid = space_id(
        anchor["weights_sha256"], manifest["head"]["sha256"], manifest["reference"]["sha256"], dim
    )
    if manifest.get("space_id") and manifest["space_id"] != sid.hex():
        raise SpaceError(f"manifest says space {manifest['space_id']}, its parts give {sid.hex()}")
    return Space(
        name=manifest["name"],
        id=sid,
        dim=dim,
        hidden=head.shape[1],
        head=head,
        v_ref=v_ref,
        anchor_backbone=anchor["name"],
        anchor_weights_sha256=anchor["weights_sha256"],
        manifest=manifest,
    )


def _load_pinned(path: Path, sha256: str, what: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise SpaceError(f"{what} file not found: {path}") from exc
    actual = array_sha256(array)
    if actual != sha256:
        raise SpaceError(f"{what} {path.name} has sha256 {actual}, the manifest pins {sha256}")
    return array
