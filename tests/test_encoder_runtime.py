"""encoder.runtime = "onnx": ONNX Runtime on the same weights gives the same vectors and the
same space as torch (real weights, real export with the dynamo exporter, real texts)."""

from __future__ import annotations

import json
import shutil
from importlib import resources

import httpx
import numpy as np
import pytest

from zoonode.config import ConfigError, load_config
from zoonode.native.encoder import (
    Encoder,
    EncoderError,
    batch_order,
    default_cache_dir,
    reference_texts,
)
from zoonode.native.onnxrt import onnx_file

from nodeproc import running_node


def _texts() -> list[str]:
    lessons = (resources.files("zoonode") / "data" / "lessons.jsonl").read_text()
    ours = [json.loads(line)["text"] for line in lessons.splitlines() if line.strip()]
    return ours + reference_texts()[:120]  # 40 lessons + 120 stdlib docstring lines


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory, encoder):
    """A cache dir of this module's own, seeded with the graph that an earlier test's node
    process exported into the user's cache when there is one (an export takes 10-30 s of
    CPU; exporting is tested by test_a_cached_graph_is_reused_and_a_wrong_one_exported_again,
    and the start-up probe checks a seeded graph as any cached one)."""
    cache = tmp_path_factory.mktemp("encoder-cache")
    exported = onnx_file(default_cache_dir(), encoder.backbone.weights_sha256)
    if exported.exists():
        shutil.copy(exported, cache / exported.name)
    return cache


@pytest.fixture(scope="module")
def onnx_encoder(onnx_cache):
    return Encoder.default(runtime="onnx", cache_dir=str(onnx_cache))


def test_onnx_vectors_equal_torch_and_the_space_is_unchanged(encoder, onnx_encoder, onnx_cache):
    assert onnx_encoder.backbone.runtime == "onnx" and encoder.backbone.runtime == "torch"
    assert onnx_encoder.space == encoder.space  # the fingerprint every record carries
    assert onnx_encoder.backbone.weights_sha256 == encoder.backbone.weights_sha256
    assert onnx_file(onnx_cache, encoder.backbone.weights_sha256).exists()
    texts = _texts()
    a, b = encoder.encode(texts), onnx_encoder.encode(texts)  # (n, 7680), batches of 32
    assert a.shape == b.shape == (len(texts), 7680)
    assert np.abs(a - b).max() < 1e-5
    assert (a * b).sum(1).min() > 1 - 1e-6
    # the query path: one text at a time, with 1 thread and with 2
    for threads in (1, 2):
        for text in texts[:5]:
            one = onnx_encoder.encode_compact(text, threads=threads)
            assert np.abs(one - encoder.encode_compact(text, threads=threads)).max() < 1e-5
    # the space's own reference vectors (shipped, made by torch) hold for the ONNX encoder
    refs = onnx_encoder.references()
    assert np.abs(onnx_encoder.encode_compact(reference_texts()[:20]) - refs[:20]).max() < 2e-3


def test_onnx_batches_are_bounded_by_characters_and_give_the_same_vectors(encoder, onnx_encoder):
    """ONNX Runtime encodes long texts in small batches (``batch_chars``), short ones 32 at a
    time; every text is encoded once, and the vectors are those of plain batches of 32 and of
    torch's (which batches by count alone)."""
    budget = onnx_encoder.backbone.batch_chars
    assert budget > 0 and encoder.backbone.batch_chars == 0
    long = [" ".join([t] * 8)[:1000] for t in _texts()[:12]]  # 1 KB lessons, the most allowed
    texts = long + _texts()
    lengths = [len(t) for t in texts]
    order = np.argsort([-n for n in lengths], kind="stable")
    batches = batch_order(order, lengths, 32, budget)
    assert np.array_equal(np.concatenate(batches), order)
    assert all(1 <= len(b) <= 32 for b in batches)
    assert all(len(b) == 1 or len(b) * lengths[b[0]] <= budget for b in batches)
    assert len(batches[0]) < 4 and len(batches[-2]) == 32  # long ones split, short ones not
    bounded = onnx_encoder.encode_compact(texts)
    onnx_encoder.backbone.batch_chars = 0
    try:
        plain = onnx_encoder.encode_compact(texts)
    finally:
        onnx_encoder.backbone.batch_chars = budget
    assert np.abs(bounded - plain).max() < 1e-5
    assert np.abs(bounded - encoder.encode_compact(texts)).max() < 1e-5


