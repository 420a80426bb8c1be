"""DSO experience wire protocol v1 (``zoonode.protocol``): pure functions, no I/O.

See ``SPEC.md`` beside this file for the normative description and ``vectors/`` for test
vectors another implementation can check itself against.
"""

from .errors import ErrorCode, ProtocolError
from .record import (
    AUTHOR_BYTES,
    CODE_BYTES,
    CODE_SCALE_BYTES,
    CODE_SIGN_BYTES,
    ID_BYTES,
    MAX_RECORD_BYTES,
    MAX_TEXT_BYTES,
    PROTOCOL_VERSION,
    SIGNATURE_BYTES,
    SPACE_BYTES,
    Example,
    Experience,
    Op,
    check_code,
    check_domain,
    check_text,
)
from .view import record_to_dict
from .wire import (
    SIGNING_PREFIX,
    Key,
    SignedRecord,
    content_id,
    decode,
    encode_unsigned,
    public_key_bytes,
    sign,
    signing_message,
)

__all__ = [
    "AUTHOR_BYTES",
    "CODE_BYTES",
    "CODE_SCALE_BYTES",
    "CODE_SIGN_BYTES",
    "ID_BYTES",
    "MAX_RECORD_BYTES",
    "MAX_TEXT_BYTES",
    "PROTOCOL_VERSION",
    "SIGNATURE_BYTES",
    "SIGNING_PREFIX",
    "SPACE_BYTES",
    "ErrorCode",
    "Example",
    "Experience",
    "Key",
    "Op",
    "ProtocolError",
    "SignedRecord",
    "check_code",
    "check_domain",
    "check_text",
    "content_id",
    "decode",
    "encode_unsigned",
    "public_key_bytes",
    "record_to_dict",
    "sign",
    "signing_message",
]
