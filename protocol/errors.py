"""The one exception type of the wire protocol, with a stable machine code per failure."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable codes: peers, logs and metrics key on these strings, so never rename one."""

    OVERSIZE = "oversize"
    MALFORMED = "malformed"
    TRAILING_BYTES = "trailing_bytes"
    NOT_A_MAP = "not_a_map"
    UNKNOWN_FIELD = "unknown_field"
    DUPLICATE_FIELD = "duplicate_field"
    MISSING_FIELD = "missing_field"
    FORBIDDEN_FIELD = "forbidden_field"
    WRONG_TYPE = "wrong_type"
    OUT_OF_RANGE = "out_of_range"
    NON_FINITE = "non_finite"
    NON_CANONICAL = "non_canonical"
    UNSUPPORTED_VERSION = "unsupported_version"
    BAD_TEXT = "bad_text"
    BAD_DOMAIN = "bad_domain"
    BAD_CODE = "bad_code"
    BAD_KEY = "bad_key"
    BAD_SIGNATURE = "bad_signature"


class ProtocolError(ValueError):
    """A record (or a record being built) breaks wire protocol v1.

    ``code`` is machine-readable and stable; ``str(err)`` is for humans.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
