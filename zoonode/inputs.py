"""One parsing and validation layer for what clients send, whatever the entry: HTTP bodies
(``api``), import lines (``transfer``), MCP messages and prompt arguments (``mcpserver``).

Pure: bytes or text in, typed values out, or an :class:`InputError` carrying an HTTP status, a
stable ``code`` (the ``error.code`` of the API's JSON errors, listed in ``openapi.json`` under
``x-error-codes``) and a message for humans. The same fault gets the same code from every
entry point.

- JSON (:func:`parse_json`): UTF-8 only (else ``bad_text``), at most :data:`MAX_DEPTH` levels
  of nesting (else ``bad_json``, never a ``RecursionError``), any number literal accepted as a
  value (10^400 stays an exact int, 1e309 and NaN become floats) so that the *field* that holds
  it reports ``out_of_range`` or ``non_finite`` and, in a batch, only that item fails.
- Fields (pydantic v2 models, strict types, no unknown keys): ``missing_field``,
  ``wrong_type``, ``out_of_range``, ``non_finite``, ``unknown_field``.
- Record fields (text, domain, confidence, examples, size): the wire protocol's own checks
  (:func:`zoonode.experiences.check_lesson`, ``protocol.check_text``, ``protocol.check_domain``),
  so a lesson is refused here for exactly the reasons a peer would refuse it: ``bad_text``,
  ``bad_domain``, ``oversize``, ...
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from zoonode.protocol import ProtocolError, check_domain, check_text

MAX_DEPTH = 32  # JSON nesting; the deepest real body (a batch of lessons with examples) is 4
ENVELOPE_DEPTH = 2  # a batch body's own levels around its items: {"experiences": [item, ...]}
MAX_QUERY_BYTES = 16 * 1024  # a query or task text, UTF-8 (the encoder reads ~256 tokens)
MAX_K = 50


class InputError(ValueError):
    """Refused input: ``status`` (HTTP), ``code`` (stable, machine-readable), ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message

    def as_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


def from_protocol(exc: ProtocolError) -> InputError:
    return InputError(422, exc.code.value, exc.message)


# -- JSON ---------------------------------------------------------------------------------------
def _parse_int(digits: str) -> int:
    try:
        return int(digits)
    except ValueError:  # over sys.get_int_max_str_digits(): an int of the same magnitude
        magnitude = 1 << int(len(digits.lstrip("-")) * math.log2(10))
        return -magnitude if digits.startswith("-") else magnitude


def parse_json(data: bytes | str, what: str = "body", max_depth: int = MAX_DEPTH) -> Any:
    """Decode one JSON document. Raises InputError: ``bad_text`` (422) for bytes that are not
    UTF-8, ``bad_json`` (400) for a syntax error or nesting deeper than ``max_depth`` (a batch
    body passes MAX_DEPTH + ENVELOPE_DEPTH, so that each of its items may nest as deep as a
    body of its own)."""
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                422, "bad_text", f"{what} is not valid UTF-8 (byte {exc.start})"
            ) from None
    else:
        text = data
    too_deep = InputError(400, "bad_json", f"{what} is nested deeper than {max_depth} levels")
    try:
        value = json.loads(text, parse_int=_parse_int, parse_constant=float)
    except RecursionError:  # the C scanner refuses depth ~1000 cleanly
        raise too_deep from None
    except json.JSONDecodeError as exc:
        raise InputError(
            400, "bad_json", f"{what} is not JSON: {exc.msg} (line {exc.lineno} column {exc.colno})"
        ) from None
    if _deeper_than(value, max_depth):
        raise too_deep
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def parse_object(
    data: bytes | str, what: str = "body", max_depth: int = MAX_DEPTH
) -> dict[str, Any]:
    value = parse_json(data, what, max_depth)
    if not isinstance(value, dict):
        raise InputError(400, "bad_json", f"{what} must be a JSON object, got {kind_of(value)}")
    return value


