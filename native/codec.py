"""BitDelta: 1 bit per canonical dimension, the 964-byte code experiences travel in.

``code = f32 scale (little-endian) || packbits(v - v_ref >= 0)`` (960 bytes, most significant
bit first). Decoded, ``v_hat = v_ref + s * (2b - 1)``.

The scale is BitDelta's ``s = mean |v - v_ref|``: for sign codes it minimises the L1 error and,
measured on real sentences (notes/ann-and-codes.md, re-measured by benchmarks/encoder.py), it
gives the best recall; ``max|d|/127`` is an 8-bit formula and loses a third of the recall at 1 bit.
Pure functions: no I/O.
"""

from __future__ import annotations

import numpy as np

from zoonode.protocol import CODE_BYTES, CODE_SIGN_BYTES, check_code

from .head import CANONICAL_DIM

_BITS = CANONICAL_DIM
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint16)


def _as_vectors(v: np.ndarray) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != _BITS:
        raise ValueError(f"expected vectors of {_BITS} dims, got shape {np.shape(v)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("vector contains NaN or inf")
    return arr


def compress(v: np.ndarray, v_ref: np.ndarray) -> bytes:
    """One canonical vector -> its 964-byte code."""
    return compress_many(v, v_ref)[0]


def compress_many(vectors: np.ndarray, v_ref: np.ndarray) -> list[bytes]:
    """Vectorised :func:`compress` over rows."""
    arr = _as_vectors(vectors)
    delta = arr - v_ref[None, :]
    scales = np.abs(delta).mean(axis=1, dtype=np.float64).astype("<f4")
    # A vector equal to v_ref has no direction to encode; give it the smallest positive scale
    # so the code stays valid (the protocol requires s > 0).
    scales = np.maximum(scales, np.finfo(np.float32).tiny)
    signs = np.packbits(delta >= 0, axis=1)
    return [s.tobytes() + row.tobytes() for s, row in zip(scales, signs, strict=True)]


def split(codes: list[bytes] | bytes) -> tuple[np.ndarray, np.ndarray]:
    """Codes -> (scales (n,) float32, sign bytes (n, 960) uint8), validating each code."""
    if isinstance(codes, bytes | bytearray):
        codes = [bytes(codes)]
    for code in codes:
        check_code(code)
    raw = np.frombuffer(b"".join(codes), dtype=np.uint8).reshape(len(codes), CODE_BYTES)
    scales = raw[:, :4].copy().view("<f4").reshape(-1).astype(np.float32)
    return scales, raw[:, 4:]


def decompress(code: bytes, v_ref: np.ndarray) -> np.ndarray:
    """964-byte code -> v_hat (7680,) float32 (not re-normalised)."""
    return decompress_many([code], v_ref)[0]


def decompress_many(codes: list[bytes], v_ref: np.ndarray) -> np.ndarray:
    scales, signs = split(codes)
    pm = np.unpackbits(signs, axis=1).astype(np.float32) * 2.0 - 1.0
    return v_ref[None, :] + scales[:, None] * pm


def score(q: np.ndarray, codes: list[bytes], v_ref: np.ndarray) -> np.ndarray:
    """``q . v_hat`` for many codes without decompressing them.

    ``q . v_hat = q . v_ref + s (2 q . b - sum q)``; ``q . b`` comes from a per-byte lookup
    table (960 x 256), so the cost is one gather per code byte instead of 7680 multiplies.
    """
    qv = _as_vectors(q)[0].astype(np.float64)
    scales, signs = split(codes)
    table = byte_table(qv)
    qb = table[np.arange(CODE_SIGN_BYTES)[None, :], signs].sum(axis=1)
    return (qv @ v_ref + scales * (2.0 * qb - qv.sum())).astype(np.float32)


def byte_table(q: np.ndarray) -> np.ndarray:
    """(960, 256) table: entry [j, x] = sum of q over the bits set in byte x at byte j."""
    bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float64)
    return q.reshape(CODE_SIGN_BYTES, 8) @ bits.T


def hamming(a: bytes | np.ndarray, codes: list[bytes] | np.ndarray) -> np.ndarray:
    """Hamming distance between the sign bits of one code and many (a first-stage filter)."""
    a_signs = split(a)[1][0] if isinstance(a, bytes | bytearray) else np.asarray(a, np.uint8)
    signs = split(codes)[1] if isinstance(codes, list) else np.asarray(codes, np.uint8)
    return _POPCOUNT[np.bitwise_xor(signs, a_signs[None, :])].sum(axis=1, dtype=np.int64)
