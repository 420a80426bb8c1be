"""The fixed canonical head: a 7680 x h matrix with orthonormal columns (pure maths, no I/O).

Because ``W.T @ W = I``, inner products of lifted vectors equal those of the backbone's own
(normalised) output: ``(W a) . (W b) = a . b``. Anything that only needs scores (the replica,
selection) may therefore work in the h-dim *compact coordinates* ``W.T @ v`` and get the
canonical 7680-d scores exactly, at 1/20 of the memory and time.
"""

from __future__ import annotations

import hashlib

import numpy as np

CANONICAL_DIM = 7680
HEAD_SEED = 20261123  # documented seed of the shipped head (see generate_head)


def generate_head(hidden: int, seed: int = HEAD_SEED, dim: int = CANONICAL_DIM) -> np.ndarray:
    """Regenerate the head: PCG64(seed) Gaussian, reduced QR, columns times sign(diag R).

    The result is reproducible to ~1e-7 across machines but not bit-exact (LAPACK builds
    differ by ~3e-14 before the float32 cast), which is why the head ships as a file with its
    SHA-256 and this function is only used to create it and to audit it.
    """
    gauss = np.random.Generator(np.random.PCG64(seed)).standard_normal((dim, hidden))
    q, r = np.linalg.qr(gauss, mode="reduced")
    q *= np.sign(np.diag(r))[None, :]
    return np.ascontiguousarray(q, dtype=np.float32)


def array_sha256(array: np.ndarray) -> str:
    """SHA-256 of an array's little-endian bytes, its dtype and shape: the hash we pin."""
    arr = np.ascontiguousarray(array)
    digest = hashlib.sha256()
    digest.update(f"{arr.dtype.str}:{arr.shape}".encode())
    digest.update(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    return digest.hexdigest()


def normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """L2-normalise along ``axis``; refuses zero and non-finite rows instead of making NaN."""
    x = np.asarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError("vector contains NaN or inf")
    norms = np.linalg.norm(x, axis=axis, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("cannot normalise a zero vector")
    return x / norms


def lift(compact: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Compact coordinates (n, h) -> canonical vectors (n, 7680), unit norm preserved."""
    return normalize(np.asarray(compact, dtype=np.float32) @ head.T)


def lower(canonical: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Canonical vectors (n, 7680) -> compact coordinates (n, h): the exact inverse of lift."""
    return np.asarray(canonical, dtype=np.float32) @ head


def truncate(v: np.ndarray, dims: int) -> np.ndarray:
    """Matryoshka view: the first ``dims`` coordinates, re-normalised.

    Our head is a random rotation, not trained for nesting, so a prefix keeps roughly
    ``dims / 7680`` of the signal in every direction; benchmarks/encoder.py measures the loss.
    """
    if dims not in (1024, 2048, 4096, CANONICAL_DIM):
        raise ValueError(f"truncate supports 1024, 2048, 4096 or 7680 dims, not {dims}")
    v = np.asarray(v, dtype=np.float32)
    return normalize(v[..., :dims])