def invalid_unicode_at(value: Any, path: str = "") -> str | None:
    """The path of the first string (key or value) in a decoded JSON value that is not valid
    Unicode (a lone surrogate, from a ``\\ud800`` escape or an undecodable argv byte), else
    None. Such a string cannot be written back as UTF-8."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            if not _encodable(node):
                return where or "value"
        elif isinstance(node, dict):
            for key, child in node.items():
                name = f"{where}.{key}" if where else str(key)
                if isinstance(key, str) and not _encodable(key):
                    return where or "a key"
                stack.append((child, name))
        elif isinstance(node, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(node))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- fields -------------------------------------------------------------------------------------
def _query_text(name: str):
    def check(value: str) -> str:
        return check_text(name, value, MAX_QUERY_BYTES, allow_blank=False)

    return AfterValidator(check)


def _domain(value: str) -> str:
    check_domain(value)
    return value


Domain = Annotated[str, AfterValidator(_domain)]
K = Annotated[int, Field(ge=1, le=MAX_K)]
Confidence = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class _Strict(BaseModel):
    """No coercion ("0.5" is not a number, true is not 1); an unknown key is refused
    (``unknown_field``, 422): a typo (``taks``) would otherwise drop what it held unseen."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ExampleIn(_Strict):
    input: str
    output: str
    correct: bool


class LessonIn(_Strict):
    """``POST /v1/experiences`` and each item of ``/v1/experiences/batch``. Types only: the
    record rules are the protocol's (:func:`lesson`)."""

    text: str
    domain: str
    confidence: float | None = None  # null or absent: 0.5
    examples: list[ExampleIn] | None = None
    source_model: str | None = None


class QueryIn(_Strict):
    """``POST /v1/query``."""

    text: Annotated[str, _query_text("text")]
    k: K | None = None
    domain: Domain | None = None
    min_confidence: Confidence | None = None
    federated: bool = False


class ContextIn(_Strict):
    """``POST /v1/context``: a query whose text is the task."""

    task: Annotated[str, _query_text("task")]
    k: K | None = None
    domain: Domain | None = None
    min_confidence: Confidence | None = None
    federated: bool = False


Verdict = Literal["helpful", "harmful", "withdrawn"]  # a feedback record's -1, 0, 1 in words


class FeedbackIn(_Strict):
    """``POST /v1/experiences/{id}/feedback``: an agent's verdict on a lesson it used;
    ``task`` (optional) is the task text, sent as its SHA-256 only."""

    verdict: Verdict
    task: Annotated[str, _query_text("task")] | None = None


def validate(model: type[_Strict], value: Any, where: str = "") -> Any:
    """``model`` from a decoded JSON value, or InputError (422) naming the field."""
    if not isinstance(value, dict):
        raise InputError(
            422, "wrong_type", f"{where or 'body'} must be an object, got {kind_of(value)}"
        )
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise validation_error(exc, where) from None


def lesson(value: Any, space: bytes, where: str = "") -> dict[str, Any]:
    """A lesson item (text, domain, confidence, examples, source_model) checked by the types
    and then by every rule of signing a record, or InputError."""
    from zoonode.experiences import check_lesson

    parsed: LessonIn = validate(LessonIn, value, where)
    item = {
        "text": parsed.text,
        "domain": parsed.domain,
        "confidence": 0.5 if parsed.confidence is None else parsed.confidence,
        "examples": [e.model_dump() for e in parsed.examples or ()],
        "source_model": parsed.source_model or "",
    }
    try:
        check_lesson(item, space)
    except ProtocolError as exc:
        raise from_protocol(exc) from None
    return item


