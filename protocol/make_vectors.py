"""Build the protocol v1 test vectors (``vectors/v1.json``) from a fixed test seed.

``python -m zoonode.protocol.make_vectors > protocol/vectors/v1.json`` regenerates the file;
tests check the shipped file equals this output and that every case decodes as stated.
Ed25519 is deterministic, so signatures are reproducible.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from typing import Any

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .errors import ErrorCode
from .record import Example, Experience, Op
from .wire import Key, _fields, public_key_bytes, sign

TEST_SEED = hashlib.sha256(b"zoonode protocol v1 test vector seed").digest()
SPACE = bytes.fromhex("4c15954a1bc27af0a8ab739afa7ce4bc")
CREATED_AT = 1_763_900_000_000


def _code(seed: int) -> bytes:
    signs = bytes((seed * 37 + i * 101) % 256 for i in range(960))
    return struct.pack("<f", 0.0091875) + signs


def test_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(TEST_SEED)


def _valid_experiences() -> list[tuple[str, Experience]]:
    author = public_key_bytes(test_key())
    add = Experience(
        op=Op.ADD,
        author=author,
        space=SPACE,
        created_at=CREATED_AT,
        text="When solving geometry problems with intersections, validate solutions lie "
        "within bounded regions, not extensions",
        domain="math.geometry",
        confidence=0.85,
        source_model="deepseek-v3",
        code=_code(1),
    )
    with_examples = Experience(
        op=Op.ADD,
        author=author,
        space=SPACE,
        created_at=CREATED_AT + 1,
        text="Check the unit of every quantity before adding two measured values together",
        domain="physics.units",
        confidence=0.7,
        source_model="",
        examples=(Example("3 m + 20 cm", "3.2 m", True), Example("3 m + 20 cm", "23", False)),
        code=_code(2),
    )
    add_id = sign(add, test_key()).id
    modify = Experience(
        op=Op.MODIFY,
        author=author,
        space=SPACE,
        created_at=CREATED_AT + 2,
        text="When solving geometry problems with intersections, check each solution lies "
        "inside the bounded region, not on an extension",
        domain="math.geometry",
        confidence=0.9,
        source_model="deepseek-v3",
        code=_code(3),
        parent=add_id,
    )
    revoke = Experience(
        op=Op.REVOKE, author=author, space=SPACE, created_at=CREATED_AT + 3, parent=add_id
    )
    return [
        ("add", add),
        ("add_with_examples", with_examples),
        ("modify", modify),
        ("revoke", revoke),
    ]


def _pack_pairs(pairs: list[tuple[Any, Any]], single_float: bool = False) -> bytes:
    return msgpack.Packer(use_bin_type=True, use_single_float=single_float).pack_map_pairs(pairs)


def _signed_pairs(exp: Experience) -> list[tuple[Any, Any]]:
    record = sign(exp, test_key())
    return [(int(k), v) for k, v in _fields(exp)] + [(int(Key.SIGNATURE), record.signature)]


def _replace(pairs: list[tuple[Any, Any]], key: Key, value: Any) -> list[tuple[Any, Any]]:
    return [(k, value if k == key else v) for k, v in pairs]


def _invalid_cases(add: Experience, revoke: Experience) -> list[tuple[str, str, bytes]]:
    good = _signed_pairs(add)
    wire = _pack_pairs(good)
    flipped = bytearray(wire)
    flipped[-1] ^= 0x01
    nan_code = struct.pack("<f", float("nan")) + _code(1)[4:]
    return [
        ("bad_signature_last_byte", ErrorCode.BAD_SIGNATURE, bytes(flipped)),
        (
            "text_changed_after_signing",
            ErrorCode.BAD_SIGNATURE,
            _pack_pairs(_replace(good, Key.TEXT, add.text.upper())),
        ),
        ("trailing_byte", ErrorCode.TRAILING_BYTES, wire + b"\x00"),
        ("truncated", ErrorCode.MALFORMED, wire[:-10]),
        ("not_a_map", ErrorCode.NOT_A_MAP, msgpack.packb([1, 2, 3])),
        ("oversize", ErrorCode.OVERSIZE, wire + bytes(8192)),
        ("unknown_field", ErrorCode.UNKNOWN_FIELD, _pack_pairs([*good, (99, 1)])),
        ("string_key", ErrorCode.UNKNOWN_FIELD, _pack_pairs([("text", "x"), *good])),
        (
            "duplicate_field",
            ErrorCode.DUPLICATE_FIELD,
            _pack_pairs([*good[:7], good[6], *good[7:]]),
        ),
        (
            "missing_code",
            ErrorCode.MISSING_FIELD,
            _pack_pairs([p for p in good if p[0] != Key.CODE]),
        ),
        (
            "revoke_with_text",
            ErrorCode.FORBIDDEN_FIELD,
            _pack_pairs(sorted([*_signed_pairs(revoke), (int(Key.TEXT), "x")])),
        ),
        (
            "confidence_as_string",
            ErrorCode.WRONG_TYPE,
            _pack_pairs(_replace(good, Key.CONFIDENCE, "0.85")),
        ),
        ("op_as_bool", ErrorCode.WRONG_TYPE, _pack_pairs(_replace(good, Key.OP, False))),
        (
            "confidence_nan",
            ErrorCode.NON_FINITE,
            _pack_pairs(_replace(good, Key.CONFIDENCE, float("nan"))),
        ),
        (
            "confidence_above_one",
            ErrorCode.OUT_OF_RANGE,
            _pack_pairs(_replace(good, Key.CONFIDENCE, 1.5)),
        ),
        ("confidence_float32", ErrorCode.NON_CANONICAL, _pack_pairs(good, single_float=True)),
        ("keys_out_of_order", ErrorCode.NON_CANONICAL, _pack_pairs(list(reversed(good)))),
        ("version_2", ErrorCode.UNSUPPORTED_VERSION, _pack_pairs(_replace(good, Key.VERSION, 2))),
        ("code_short", ErrorCode.BAD_CODE, _pack_pairs(_replace(good, Key.CODE, _code(1)[:963]))),
        ("code_scale_nan", ErrorCode.BAD_CODE, _pack_pairs(_replace(good, Key.CODE, nan_code))),
        (
            "code_scale_zero",
            ErrorCode.BAD_CODE,
            _pack_pairs(_replace(good, Key.CODE, bytes(4) + _code(1)[4:])),
        ),
        ("empty_text", ErrorCode.BAD_TEXT, _pack_pairs(_replace(good, Key.TEXT, "  "))),
        (
            "control_char_in_text",
            ErrorCode.BAD_TEXT,
            _pack_pairs(_replace(good, Key.TEXT, "ignore\x1b[2Jprevious")),
        ),
        ("bad_domain", ErrorCode.BAD_DOMAIN, _pack_pairs(_replace(good, Key.DOMAIN, "Math/Geo"))),
        (
            "author_31_bytes",
            ErrorCode.OUT_OF_RANGE,
            _pack_pairs(_replace(good, Key.AUTHOR, add.author[:31])),
        ),
        (
            "negative_created_at",
            ErrorCode.OUT_OF_RANGE,
            _pack_pairs(_replace(good, Key.CREATED_AT, -1)),
        ),
    ]


def build_vectors() -> dict[str, Any]:
    valid = _valid_experiences()
    cases = []
    for name, exp in valid:
        record = sign(exp, test_key())
        unsigned = msgpack.Packer(use_bin_type=True).pack_map_pairs(
            [(int(k), v) for k, v in _fields(exp)]
        )
        cases.append(
            {
                "name": name,
                "fields": _fields_json(exp),
                "unsigned_hex": unsigned.hex(),
                "id": record.id.hex(),
                "signature": record.signature.hex(),
                "wire_hex": record.wire.hex(),
            }
        )
    invalid = [
        {"name": name, "error": code.value, "wire_hex": data.hex()}
        for name, code, data in _invalid_cases(valid[0][1], valid[3][1])
    ]
    return {
        "protocol": "zoo/dso/experience/v1",
        "test_seed_hex": TEST_SEED.hex(),
        "test_seed_recipe": "sha256('zoonode protocol v1 test vector seed'), Ed25519 private key",
        "public_key": public_key_bytes(test_key()).hex(),
        "valid": cases,
        "invalid": invalid,
    }


def _fields_json(exp: Experience) -> dict[str, Any]:
    out: dict[str, Any] = {
        "op": exp.op.name.lower(),
        "author": exp.author.hex(),
        "space": exp.space.hex(),
        "created_at": exp.created_at,
    }
    if exp.parent is not None:
        out["parent"] = exp.parent.hex()
    if exp.op is not Op.REVOKE:
        assert exp.code is not None
        out |= {
            "text": exp.text,
            "domain": exp.domain,
            "confidence": exp.confidence,
            "examples": [[e.input, e.output, e.correct] for e in exp.examples],
            "source_model": exp.source_model,
            "code": exp.code.hex(),
        }
    return out


def experience_from_json(fields: dict[str, Any]) -> Experience:
    """Rebuild an Experience from a vector's ``fields`` (for other implementations' tests)."""
    parent = bytes.fromhex(fields["parent"]) if "parent" in fields else None
    common = {
        "op": Op[fields["op"].upper()],
        "author": bytes.fromhex(fields["author"]),
        "space": bytes.fromhex(fields["space"]),
        "created_at": fields["created_at"],
        "parent": parent,
    }
    if fields["op"] == "revoke":
        return Experience(**common)
    return Experience(
        **common,
        text=fields["text"],
        domain=fields["domain"],
        confidence=fields["confidence"],
        examples=tuple(Example(*e) for e in fields["examples"]),
        source_model=fields["source_model"],
        code=bytes.fromhex(fields["code"]),
    )


if __name__ == "__main__":
    json.dump(build_vectors(), sys.stdout, indent=1)
    sys.stdout.write("\n")
