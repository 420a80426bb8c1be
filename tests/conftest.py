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


@pytest.fixture()
def key():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()
