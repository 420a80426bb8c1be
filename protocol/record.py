"""The DSO experience record and its field rules (wire protocol v1, see SPEC.md).

Constructing an :class:`Experience` validates it, so an invalid record cannot exist in memory:
the decoder and the signer both go through the same checks.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from .errors import ErrorCode, ProtocolError

PROTOCOL_VERSION = 1

MAX_RECORD_BYTES = 8192
MAX_TEXT_BYTES = 1024
MAX_DOMAIN_BYTES = 128
MAX_SOURCE_MODEL_BYTES = 128
MAX_EXAMPLES = 8
MAX_EXAMPLE_FIELD_BYTES = 1024
MAX_CREATED_AT = 2**53 - 1

AUTHOR_BYTES = 32
SPACE_BYTES = 16
ID_BYTES = 32
SIGNATURE_BYTES = 64
CODE_SCALE_BYTES = 4
CODE_SIGN_BYTES = 960
CODE_BYTES = CODE_SCALE_BYTES + CODE_SIGN_BYTES

_DOMAIN_RE = re.compile(r"[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*")
# C0 control characters other than tab and newline, plus DEL: invisible in a prompt, so refused.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class Op(IntEnum):
    ADD = 0
    MODIFY = 1
    REVOKE = 2


@dataclass(frozen=True, slots=True)
class Example:
    """One worked example attached to an experience (DSO format: input, output, correct)."""

    input: str
    output: str
    correct: bool

    def __post_init__(self) -> None:
        for name in ("input", "output"):
            _check_str(f"examples.{name}", getattr(self, name), MAX_EXAMPLE_FIELD_BYTES)
        if type(self.correct) is not bool:
            raise ProtocolError(ErrorCode.WRONG_TYPE, "examples.correct must be a bool")


@dataclass(frozen=True, slots=True)
class Experience:
    """An unsigned experience: what the author states, before the signature.

    ``add`` and ``modify`` carry the lesson (text, domain, confidence, code ...); ``revoke``
    carries only who, when, in which space and which record (``parent``) it withdraws.
    """

    op: Op
    author: bytes
    space: bytes
    created_at: int
    text: str = ""
    domain: str = ""
    confidence: float = 0.0
    examples: tuple[Example, ...] = field(default_factory=tuple)
    source_model: str = ""
    code: bytes | None = None
    parent: bytes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.op, Op):
            if type(self.op) is not int or self.op not in Op._value2member_map_:
                raise ProtocolError(
                    ErrorCode.OUT_OF_RANGE, f"op must be 0, 1 or 2, got {self.op!r}"
                )
            object.__setattr__(self, "op", Op(self.op))
        _check_bytes("author", self.author, AUTHOR_BYTES)
        _check_bytes("space", self.space, SPACE_BYTES)
        if type(self.created_at) is not int:
            raise ProtocolError(ErrorCode.WRONG_TYPE, "created_at must be an int (ms since epoch)")
        if not 0 <= self.created_at <= MAX_CREATED_AT:
            raise ProtocolError(
                ErrorCode.OUT_OF_RANGE, f"created_at out of range: {self.created_at}"
            )
        if not isinstance(self.examples, tuple):
            object.__setattr__(self, "examples", tuple(self.examples))
        if self.op is Op.REVOKE:
            self._check_revoke()
        else:
            self._check_lesson()

    def _check_revoke(self) -> None:
        if self.parent is None:
            raise ProtocolError(ErrorCode.MISSING_FIELD, "revoke needs parent")
        _check_bytes("parent", self.parent, ID_BYTES)
        carried = [
            name
            for name, empty in (
                ("text", ""),
                ("domain", ""),
                ("confidence", 0.0),
                ("examples", ()),
                ("source_model", ""),
                ("code", None),
            )
            if getattr(self, name) != empty
        ]
        if carried:
            raise ProtocolError(ErrorCode.FORBIDDEN_FIELD, f"revoke must not carry {carried}")

    def _check_lesson(self) -> None:
        if self.op is Op.ADD and self.parent is not None:
            raise ProtocolError(ErrorCode.FORBIDDEN_FIELD, "add must not carry parent")
        if self.op is Op.MODIFY:
            if self.parent is None:
                raise ProtocolError(ErrorCode.MISSING_FIELD, "modify needs parent")
            _check_bytes("parent", self.parent, ID_BYTES)
        _check_str("text", self.text, MAX_TEXT_BYTES)
        if not self.text.strip():
            raise ProtocolError(ErrorCode.BAD_TEXT, "text is empty")
        check_domain(self.domain)
        _check_confidence(self)
        if len(self.examples) > MAX_EXAMPLES:
            raise ProtocolError(ErrorCode.OUT_OF_RANGE, f"at most {MAX_EXAMPLES} examples")
        for ex in self.examples:
            if not isinstance(ex, Example):
                raise ProtocolError(ErrorCode.WRONG_TYPE, "examples must be Example objects")
        _check_str("source_model", self.source_model, MAX_SOURCE_MODEL_BYTES)
        if self.code is None:
            raise ProtocolError(ErrorCode.MISSING_FIELD, f"{self.op.name.lower()} needs code")
        check_code(self.code)


def check_text(name: str, value: object, max_bytes: int) -> None:
    """The rules of a record's text fields (a str of valid Unicode, no control characters, at
    most ``max_bytes`` UTF-8 bytes), for text that enters the node outside a record: a query,
    a task. Raises ProtocolError (wrong_type, bad_text, oversize)."""
    _check_str(name, value, max_bytes)


def check_domain(domain: object, name: str = "domain") -> None:
    """A domain (or a domain prefix filter): dotted lowercase words like ``math.geometry``.
    Raises ProtocolError (wrong_type, bad_text, oversize, bad_domain)."""
    _check_str(name, domain, MAX_DOMAIN_BYTES)
    assert isinstance(domain, str)
    if not _DOMAIN_RE.fullmatch(domain):
        raise ProtocolError(
            ErrorCode.BAD_DOMAIN,
            f"{name} must be dotted lowercase words like 'math.geometry', got {domain!r}",
        )


def check_code(code: object) -> float:
    """Check a BitDelta code's framing (length, finite positive scale); return its scale."""
    _check_bytes("code", code, CODE_BYTES, error=ErrorCode.BAD_CODE)
    assert isinstance(code, bytes)
    (scale,) = struct.unpack_from("<f", code)
    if not math.isfinite(scale) or scale <= 0.0:
        raise ProtocolError(ErrorCode.BAD_CODE, f"code scale must be finite and > 0, got {scale}")
    return scale


