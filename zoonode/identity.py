"""The node's Ed25519 identity: one PEM file, mode 0600, never silently overwritten.

The same key signs experiences and, as the libp2p identity, names the node's peer id.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

IDENTITY_FILE = "identity.pem"


class IdentityError(OSError):
    """The identity file exists when it should not, or is unreadable or not an Ed25519 key."""


def generate_identity(path: Path) -> Ed25519PrivateKey:
    """Create a new key at ``path`` (0600); refuse if the file already exists."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise IdentityError(f"{path} already exists; refusing to overwrite an identity") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    return key


def load_identity(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise IdentityError(f"no identity at {path}; create one with `zoonode keygen`") from exc
    if path.stat().st_mode & 0o077:
        raise IdentityError(f"{path} is readable by others; chmod 600 it")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise IdentityError(f"{path} is not a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_or_create_identity(path: Path) -> Ed25519PrivateKey:
    return load_identity(path) if path.exists() else generate_identity(path)