def k_argument(value: Any, name: str = "k") -> int:
    """A k given as text (MCP prompt arguments are strings) or a number."""
    if isinstance(value, str):
        # ASCII digits only: int() also takes "1_0" and other scripts' digits ("\u0665" is 5)
        digits = re.fullmatch(r"\s*([+-]?[0-9]+)\s*", value, re.ASCII)
        try:
            number = int(digits[1]) if digits else None
        except ValueError:  # over sys.get_int_max_str_digits()
            number = None
        if number is None:
            raise InputError(422, "wrong_type", f"{name} must be an integer, got {_show(value)}")
        value = number
    if type(value) is not int:
        raise InputError(422, "wrong_type", f"{name} must be an integer, got {kind_of(value)}")
    if not 1 <= value <= MAX_K:
        raise InputError(422, "out_of_range", f"{name} must be in 1..{MAX_K}, got {_show(value)}")
    return value


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}
_BOUND = {
    "greater_than_equal": ("ge", "at least"),
    "greater_than": ("gt", "more than"),
    "less_than_equal": ("le", "at most"),
    "less_than": ("lt", "less than"),
}


def validation_error(exc: ValidationError, where: str = "") -> InputError:
    """The first error pydantic found, as the InputError of the API's codes."""
    err = exc.errors(include_url=False)[0]
    path = _path(where, err["loc"])
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    cause = ctx.get("error")
    if isinstance(cause, InputError):
        return cause
    if isinstance(cause, ProtocolError):
        return from_protocol(cause)
    if kind == "extra_forbidden":
        return _unknown_field(path)
    null = value is None and kind.endswith(("_type", "literal_error"))
    if kind == "missing" or null:  # null: absent
        return _missing_field(path)
    if kind == "finite_number":
        return InputError(422, "non_finite", f"{path} must be a finite number, got {_show(value)}")
    if kind in _BOUND:
        key, words = _BOUND[kind]
        return InputError(
            422, "out_of_range", f"{path} must be {words} {ctx.get(key)}, got {_show(value)}"
        )
    if kind == "literal_error":  # one of a few words (a verdict); as the wire's verdict and op,
        if not isinstance(value, str):  # a value outside the set is out_of_range
            return InputError(422, "wrong_type", f"{path} must be a string, got {kind_of(value)}")
        choices = str(ctx.get("expected", "")).replace(" or ", ", ")
        return InputError(
            422, "out_of_range", f"{path} must be one of {choices}, got {_show(value)}"
        )
    if kind == "float_type" and type(value) is int:  # an int too large for a float
        return InputError(422, "out_of_range", f"{path} is out of range: {_show(value)}")
    expected = _EXPECTED.get(kind)
    if expected:
        return InputError(422, "wrong_type", f"{path} must be {expected}, got {kind_of(value)}")
    return InputError(422, "wrong_type", f"{path}: {err['msg']}")


def check_fields(
    value: dict[str, Any], fields: Iterable[str], required: Iterable[str] = (), where: str = ""
) -> None:
    """The body models' key rules for arguments that reach no model of this module (MCP tool
    and prompt arguments, a batch body's envelope): a key not in ``fields`` is
    ``unknown_field``, a ``required`` one absent or null is ``missing_field`` (422), worded
    as :func:`validate` words them."""
    allowed = set(fields)
    for key in value:
        if key not in allowed:
            raise _unknown_field(_path(where, (key,)))
    for key in required:
        if value.get(key) is None:
            raise _missing_field(_path(where, (key,)))


def _unknown_field(path: str) -> InputError:
    return InputError(422, "unknown_field", f"{path} is not a field of this request")


def _missing_field(path: str) -> InputError:
    return InputError(422, "missing_field", f"{path} is required")


def _path(where: str, loc: tuple) -> str:
    out = where
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {_show(value)}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _show(value: Any) -> str:
    """A value for a message: short, ASCII, never a 400-digit number or a lone surrogate."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**15:
        return f"a {int(value.bit_length() * math.log10(2)) + 1}-digit integer"
    if isinstance(value, str):
        shown = ascii(value[:40])
        return shown if len(value) <= 40 else shown[:-1] + "...'"
    return ascii(value)
