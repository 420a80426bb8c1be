"""The DSO experience record and its field rules (wire protocol v1, see SPEC.md §2).

Constructing an :class:`Experience` validates it, so an invalid record cannot exist in memory:
the decoder and the signer both go through the same checks, in the order SPEC.md §2.5 gives
(op, then the fields the op requires or forbids, then every field's value in key order).

:func:`check_text` is the one text rule of the protocol (text, example strings and
``source_model``); entry layers (HTTP API, CLI, MCP, import) call it so that a fault gets the
same code whether it arrives by a client or by gossip.
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

DOMAIN_PATTERN = r"[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*"
_DOMAIN_RE = re.compile(DOMAIN_PATTERN, re.ASCII)

#: Code points no text field may contain (SPEC §2.3): general category Cc in the C0 block and
#: DEL, except TAB and LF. The C1 controls U+0080..U+009F (also Cc) are allowed in v1.
FORBIDDEN_CODE_POINTS = frozenset([*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F])
#: Blank code points (SPEC §2.3): exactly Unicode's White_Space property (PropList.txt), 25
#: code points. A text made only of these (or empty) is blank.
BLANK_CODE_POINTS = frozenset(
    [
        *range(0x09, 0x0E),
        *(0x20, 0x85, 0xA0, 0x1680),
        *range(0x2000, 0x200B),
        *(0x2028, 0x2029, 0x202F, 0x205F, 0x3000),
    ]
)


def _char_class(code_points: frozenset[int]) -> str:
    return "[" + "".join(f"\\U{c:08x}" for c in sorted(code_points)) + "]"


_FORBIDDEN_RE = re.compile(_char_class(FORBIDDEN_CODE_POINTS))
_BLANK_RE = re.compile(_char_class(BLANK_CODE_POINTS) + "*")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


class Op(IntEnum):
    ADD = 0
    MODIFY = 1
    REVOKE = 2


def is_blank(text: str) -> bool:
    """True if ``text`` is empty or made only of :data:`BLANK_CODE_POINTS` (White_Space)."""
    return _BLANK_RE.fullmatch(text) is not None


def check_text(name: str, value: object, max_bytes: int, *, allow_blank: bool) -> str:
    """The protocol's text rule (SPEC §2.3), in its order; returns ``value``.

    Raises :class:`ProtocolError`: ``wrong_type`` (not a str), ``bad_text`` (not encodable as
    UTF-8, i.e. a lone surrogate), ``oversize`` (over ``max_bytes`` UTF-8 bytes), ``bad_text``
    (a forbidden code point, or blank when ``allow_blank`` is false). ``text`` uses
    ``MAX_TEXT_BYTES`` and ``allow_blank=False``; example strings ``MAX_EXAMPLE_FIELD_BYTES``
    and ``source_model`` ``MAX_SOURCE_MODEL_BYTES``, both with ``allow_blank=True``.
    """
    if type(value) is not str:
        raise ProtocolError(ErrorCode.WRONG_TYPE, f"{name} must be a str")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:  # lone surrogates cannot travel as UTF-8
        raise ProtocolError(ErrorCode.BAD_TEXT, f"{name} is not valid Unicode") from exc
    if size > max_bytes:
        raise ProtocolError(ErrorCode.OVERSIZE, f"{name} is {size} bytes, limit {max_bytes}")
    bad = _FORBIDDEN_RE.search(value)
    if bad:
        raise ProtocolError(
            ErrorCode.BAD_TEXT, f"{name} contains the control character U+{ord(bad.group()):04X}"
        )
    if not allow_blank and is_blank(value):
        raise ProtocolError(ErrorCode.BAD_TEXT, f"{name} is empty or blank")
    return value


def check_domain(value: object) -> str:
    """``wrong_type``, then ``oversize`` (> 128 bytes), then ``bad_domain`` (SPEC §2.2).
    A lone surrogate (text that is not Unicode; it cannot arrive on the wire, where a str is
    UTF-8, but can through an API) is ``bad_text``, as in every text field."""
    if type(value) is not str:
        raise ProtocolError(ErrorCode.WRONG_TYPE, "domain must be a str")
    if _SURROGATE_RE.search(value):
        raise ProtocolError(ErrorCode.BAD_TEXT, "domain is not valid Unicode (a lone surrogate)")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_DOMAIN_BYTES:
        raise ProtocolError(ErrorCode.OVERSIZE, f"domain is {size} bytes, limit {MAX_DOMAIN_BYTES}")
    if not _DOMAIN_RE.fullmatch(value):
        raise ProtocolError(
            ErrorCode.BAD_DOMAIN,
            f"domain must be dotted lowercase words like 'math.geometry', got {value!r}",
        )
    return value


@dataclass(frozen=True, slots=True)
class Example:
    """One worked example attached to an experience (DSO format: input, output, correct).

    ``input`` and ``output`` follow the text rule and may be empty or blank."""

    input: str
    output: str
    correct: bool

    def __post_init__(self) -> None:
        for name in ("input", "output"):
            check_text(
                f"examples.{name}", getattr(self, name), MAX_EXAMPLE_FIELD_BYTES, allow_blank=True
            )
        if type(self.correct) is not bool:
            raise ProtocolError(ErrorCode.WRONG_TYPE, "examples.correct must be a bool")

    @classmethod
    def from_item(cls, item: object) -> Example:
        """An example from its wire form ``[input, output, correct]`` (or an Example)."""
        if isinstance(item, Example):
            return item
        if type(item) not in (list, tuple) or len(item) != 3:  # type: ignore[arg-type]
            raise ProtocolError(ErrorCode.WRONG_TYPE, "an example is [input, output, correct]")
        return cls(*item)  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class Experience:
    """An unsigned experience: what the author states, before the signature.

    ``add`` and ``modify`` carry the lesson (text, domain, confidence, code ...); ``revoke``
    carries only who, when, in which space and which record (``parent``) it withdraws.
    ``examples`` may be given as Example objects or as ``[input, output, correct]`` items.
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
            if type(self.op) is not int:
                raise ProtocolError(ErrorCode.WRONG_TYPE, f"op must be an int, got {self.op!r}")
            if self.op not in Op._value2member_map_:
                raise ProtocolError(
                    ErrorCode.OUT_OF_RANGE, f"op must be 0, 1 or 2, got {self.op!r}"
                )
            object.__setattr__(self, "op", Op(self.op))
        if not isinstance(self.examples, tuple):
            if not isinstance(self.examples, list):
                raise ProtocolError(ErrorCode.WRONG_TYPE, "examples must be a list")
            object.__setattr__(self, "examples", tuple(self.examples))
        self._check_structure()
        # Values in key order (SPEC §2.5, step 4).
        _check_bytes("author", self.author, AUTHOR_BYTES)
        _check_bytes("space", self.space, SPACE_BYTES)
        if type(self.created_at) is not int:
            raise ProtocolError(ErrorCode.WRONG_TYPE, "created_at must be an int (ms since epoch)")
        if not 0 <= self.created_at <= MAX_CREATED_AT:
            raise ProtocolError(
                ErrorCode.OUT_OF_RANGE, f"created_at out of range: {self.created_at}"
            )
        if self.parent is not None:
            _check_bytes("parent", self.parent, ID_BYTES)
        if self.op is Op.REVOKE:
            return
        check_text("text", self.text, MAX_TEXT_BYTES, allow_blank=False)
        check_domain(self.domain)
        _check_confidence(self)
        if len(self.examples) > MAX_EXAMPLES:
            raise ProtocolError(
                ErrorCode.OUT_OF_RANGE, f"{len(self.examples)} examples, at most {MAX_EXAMPLES}"
            )
        object.__setattr__(self, "examples", tuple(Example.from_item(e) for e in self.examples))
        check_text("source_model", self.source_model, MAX_SOURCE_MODEL_BYTES, allow_blank=True)
        check_code(self.code)

    def _check_structure(self) -> None:
        """Missing, then forbidden fields for the op (SPEC §2.5, step 3)."""
        op = self.op.name.lower()
        if self.op is not Op.ADD and self.parent is None:
            raise ProtocolError(ErrorCode.MISSING_FIELD, f"{op} needs parent")
        if self.op is Op.REVOKE:
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
            return
        if self.code is None:
            raise ProtocolError(ErrorCode.MISSING_FIELD, f"{op} needs code")
        if self.op is Op.ADD and self.parent is not None:
            raise ProtocolError(ErrorCode.FORBIDDEN_FIELD, "add must not carry parent")


