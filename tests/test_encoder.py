"""The native encoder on the real shipped all-MiniLM-L6-v2 weights."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from zoonode.native.encoder import EncoderError
from zoonode.native.head import CANONICAL_DIM, lower, truncate
from zoonode.native.space import SpaceError, load_space

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "When solving geometry problems with intersections, validate solutions lie within "
    "bounded regions, not extensions",
]


def test_shape_norm_dtype(encoder):
    v = encoder.encode(TEXTS)
    assert v.shape == (3, CANONICAL_DIM) == (3, encoder.dim)
    assert v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_published_sanity_cosine(encoder):
    v = encoder.encode(TEXTS[:2])
    assert float(v[0] @ v[1]) == pytest.approx(0.7553, abs=5e-4)


def test_head_preserves_inner_products(encoder):
    compact = encoder.encode_compact(TEXTS)
    canonical = encoder.encode(TEXTS)
    np.testing.assert_allclose(canonical @ canonical.T, compact @ compact.T, atol=1e-5)
    np.testing.assert_allclose(lower(canonical, encoder.space_info.head), compact, atol=1e-5)


def test_batching_and_order_do_not_change_vectors(encoder):
    one_by_one = np.stack([encoder.encode(t)[0] for t in TEXTS])
    batched = encoder.encode(list(reversed(TEXTS)), batch_size=2)[::-1]
    np.testing.assert_allclose(one_by_one, batched, atol=2e-5)


def test_same_text_same_vector_across_processes(encoder, tmp_path):
    script = (
        "import json, numpy as np; from zoonode.native.encoder import Encoder;"
        f"e = Encoder.default(); v = e.encode([{TEXTS[2]!r}])[0];"
        "print(json.dumps({'space': e.space.hex(), 'v': v[:64].tolist()}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=tmp_path,  # not the repo root: there `zoonode/` would shadow the installed package
    ).stdout
    other = json.loads(out.strip().splitlines()[-1])
    assert other["space"] == encoder.space.hex()
    np.testing.assert_allclose(encoder.encode(TEXTS[2])[0][:64], other["v"], atol=1e-6)


def test_space_id_is_pinned(encoder):
    space = load_space()
    assert encoder.space == space.id == bytes.fromhex(space.manifest["space_id"])
    assert len(encoder.space) == 16
    space.check_peer_space(encoder.space)
    with pytest.raises(SpaceError, match="space mismatch"):
        space.check_peer_space(b"\x00" * 16)


def test_tampered_space_file_is_refused(tmp_path):
    space = load_space()
    manifest = dict(space.manifest)
    np.save(tmp_path / "head.npy", space.head)
    v_ref = space.v_ref.copy()
    v_ref[0] += 1e-3
    np.save(tmp_path / "vref.npy", v_ref)
    (tmp_path / "space-v1.json").write_text(json.dumps(manifest))
    with pytest.raises(SpaceError, match="sha256"):
        load_space(tmp_path / "space-v1.json")


@pytest.mark.parametrize("bad", [[""], ["   "], [None], [3], 42, [b"bytes"]])
def test_bad_input_is_a_clear_error(encoder, bad):
    with pytest.raises(EncoderError):
        encoder.encode(bad)


def test_truncate_views(encoder):
    v = encoder.encode(TEXTS)
    for dims in (1024, 2048, 4096):
        t = truncate(v, dims)
        assert t.shape == (3, dims)
        np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError):
        truncate(v, 1000)
    with pytest.raises(ValueError):
        truncate(np.full(7680, np.nan), 1024)


def test_unknown_backbone_is_a_clear_error():
    from zoonode.native.encoder import Backbone

    with pytest.raises(EncoderError, match="cannot load backbone"):
        Backbone("/nonexistent/model/folder")


def test_torch_lift_equals_the_numpy_reference(encoder):
    from zoonode.native.head import lift

    compact = encoder.encode_compact(TEXTS)
    np.testing.assert_allclose(
        encoder.lift(compact), lift(compact, encoder.space_info.head), atol=1e-6
    )
