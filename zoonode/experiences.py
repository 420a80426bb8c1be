"""Build signed experiences from text: encode -> BitDelta code -> canonical record -> sign.

Pure apart from the encoder's compute: the caller supplies the clock and the key.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zoonode.native.codec import compress_many
from zoonode.native.encoder import Encoder
from zoonode.protocol import Example, Experience, Op, SignedRecord, public_key_bytes, sign


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def create_experiences(
    encoder: Encoder,
    key: Ed25519PrivateKey,
    items: Sequence[dict],
    created_at: int | None = None,
) -> list[SignedRecord]:
    """Sign many lessons at once (one batched encode). Each item: text, domain, confidence,
    and optionally examples [{input, output, correct}], source_model, parent (modify)."""
    compact = encoder.encode_compact([item["text"] for item in items])
    return sign_lessons(encoder, key, items, compact, created_at)


def sign_lessons(
    encoder: Encoder,
    key: Ed25519PrivateKey,
    items: Sequence[dict],
    compact: np.ndarray,
    created_at: int | None = None,
) -> list[SignedRecord]:
    """Like create_experiences, with the texts' compact vectors already computed."""
    vectors = encoder.lift(compact)
    codes = compress_many(vectors, encoder.space_info.v_ref)
    author = public_key_bytes(key)
    stamp = now_ms() if created_at is None else created_at
    records = []
    for item, code in zip(items, codes, strict=True):
        parent = item.get("parent")
        exp = Experience(
            op=Op.MODIFY if parent else Op.ADD,
            author=author,
            space=encoder.space,
            created_at=stamp,
            text=item["text"],
            domain=item["domain"],
            confidence=item.get("confidence", 0.5),
            examples=tuple(Example(**e) for e in item.get("examples", ())),
            source_model=item.get("source_model", ""),
            code=code,
            parent=parent,
        )
        records.append(sign(exp, key))
    return records


def create_experience(
    encoder: Encoder,
    key: Ed25519PrivateKey,
    text: str,
    domain: str,
    confidence: float = 0.5,
    **extra: object,
) -> SignedRecord:
    return create_experiences(
        encoder, key, [{"text": text, "domain": domain, "confidence": confidence, **extra}]
    )[0]


def create_revocation(
    key: Ed25519PrivateKey, space: bytes, parent: bytes, created_at: int | None = None
) -> SignedRecord:
    exp = Experience(
        op=Op.REVOKE,
        author=public_key_bytes(key),
        space=space,
        created_at=now_ms() if created_at is None else created_at,
        parent=parent,
    )
    return sign(exp, key)


_PLACEHOLDER_CODE = struct.pack("<f", 1.0) + bytes(960)
_CHECK_KEY = Ed25519PrivateKey.from_private_bytes(bytes(32))  # signs nothing that leaves here


def check_lesson(item: dict, space: bytes) -> None:
    """Raise ProtocolError/TypeError/ValueError if ``item`` could not be signed as a lesson:
    the same checks as signing, the record-size limit included, without encoding the text (a
    batch rejects one bad item early and keeps the others)."""
    exp = Experience(
        op=Op.MODIFY if item.get("parent") else Op.ADD,
        author=public_key_bytes(_CHECK_KEY),
        space=space,
        created_at=now_ms(),
        text=item["text"],
        domain=item["domain"],
        confidence=item.get("confidence", 0.5),
        examples=tuple(Example(**e) for e in item.get("examples", ())),
        source_model=item.get("source_model", ""),
        code=_PLACEHOLDER_CODE,
        parent=item.get("parent"),
    )
    sign(exp, _CHECK_KEY)  # a code of the same size as the real one: the same wire length