def check_code(code: object) -> float:
    """Check a BitDelta code's framing; return its scale. ``wrong_type`` (not bytes),
    ``out_of_range`` (not 964 bytes), ``bad_code`` (scale not finite or not > 0)."""
    _check_bytes("code", code, CODE_BYTES)
    assert isinstance(code, bytes)
    (scale,) = struct.unpack_from("<f", code)
    if not math.isfinite(scale) or scale <= 0.0:
        raise ProtocolError(ErrorCode.BAD_CODE, f"code scale must be finite and > 0, got {scale}")
    return scale


def _check_confidence(exp: Experience) -> None:
    value = exp.confidence
    if type(value) is int:  # a client's 1 means 1.0; on the wire an int is wrong_type
        value = float(value)
        object.__setattr__(exp, "confidence", value)
    if type(value) is not float:
        raise ProtocolError(ErrorCode.WRONG_TYPE, "confidence must be a number")
    if not math.isfinite(value):
        raise ProtocolError(ErrorCode.NON_FINITE, "confidence must be finite")
    if not 0.0 <= value <= 1.0:
        raise ProtocolError(ErrorCode.OUT_OF_RANGE, f"confidence must be in [0, 1], got {value}")


def _check_bytes(name: str, value: object, length: int) -> None:
    """Fixed-length byte fields: ``wrong_type`` unless bytes, ``out_of_range`` unless
    exactly ``length`` long (every bin field alike, signature included: SPEC §2.2)."""
    if type(value) is not bytes:
        raise ProtocolError(ErrorCode.WRONG_TYPE, f"{name} must be bytes")
    if len(value) != length:
        raise ProtocolError(
            ErrorCode.OUT_OF_RANGE, f"{name} must be {length} bytes, got {len(value)}"
        )
