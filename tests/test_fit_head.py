"""Heterogeneous backbones: fit a head for another backbone into the canonical space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from zoonode.native.encoder import Backbone, Encoder
from zoonode.native.space import SpaceError, data_dir
from zoonode.spacetools import read_corpus

# The session fixtures convert L3 and fit its head (`zoonode space fit-head` on the shipped
# anchors: the check's 5,085 reference texts through L3): ~1-2 min on an idle 2-core box.
pytestmark = pytest.mark.timeout(900)


def test_other_backbone_needs_a_head(l3_backbone, encoder):
    with pytest.raises(SpaceError, match="fit a head"):
        Encoder(Backbone(str(l3_backbone)), encoder.space_info)


def test_convert_onnx_is_exact(l3_backbone):
    """paraphrase-MiniLM-L3-v2 converted from the package's ONNX graph gives the graph's own
    outputs (onnx's reference evaluator, pure numpy) to float32 rounding."""
    from onnx.reference import ReferenceEvaluator

    from zoonode.spacetools import L3_ONNX, package_file

    backbone = Backbone(str(l3_backbone))
    texts = ["A man is eating food.", "A man is eating a piece of bread."]
    tokens = backbone.tokenizer(texts, padding=True, return_tensors="np")
    graph = ReferenceEvaluator(str(package_file(L3_ONNX)))
    feeds = {k: tokens[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
    pooled = next(o for o in graph.run(None, feeds) if np.shape(o) == (2, 384))
    np.testing.assert_allclose(backbone.embed(texts), pooled, atol=1e-5)


def test_fit_head_cli_then_cross_model_retrieval(l3_backbone, l3_head, encoder):
    path, report = l3_head
    assert report["shape"] == [384, 384] and report["space"] == encoder.space.hex()
    # An anchor node's relative check accepts most of the fitted L3's codes of texts the
    # fit never saw (a weak 3-layer model: 0.99 measured; mpnet: benchmarks).
    assert report["check"]["texts"] == 1085 and report["check"]["accepted"] >= 0.97, report
    # And the other direction: the fitted node's check on a default node's codes of the
    # same texts (0.99 measured).
    reverse = report["reverse_check"]
    assert reverse["texts"] == 1085 and reverse["accepted"] >= 0.97, report
    assert Path(path).name == "l3.npz" and not list(Path(path).parent.glob(".*"))  # exact, atomic

    fitted = Encoder.default(backbone=str(l3_backbone), adapter=str(path))
    assert fitted.space == encoder.space  # same canonical space, no projection between peers
    assert fitted.references().shape == (5085, 384)  # stored by fit-head, not re-encoded
    held_out = read_corpus(data_dir() / "reference_corpus.txt")[:200]
    a = encoder.encode(held_out)
    b = fitted.encode(held_out)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    # Same-text retrieval across backbones on texts the head never saw.
    r1 = float(np.mean(np.argmax(b @ a.T, axis=1) == np.arange(len(held_out))))
    assert r1 >= 0.8, r1  # chance is 1/200; benchmarks/hetero_check.py reports real numbers


class _Rotated:
    """A stand-in backbone whose output is the anchor's, rotated: the exact answer is known."""

    def __init__(self, encoder, rotation):
        self.encoder, self.rotation, self.hidden = encoder, rotation, rotation.shape[0]

    def embed(self, texts):
        return self.encoder.encode_compact(texts) @ self.rotation.T


def test_procrustes_recovers_a_rotation(encoder):
    """A backbone whose space is a rotation of the anchor's: the fitted head must undo it on
    texts it never saw (the rotation itself is only pinned down in the directions the anchor
    texts span: sentence embeddings are far from isotropic)."""
    from zoonode.spacetools import fit_adapter

    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.normal(size=(384, 384)))
    texts = read_corpus(data_dir() / "reference_corpus.txt")
    adapter = fit_adapter(encoder, _Rotated(encoder, rotation), texts[:800])
    held_out = encoder.encode_compact(texts[800:1000])
    mapped = (held_out @ rotation.T) @ adapter.T
    cos = np.sum(mapped * held_out, axis=1) / np.linalg.norm(mapped, axis=1)
    assert float(np.min(cos)) > 0.99, float(np.min(cos))
