"""The DSO feedback record (wire protocol v1, SPEC.md §8): an agent's signed verdict on an
experience it used.

A second record type beside the experience, with its own key table, its own signing prefix
``zoo/dso/feedback/v1`` (so that no signature of one type ever verifies as the other), its own
gossip topic and sync ``type`` (NETWORK.md §4.1, §6). The rules shared by every type apply
unchanged: integer keys, canonical msgpack checked by re-encoding, content id = SHA-256 of the
unsigned bytes, libsodium's strict Ed25519 rule, one error code per invalid record in the order
of SPEC.md §8.3.

The verdict is one of three integers: +1 *helpful*, -1 *harmful*, 0 *withdrawn* (cancels the
voter's earlier verdict on the same target: one verdict stands per voter and target, the
latest). Not a float reward: what an agent observes is whether the lesson helped or misled it
on its task; a continuous reward would ask agents of different models to agree on a scale they
cannot calibrate, and would bring floats (NaN, -0.0, float 32) into a record that needs none.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .errors import ErrorCode, ProtocolError
from .record import AUTHOR_BYTES, ID_BYTES, MAX_CREATED_AT, SPACE_BYTES
from .wire import _pack, _unpack_pairs, check_pairs, check_seal, public_key_bytes

FEEDBACK_VERSION = 1
FEEDBACK_SIGNING_PREFIX = b"zoo/dso/feedback/v1"
MAX_FEEDBACK_BYTES = 256  # the largest valid feedback record is 206 bytes
TASK_BYTES = 32


class FeedbackVerdict(IntEnum):
    """What the voter says of the target experience."""

    HARMFUL = -1
    WITHDRAWN = 0
    HELPFUL = 1

    @property
    def label(self) -> str:
        return self.name.lower()


class FeedbackKey(IntEnum):
    """Integer map keys of the feedback record, in their canonical order."""

    VERSION = 0
    VOTER = 1
    SPACE = 2
    CREATED_AT = 3
    TARGET = 4
    VERDICT = 5
    TASK = 6
    SIGNATURE = 7


_TYPES: dict[FeedbackKey, type] = {
    FeedbackKey.VERSION: int,
    FeedbackKey.VOTER: bytes,
    FeedbackKey.SPACE: bytes,
    FeedbackKey.CREATED_AT: int,
    FeedbackKey.TARGET: bytes,
    FeedbackKey.VERDICT: int,
    FeedbackKey.TASK: bytes,
    FeedbackKey.SIGNATURE: bytes,
}
_REQUIRED = set(FeedbackKey) - {FeedbackKey.TASK}


def _check_bytes(name: str, value: object, length: int) -> None:
    if type(value) is not bytes:
        raise ProtocolError(ErrorCode.WRONG_TYPE, f"{name} must be bytes")
    if len(value) != length:
        raise ProtocolError(
            ErrorCode.OUT_OF_RANGE, f"{name} must be {length} bytes, got {len(value)}"
        )


@dataclass(frozen=True, slots=True)
class Feedback:
    """An unsigned verdict: ``voter`` (Ed25519 public key) says ``verdict`` of the experience
    ``target`` (its 32-byte id) at ``created_at`` (ms since the epoch, the voter's clock), in
    ``space``; ``task`` optionally names the task it was used on (32 bytes, e.g. the SHA-256
    of the task text: lets a voter rate one lesson once per task without revealing the task).

    Constructing one validates it (SPEC.md §8.3 step 5): ``wrong_type``, ``out_of_range``."""

    voter: bytes
    space: bytes
    created_at: int
    target: bytes
    verdict: FeedbackVerdict
    task: bytes | None = None

    def __post_init__(self) -> None:
        _check_bytes("voter", self.voter, AUTHOR_BYTES)
        _check_bytes("space", self.space, SPACE_BYTES)
        if type(self.created_at) is not int:
            raise ProtocolError(ErrorCode.WRONG_TYPE, "created_at must be an int (ms since epoch)")
        if not 0 <= self.created_at <= MAX_CREATED_AT:
            raise ProtocolError(
                ErrorCode.OUT_OF_RANGE, f"created_at out of range: {self.created_at}"
            )
        _check_bytes("target", self.target, ID_BYTES)
        verdict = self.verdict
        if not isinstance(verdict, FeedbackVerdict):
            if type(verdict) is not int:
                raise ProtocolError(ErrorCode.WRONG_TYPE, "verdict must be an int")
            if verdict not in FeedbackVerdict._value2member_map_:
                raise ProtocolError(
                    ErrorCode.OUT_OF_RANGE, f"verdict must be -1, 0 or 1, got {verdict}"
                )
            object.__setattr__(self, "verdict", FeedbackVerdict(verdict))
        if self.task is not None:
            _check_bytes("task", self.task, TASK_BYTES)


@dataclass(frozen=True, slots=True)
class SignedFeedback:
    """A feedback record with its voter's signature; ``wire`` is its canonical encoding."""

    feedback: Feedback
    signature: bytes
    id: bytes
    wire: bytes

    @property
    def id_hex(self) -> str:
        return self.id.hex()


def _fields(fb: Feedback) -> list[tuple[FeedbackKey, Any]]:
    pairs: list[tuple[FeedbackKey, Any]] = [
        (FeedbackKey.VERSION, FEEDBACK_VERSION),
        (FeedbackKey.VOTER, fb.voter),
        (FeedbackKey.SPACE, fb.space),
        (FeedbackKey.CREATED_AT, fb.created_at),
        (FeedbackKey.TARGET, fb.target),
        (FeedbackKey.VERDICT, int(fb.verdict)),
    ]
    if fb.task is not None:
        pairs.append((FeedbackKey.TASK, fb.task))
    return pairs


def encode_feedback_unsigned(fb: Feedback) -> bytes:
    """The canonical bytes the content id is computed over (no signature field)."""
    return _pack(_fields(fb))


def feedback_content_id(fb: Feedback) -> bytes:
    return hashlib.sha256(encode_feedback_unsigned(fb)).digest()


def feedback_signing_message(record_id: bytes) -> bytes:
    """``zoo/dso/feedback/v1`` (19 ASCII bytes) followed by the 32-byte content id."""
    return FEEDBACK_SIGNING_PREFIX + record_id


def sign_feedback(fb: Feedback, key: Ed25519PrivateKey) -> SignedFeedback:
    """Sign ``fb`` with the voter's key (``bad_key`` if it is not the voter's)."""
    if public_key_bytes(key) != fb.voter:
        raise ProtocolError(ErrorCode.BAD_KEY, "signing key does not match the voter")
    record_id = feedback_content_id(fb)
    signature = key.sign(feedback_signing_message(record_id))
    wire = _pack([*_fields(fb), (FeedbackKey.SIGNATURE, signature)])
    return SignedFeedback(fb, signature, record_id, wire)


def decode_feedback(data: bytes) -> SignedFeedback:
    """Strictly decode and verify one feedback record. Raises only :class:`ProtocolError`.

    SPEC.md §8.3's order: 1. size (over 256 bytes: ``oversize``), 2. msgpack (``malformed``,
    ``trailing_bytes``, ``not_a_map``), 3. pairs in wire order (``unknown_field``,
    ``duplicate_field``, ``wrong_type``), 4. version, then missing fields, 5. values in key
    order (``out_of_range``), 6. canonical form (``non_canonical``), 7. the signature
    (``bad_signature``)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(ErrorCode.WRONG_TYPE, "record must be bytes")
    data = bytes(data)
    if len(data) > MAX_FEEDBACK_BYTES:
        raise ProtocolError(
            ErrorCode.OVERSIZE, f"feedback is {len(data)} bytes, limit {MAX_FEEDBACK_BYTES}"
        )
    values = check_pairs(_unpack_pairs(data), FeedbackKey, _TYPES)
    if FeedbackKey.VERSION not in values:
        raise ProtocolError(ErrorCode.MISSING_FIELD, "missing field version")
    if values[FeedbackKey.VERSION] != FEEDBACK_VERSION:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"feedback version {values[FeedbackKey.VERSION]} is not 1",
        )
    missing = _REQUIRED - set(values)
    if missing:
        names = sorted(k.name.lower() for k in missing)
        raise ProtocolError(ErrorCode.MISSING_FIELD, f"feedback is missing {names}")
    fb = Feedback(
        voter=values[FeedbackKey.VOTER],
        space=values[FeedbackKey.SPACE],
        created_at=values[FeedbackKey.CREATED_AT],
        target=values[FeedbackKey.TARGET],
        verdict=values[FeedbackKey.VERDICT],
        task=values.get(FeedbackKey.TASK),
    )
    signature = values[FeedbackKey.SIGNATURE]
    canonical = _pack([*_fields(fb), (FeedbackKey.SIGNATURE, signature)])
    record_id = check_seal(
        data, canonical, encode_feedback_unsigned(fb), fb.voter, signature, feedback_signing_message
    )
    return SignedFeedback(fb, signature, record_id, data)


def feedback_to_dict(record: SignedFeedback) -> dict[str, Any]:
    """A JSON-ready view of a signed feedback record."""
    fb = record.feedback
    out: dict[str, Any] = {
        "id": record.id.hex(),
        "voter": fb.voter.hex(),
        "space": fb.space.hex(),
        "created_at": fb.created_at,
        "created_at_iso": datetime.fromtimestamp(fb.created_at / 1000, UTC).isoformat(),
        "target": fb.target.hex(),
        "verdict": fb.verdict.label,
    }
    if fb.task is not None:
        out["task"] = fb.task.hex()
    return out | {"signature": record.signature.hex(), "size": len(record.wire)}