def _check_confidence(exp: Experience) -> None:
    value = exp.confidence
    if type(value) is int:
        value = float(value)
        object.__setattr__(exp, "confidence", value)
    if type(value) is not float:
        raise ProtocolError(ErrorCode.WRONG_TYPE, "confidence must be a number")
    if not math.isfinite(value):
        raise ProtocolError(ErrorCode.NON_FINITE, "confidence must be finite")
    if not 0.0 <= value <= 1.0:
        raise ProtocolError(ErrorCode.OUT_OF_RANGE, f"confidence must be in [0, 1], got {value}")


def _check_bytes(
    name: str, value: object, length: int, error: ErrorCode = ErrorCode.OUT_OF_RANGE
) -> None:
    if type(value) is not bytes:
        raise ProtocolError(ErrorCode.WRONG_TYPE, f"{name} must be bytes")
    if len(value) != length:
        raise ProtocolError(error, f"{name} must be {length} bytes, got {len(value)}")


def _check_str(name: str, value: object, max_bytes: int) -> None:
    if type(value) is not str:
        raise ProtocolError(ErrorCode.WRONG_TYPE, f"{name} must be a str")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:  # lone surrogates cannot travel as UTF-8
        raise ProtocolError(ErrorCode.BAD_TEXT, f"{name} is not valid Unicode") from exc
    if size > max_bytes:
        raise ProtocolError(ErrorCode.OVERSIZE, f"{name} is {size} bytes, limit {max_bytes}")
    if _CONTROL_RE.search(value):
        raise ProtocolError(ErrorCode.BAD_TEXT, f"{name} contains control characters")
