"""BitDelta codec on real canonical vectors."""

from __future__ import annotations

import numpy as np
import pytest

from zoonode.native import codec
from zoonode.protocol import CODE_BYTES, ProtocolError

LESSONS = [
    "When solving geometry problems with intersections, validate solutions lie within bounded "
    "regions, not extensions",
    "Before dividing both sides of an inequality, check the sign of the divisor",
    "Prefer parameterised SQL queries over string formatting to avoid injection",
    "When a unit test is flaky, look for shared state between tests before adding retries",
    "Read the whole error message and the first frame of the traceback before editing code",
    "Check units of every quantity before adding measured values together",
]


@pytest.fixture(scope="module")
def vectors(encoder):
    return encoder.encode(LESSONS)


def test_code_layout(encoder, vectors):
    code = codec.compress(vectors[0], encoder.space_info.v_ref)
    assert len(code) == CODE_BYTES == 964
    scale = np.frombuffer(code[:4], "<f4")[0]
    delta = vectors[0] - encoder.space_info.v_ref
    assert scale == pytest.approx(np.abs(delta).mean(), rel=1e-5)
    bits = np.unpackbits(np.frombuffer(code[4:], np.uint8))
    np.testing.assert_array_equal(bits, (delta >= 0).astype(np.uint8))


def test_round_trip_keeps_direction(encoder, vectors):
    v_ref = encoder.space_info.v_ref
    codes = codec.compress_many(vectors, v_ref)
    v_hat = codec.decompress_many(codes, v_ref)
    cos = (v_hat * vectors).sum(1) / np.linalg.norm(v_hat, axis=1)
    assert np.all(cos > 0.7)  # 1 bit per dim: ~0.8 measured, far from lossless
    np.testing.assert_allclose(codec.decompress(codes[0], v_ref), v_hat[0])
    # Re-compressing the reconstruction gives the same code: signs and scale are fixed points.
    assert codec.compress(v_hat[0], v_ref) == codes[0]


def test_score_equals_decompress_then_dot(encoder, vectors):
    v_ref = encoder.space_info.v_ref
    codes = codec.compress_many(vectors, v_ref)
    for q in vectors:
        expected = codec.decompress_many(codes, v_ref) @ q
        np.testing.assert_allclose(codec.score(q, codes, v_ref), expected, atol=1e-5)


def test_code_scores_rank_the_true_match_first(encoder, vectors):
    v_ref = encoder.space_info.v_ref
    codes = codec.compress_many(vectors, v_ref)
    for i, q in enumerate(vectors):
        assert int(np.argmax(codec.score(q, codes, v_ref))) == i


def test_hamming(encoder, vectors):
    codes = codec.compress_many(vectors, encoder.space_info.v_ref)
    d = codec.hamming(codes[0], codes)
    assert d[0] == 0
    assert np.all(d[1:] > 0) and np.all(d <= 7680)
    flipped = codes[0][:4] + bytes([codes[0][4] ^ 0b1011]) + codes[0][5:]
    assert codec.hamming(codes[0], [flipped])[0] == 3


@pytest.mark.parametrize("bad", [np.full(7680, np.nan), np.zeros(100), np.zeros((2, 3, 7680))])
def test_bad_vectors_are_refused(encoder, bad):
    with pytest.raises(ValueError):
        codec.compress(bad, encoder.space_info.v_ref)


@pytest.mark.parametrize("bad", [b"\x00" * 963, b"\x00" * 964, b"\xff\xff\xff\xff" + bytes(960)])
def test_bad_codes_are_refused(encoder, bad):
    with pytest.raises(ProtocolError):
        codec.decompress(bad, encoder.space_info.v_ref)