def test_a_cached_graph_is_reused_and_a_wrong_one_exported_again(encoder, onnx_encoder, tmp_path):
    import onnx
    from onnx import numpy_helper

    source = onnx_encoder.backbone.path
    cache = tmp_path / "cache"
    cache.mkdir()
    target = cache / source.name
    shutil.copy(source, target)
    again = Encoder.default(runtime="onnx", cache_dir=str(cache))  # no export: reuses the file
    assert again.backbone.path == target
    assert target.stat().st_size == source.stat().st_size
    # A valid graph whose weights were changed: it loads, but its vectors differ. The start-up
    # probe sees it and exports again, so a node never encodes into a shifted space.
    model = onnx.load(str(source))
    weight = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # word embeddings
    changed = numpy_helper.to_array(weight).copy()
    changed[:1000] *= 1.5
    weight.CopyFrom(numpy_helper.from_array(changed, weight.name))
    onnx.save(model, str(target))
    before = target.stat().st_mtime_ns
    fixed = Encoder.default(runtime="onnx", cache_dir=str(cache))
    assert target.stat().st_mtime_ns != before
    assert fixed.backbone.probe_diff < 1e-5
    text = "Pin the exact version of a dependency that writes files."
    assert np.abs(fixed.encode(text) - encoder.encode(text)).max() < 1e-5


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (
            {"runtime": "tensorflow"},
            "encoder.runtime = 'tensorflow': must be one of 'torch', 'onnx'",
        ),
        ({"runtime": "onnx", "precision": "bf16"}, "encoder.precision = 'bf16': must be 'fp32'"),
        ({"runtime": "onnx", "device": "cuda"}, "encoder.device = 'cuda': must be auto or cpu"),
        ({"runtime": 1}, "encoder.runtime must be str"),
    ],
)
def test_runtime_setting_is_checked(values, match):
    with pytest.raises(ConfigError, match=match):
        load_config(env={}, overrides={"encoder": values})


def test_encoder_settings_refuse_an_unknown_runtime():
    with pytest.raises(EncoderError, match="runtime must be torch or onnx"):
        Encoder.default(runtime="jax")


def test_a_node_on_the_onnx_runtime_answers_queries(onnx_encoder, onnx_cache, tmp_path):
    """A real `zoonode start` process with encoder.runtime = "onnx" (the graph already in its
    cache dir): it shares the operator's lessons and finds them for a query over HTTP, and
    reuses the cached graph (no second export)."""
    env = {"ZOONODE_ENCODER__RUNTIME": "onnx", "ZOONODE_ENCODER__CACHE_DIR": str(onnx_cache)}
    before = {p.name: p.stat().st_mtime_ns for p in onnx_cache.glob("*.onnx")}
    lessons = [
        "Before dividing both sides of an inequality, check the sign of the divisor",
        "When a test fails only on CI, compare the locale and the timezone first",
    ]
    with running_node(tmp_path / "d", env) as node:
        with httpx.Client(base_url=node.url, headers=node.auth, timeout=60) as http:
            for text in lessons:
                body = {"text": text, "domain": "test.runtime", "confidence": 0.8}
                assert http.post("/v1/experiences", json=body).status_code == 201
            found = http.post("/v1/query", json={"text": "my tests pass locally but fail on CI"})
        found.raise_for_status()
        texts = [s["text"] for s in found.json()["selected"]]
    assert texts and texts[0] == lessons[1]
    assert {p.name: p.stat().st_mtime_ns for p in onnx_cache.glob("*.onnx")} == before
