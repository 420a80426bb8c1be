# ruff: noqa: E501  (the vector tables keep one case per line)
"""Build the protocol v1 conformance vectors from a fixed test seed.

``python -m zoonode.protocol.make_vectors`` rewrites both files in ``protocol/vectors/``:

- ``v1.json``: records (SPEC.md): valid records with every intermediate byte string, edge
  records that MUST be accepted, and invalid records with the one error code each must get;
- ``feedback-v1.json``: feedback records (SPEC.md §8), valid, edge and invalid as above;
- ``network-v1.json``: the network layer (NETWORK.md): topic and protocol ids, gossip
  messages with their message ids and verdicts, and sync and query requests and answers as
  frames.

``--check`` compares instead of writing (exit 1 on a difference). Tests check that the
shipped files equal this output byte for byte and that the node and the decoder do what each
vector says. Ed25519 is deterministic, so every signature is reproducible. Everything here is
built from the spec's rules with msgpack directly, not with the node's network code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
from pathlib import Path
from typing import Any

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .errors import ErrorCode
from .feedback import (
    FEEDBACK_SIGNING_PREFIX,
    Feedback,
    FeedbackKey,
    FeedbackVerdict,
    encode_feedback_unsigned,
    sign_feedback,
)
from .feedback import _fields as _feedback_fields
from .record import Example, Experience, Op
from .wire import SIGNING_PREFIX, Key, _fields, content_id, encode_unsigned, public_key_bytes, sign

TEST_SEED = hashlib.sha256(b"zoonode protocol v1 test vector seed").digest()
SPACE = bytes.fromhex("4c15954a1bc27af0a8ab739afa7ce4bc")  # the shipped space (space-v1.json)
CREATED_AT = 1_763_900_000_000
ED25519_L = 2**252 + 27742317777372353535851937790883648493
ED25519_P = 2**255 - 19
VECTORS_DIR = Path(__file__).resolve().parent / "vectors"
RECORDS_FILE = "v1.json"
FEEDBACK_FILE = "feedback-v1.json"
NETWORK_FILE = "network-v1.json"


def _code(seed: int) -> bytes:
    signs = bytes((seed * 37 + i * 101) % 256 for i in range(960))
    return struct.pack("<f", 0.0091875) + signs


def test_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(TEST_SEED)


def _lesson(**changes: Any) -> Experience:
    fields: dict[str, Any] = dict(
        op=Op.ADD,
        author=public_key_bytes(test_key()),
        space=SPACE,
        created_at=CREATED_AT,
        text="When solving geometry problems with intersections, validate solutions lie "
        "within bounded regions, not extensions",
        domain="math.geometry",
        confidence=0.85,
        source_model="deepseek-v3",
        code=_code(1),
    )
    fields.update(changes)
    return Experience(**fields)


def _valid_experiences() -> list[tuple[str, Experience]]:
    author = public_key_bytes(test_key())
    add = _lesson()
    with_examples = _lesson(
        created_at=CREATED_AT + 1,
        text="Check the unit of every quantity before adding two measured values together",
        domain="physics.units",
        confidence=0.7,
        source_model="",
        examples=(Example("3 m + 20 cm", "3.2 m", True), Example("3 m + 20 cm", "23", False)),
        code=_code(2),
    )
    add_id = sign(add, test_key()).id
    modify = _lesson(
        op=Op.MODIFY,
        created_at=CREATED_AT + 2,
        text="When solving geometry problems with intersections, check each solution lies "
        "inside the bounded region, not on an extension",
        confidence=0.9,
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


def _edge_valid() -> list[tuple[str, str, Experience]]:
    """Records at the edges of the rules that a decoder MUST accept."""
    ex = Example
    return [
        ("c1_controls_allowed", "U+0085 and U+009F are Cc but not forbidden in v1", _lesson(
            text="Split log lines on NEL\u0085 too, and strip the \u009f byte")),
        ("tab_and_lf_allowed", "TAB and LF are the allowed C0 controls", _lesson(
            text="Indent with\ta tab,\nthen a new line")),
        ("bom_only_text_not_blank", "U+FEFF is not White_Space: not blank", _lesson(
            text="\ufeff")),
        ("zero_width_only_text_not_blank", "U+200B is not White_Space: not blank", _lesson(
            text="\u200b\u200d")),
        ("text_1024_bytes", "exactly the byte limit, in 3-byte characters", _lesson(
            text="\u20ac" * 341 + "a")),
        ("domain_128_bytes", "exactly the byte limit", _lesson(
            domain="a" * 63 + "." + "b" * 64)),
        ("blank_and_empty_example_strings", "example strings may be empty or blank", _lesson(
            examples=(ex("", " ", True), ex("\u3000", "", False)))),
        ("eight_examples", "the most examples", _lesson(
            examples=tuple(ex(f"in {i}", f"out {i}", i % 2 == 0) for i in range(8)))),
        ("blank_source_model", "source_model may be empty or blank", _lesson(
            source_model=" \u00a0")),
        ("confidence_bounds_and_created_at_zero", "0.0 is in range; created_at 0", _lesson(
            confidence=0.0, created_at=0)),
        ("confidence_one_created_at_max", "1.0 is in range; created_at 2^53-1", _lesson(
            confidence=1.0, created_at=2**53 - 1)),
        ("negative_zero_confidence", "-0.0 equals 0.0: in range (float 64 cb 8000..)", _lesson(
            confidence=-0.0)),
    ]  # fmt: skip


def _pack_pairs(pairs: list[tuple[Any, Any]], single_float: bool = False) -> bytes:
    return msgpack.Packer(use_bin_type=True, use_single_float=single_float).pack_map_pairs(pairs)


def _signed_pairs(exp: Experience) -> list[tuple[Any, Any]]:
    record = sign(exp, test_key())
    return [(int(k), v) for k, v in _fields(exp)] + [(int(Key.SIGNATURE), record.signature)]


def _replace(pairs: list[tuple[Any, Any]], key: Key, value: Any) -> list[tuple[Any, Any]]:
    return [(k, value if k == key else v) for k, v in pairs]


def _without(pairs: list[tuple[Any, Any]], key: Key) -> list[tuple[Any, Any]]:
    return [(k, v) for k, v in pairs if k != key]


def _insert(pairs: list[tuple[Any, Any]], key: int, value: Any) -> list[tuple[Any, Any]]:
    return sorted([*pairs, (key, value)], key=lambda kv: kv[0])


def _raw_record(exp: Experience, signature: bytes) -> bytes:
    """The wire of ``exp`` with any 64 bytes as its signature."""
    return _pack_pairs([(int(k), v) for k, v in _fields(exp)] + [(int(Key.SIGNATURE), signature)])


def _clamped_scalar(seed: bytes) -> int:
    h = bytearray(hashlib.sha512(seed).digest()[:32])
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return int.from_bytes(h, "little")


def _ed25519_cases() -> list[tuple[str, str, bytes]]:
    """Signatures that RFC 8032 cofactorless or ZIP-215 verifiers (OpenSSL, many JS
    libraries) accept and libsodium's strict rule refuses, plus S >= L, refused by all."""
    identity = (1).to_bytes(32, "little")  # the neutral point: order 1
    cases = []
    # Small-order R: R = identity, S = k * a. [S]B = R + [k]A holds exactly.
    exp = _lesson(text="A signature with a small-order R")
    message = SIGNING_PREFIX + content_id(exp)
    k = int.from_bytes(hashlib.sha512(identity + exp.author + message).digest(), "little")
    s = (k % ED25519_L) * _clamped_scalar(TEST_SEED) % ED25519_L
    cases.append(
        (
            "ed25519_small_order_r",
            "R is the identity point; the equation holds; libsodium refuses small-order R",
            _raw_record(exp, identity + s.to_bytes(32, "little")),
        )
    )
    # Small-order public key: A = identity, R = identity, S = 0 verifies any message under
    # RFC 8032 and ZIP-215.
    for name, author, note in (
        ("ed25519_identity_author", identity, "A is the identity point (small order)"),
        (
            "ed25519_non_canonical_author",
            (ED25519_P + 1).to_bytes(32, "little"),
            "A encodes y = p + 1 (non-canonical, and small order)",
        ),
    ):
        exp = _lesson(author=author, text=f"A record by a weak key: {name}")
        cases.append((name, note + "; R = identity, S = 0", _raw_record(exp, identity + bytes(32))))
    # S + L: a valid signature with L added to S (non-canonical scalar).
    exp = _lesson(text="A signature whose S is not reduced")
    good = sign(exp, test_key()).signature
    s = int.from_bytes(good[32:], "little") + ED25519_L
    cases.append(
        (
            "ed25519_s_plus_l",
            "S + L instead of S",
            _raw_record(exp, good[:32] + s.to_bytes(32, "little")),
        )
    )
    return cases


def _swap(data: bytes, old: bytes, new: bytes) -> bytes:
    """Replace the one occurrence of ``old`` (a hand edit of a packed record)."""
    assert data.count(old) == 1, (old, data.count(old))
    return data.replace(old, new)


def _nested(depth: int) -> bytes:
    """A record whose examples value is ``depth`` nested arrays (``depth + 1`` containers
    with the record's map: malformed past 1024)."""
    good = _signed_pairs(_lesson())
    head = _pack_pairs(good[:8])[1:]  # the first 8 pairs without the map header
    tail = _pack_pairs(good[8:])[1:]
    body = b"\x91" * depth + b"\xc0"
    return bytes([0x80 | (len(good) + 1)]) + head + b"\x09" + body + tail


def _invalid_cases(add: Experience, revoke: Experience) -> list[tuple[str, ErrorCode, str, bytes]]:
    good = _signed_pairs(add)
    wire = _pack_pairs(good)
    flipped = bytearray(wire)
    flipped[-1] ^= 0x01
    nan_code = struct.pack("<f", float("nan")) + _code(1)[4:]
    sig = dict(good)[int(Key.SIGNATURE)]
    E = ErrorCode
    T, D, S, C = Key.TEXT, Key.DOMAIN, Key.SOURCE_MODEL, Key.CODE
    r = lambda key, value: _pack_pairs(_replace(good, key, value))  # noqa: E731
    ex = lambda *items: _pack_pairs(_insert(good, 9, list(items)))  # noqa: E731
    modify_pairs = _signed_pairs(_lesson(op=Op.MODIFY, parent=b"\x07" * 32))
    cases: list[tuple[str, ErrorCode, str, bytes]] = [
        # -- step 1-2: size and msgpack
        ("oversize", E.OVERSIZE, "over 8192 bytes, checked before parsing", wire + bytes(8192)),
        ("oversize_and_garbage", E.OVERSIZE, "size first: 8193 bytes of 0xc1", b"\xc1" * 8193),
        ("truncated", E.MALFORMED, "ends inside the map", wire[:-10]),
        ("reserved_byte", E.MALFORMED, "0xc1 is never valid msgpack", b"\xc1"),
        ("invalid_utf8_text", E.MALFORMED, "a str that is not UTF-8",
         _swap(r(T, "x"), b"\x06\xa1x", b"\x06\xa2\xc3\x28")),
        ("surrogate_in_text", E.MALFORMED, "UTF-8 of U+D800 (CESU) is not well-formed UTF-8",
         _swap(r(T, "x"), b"\x06\xa1x", b"\x06\xa3\xed\xa0\x80")),
        ("ext_value", E.MALFORMED, "any ext value, anywhere",
         _swap(r(S, "x"), b"\x0a\xa1x", b"\x0a\xd4\x05\x00")),
        ("nesting_1025", E.MALFORMED, "1025 nested containers (the map and 1024 arrays)",
         _nested(1024)),
        ("nesting_1024", E.WRONG_TYPE, "1024 nested containers parse; the example is no array of 3",
         _nested(1023)),
        ("trailing_byte", E.TRAILING_BYTES, "one byte after the map", wire + b"\x00"),
        ("trailing_after_bad_text", E.TRAILING_BYTES, "trailing bytes before any field rule",
         r(T, "\x00") + b"\x00"),
        ("not_a_map", E.NOT_A_MAP, "an array", msgpack.packb([1, 2, 3])),
        # -- step 3: pairs in wire order
        ("unknown_field", E.UNKNOWN_FIELD, "key 99", _pack_pairs([*good, (99, 1)])),
        ("string_key", E.UNKNOWN_FIELD, "the str key \"6\" (a JS object key) is not the int 6",
         _pack_pairs([(str(k), v) if k == T else (k, v) for k, v in good])),
        ("bool_key", E.UNKNOWN_FIELD, "the key true is not the int 1", _pack_pairs([(True, 1), *good])),
        ("negative_key", E.UNKNOWN_FIELD, "key -1", _pack_pairs([(-1, 0), *good])),
        ("duplicate_field", E.DUPLICATE_FIELD, "key 6 twice", _pack_pairs([*good[:7], good[6], *good[7:]])),
        ("duplicate_before_type", E.DUPLICATE_FIELD, "the repeat of key 6 is also an int",
         _pack_pairs([*good[:7], (6, 5), *good[7:]])),
        ("wrong_type_before_unknown", E.WRONG_TYPE, "pairs in wire order: key 1 = false comes first",
         _pack_pairs([*_replace(good, Key.OP, False), (99, 1)])),
        ("confidence_as_string", E.WRONG_TYPE, "str for float", r(Key.CONFIDENCE, "0.85")),
        ("confidence_as_int", E.WRONG_TYPE, "the int 1 for float", r(Key.CONFIDENCE, 1)),
        ("op_as_bool", E.WRONG_TYPE, "false for int", r(Key.OP, False)),
        ("text_as_bin", E.WRONG_TYPE, "bin for str", r(T, add.text.encode())),
        ("author_as_str", E.WRONG_TYPE, "str for bin", r(Key.AUTHOR, "a" * 32)),
        ("nil_value", E.WRONG_TYPE, "nil is never a value", r(S, None)),
        ("examples_as_map", E.WRONG_TYPE, "map for array", _pack_pairs(_insert(good, 9, {"a": 1}))),
        # -- step 4: version, op, missing, forbidden
        ("version_2", E.UNSUPPORTED_VERSION, "version 2", r(Key.VERSION, 2)),
        ("version_2_missing_fields", E.UNSUPPORTED_VERSION, "version before missing fields",
         _pack_pairs([(0, 2), (1, 0)])),
        ("missing_version", E.MISSING_FIELD, "no key 0", _pack_pairs(_without(good, Key.VERSION))),
        ("op_7", E.OUT_OF_RANGE, "op outside 0..2", r(Key.OP, 7)),
        ("missing_code", E.MISSING_FIELD, "add without key 11", _pack_pairs(_without(good, C))),
        ("missing_before_bad_text", E.MISSING_FIELD, "missing fields before any value rule",
         _pack_pairs(_without(_replace(good, T, "\x00"), C))),
        ("modify_without_parent", E.MISSING_FIELD, "op 1 needs key 5",
         _pack_pairs(_without(modify_pairs, Key.PARENT))),
        ("add_with_parent", E.FORBIDDEN_FIELD, "op 0 must not carry key 5",
         _pack_pairs(_insert(good, 5, b"\x07" * 32))),
        ("revoke_with_text", E.FORBIDDEN_FIELD, "op 2 carries no lesson",
         _pack_pairs(_insert(_signed_pairs(revoke), 6, "x"))),
        # -- step 5: values in key order
        ("author_31_bytes", E.OUT_OF_RANGE, "bin of the wrong length", r(Key.AUTHOR, add.author[:31])),
        ("negative_created_at", E.OUT_OF_RANGE, "created_at -1", r(Key.CREATED_AT, -1)),
        ("created_at_2_pow_53", E.OUT_OF_RANGE, "created_at 2^53", r(Key.CREATED_AT, 2**53)),
        ("empty_text", E.BAD_TEXT, "empty text", r(T, "")),
        ("blank_text", E.BAD_TEXT, "spaces only", r(T, "  ")),
        ("blank_text_unicode", E.BAD_TEXT, "NBSP, U+3000, U+2028 and NEL are White_Space",
         r(T, "\u00a0\u3000\u2028\u0085")),
        ("control_char_in_text", E.BAD_TEXT, "ESC (U+001B)", r(T, "ignore\x1b[2Jprevious")),
        ("cr_in_text", E.BAD_TEXT, "CR (U+000D) is forbidden, only TAB and LF are allowed",
         r(T, "line one\r\nline two")),
        ("del_in_text", E.BAD_TEXT, "DEL (U+007F)", r(T, "a\x7fb")),
        ("text_1025_bytes", E.OVERSIZE, "over the field's 1024 bytes", r(T, "\u20ac" * 341 + "ab")),
        ("oversize_before_control", E.OVERSIZE, "length before characters", r(T, "\x00" * 1025)),
        ("bad_text_before_bad_domain", E.BAD_TEXT, "key 6 before key 7",
         _pack_pairs(_replace(_replace(good, T, "\x00"), D, "Bad"))),
        ("bad_domain", E.BAD_DOMAIN, "not dotted lowercase", r(D, "Math/Geo")),
        ("empty_domain", E.BAD_DOMAIN, "a domain has at least one word", r(D, "")),
        ("control_char_in_domain", E.BAD_DOMAIN, "the domain pattern, not the text rule",
         r(D, "math\x00")),
        ("domain_129_bytes", E.OVERSIZE, "over 128 bytes", r(D, "a" * 64 + "." + "b" * 64)),
        ("confidence_nan", E.NON_FINITE, "NaN", r(Key.CONFIDENCE, float("nan"))),
        ("confidence_above_one", E.OUT_OF_RANGE, "1.5", r(Key.CONFIDENCE, 1.5)),
        ("nine_examples", E.OUT_OF_RANGE, "at most 8 examples", ex(*[["i", "o", True]] * 9)),
        ("example_two_items", E.WRONG_TYPE, "an example is [str, str, bool]", ex(["i", "o"])),
        ("example_correct_int", E.WRONG_TYPE, "correct must be a bool", ex(["i", "o", 1])),
        ("example_as_map", E.WRONG_TYPE, "an example is an array", ex({"input": "i"})),
        ("example_control_char", E.BAD_TEXT, "example strings follow the text rule",
         ex(["i\x1b", "o", True])),
        ("example_1025_bytes", E.OVERSIZE, "example strings: 1024 bytes", ex(["i", "o" * 1025, True])),
        ("source_model_control_char", E.BAD_TEXT, "source_model follows the text rule",
         r(S, "gpt\x00")),
        ("source_model_129_bytes", E.OVERSIZE, "source_model: 128 bytes", r(S, "m" * 129)),
        ("code_short", E.OUT_OF_RANGE, "a bin of the wrong length", r(C, _code(1)[:963])),
        ("code_scale_nan", E.BAD_CODE, "scale NaN", r(C, nan_code)),
        ("code_scale_zero", E.BAD_CODE, "scale 0", r(C, bytes(4) + _code(1)[4:])),
        ("code_scale_negative", E.BAD_CODE, "scale -1", r(C, struct.pack("<f", -1.0) + _code(1)[4:])),
        ("signature_63_bytes", E.OUT_OF_RANGE, "a bin of the wrong length", r(Key.SIGNATURE, sig[:63])),
        ("signature_65_bytes", E.OUT_OF_RANGE, "a bin of the wrong length", r(Key.SIGNATURE, sig + b"\x00")),
        # -- step 6: canonical form
        ("empty_examples", E.NON_CANONICAL, "an empty examples array is omitted, never sent", ex()),
        ("confidence_float32", E.NON_CANONICAL, "float 32", _pack_pairs(good, single_float=True)),
        ("keys_out_of_order", E.NON_CANONICAL, "keys descending", _pack_pairs(list(reversed(good)))),
        ("bad_text_before_non_canonical", E.BAD_TEXT, "value rules before canonical form",
         _pack_pairs(list(reversed(_replace(good, T, "\x00"))))),
        ("long_int_encoding", E.NON_CANONICAL, "version 1 as uint8 (cc 01)",
         _swap(wire[:5], b"\x00\x01\x01\x00", b"\x00\xcc\x01\x01\x00") + wire[5:]),
        ("long_map_header", E.NON_CANONICAL, "map 16 header for 11 pairs",
         b"\xde\x00" + bytes([wire[0] & 0x0F]) + wire[1:]),
        ("non_canonical_before_signature", E.NON_CANONICAL, "canonical form before the signature",
         _pack_pairs(list(reversed(_replace(good, Key.SIGNATURE, bytes(64)))))),
        # -- step 7: signature
        ("bad_signature_last_byte", E.BAD_SIGNATURE, "one bit of S flipped", bytes(flipped)),
        ("text_changed_after_signing", E.BAD_SIGNATURE, "a signed field changed",
         r(T, add.text.upper())),
    ]  # fmt: skip
    cases += [(name, E.BAD_SIGNATURE, note, data) for name, note, data in _ed25519_cases()]
    return cases


def build_vectors() -> dict[str, Any]:
    """The record vectors (``v1.json``)."""
    valid = _valid_experiences()
    cases = [_valid_case(name, exp) for name, exp in valid]
    edges = [_valid_case(name, exp) | {"note": note} for name, note, exp in _edge_valid()]
    invalid = [
        {"name": name, "error": code.value, "note": note, "wire_hex": data.hex()}
        for name, code, note, data in _invalid_cases(valid[0][1], valid[3][1])
    ]
    return {
        "protocol": "zoo/dso/experience/v1",
        "spec": "SPEC.md",
        "test_seed_hex": TEST_SEED.hex(),
        "test_seed_recipe": "sha256('zoonode protocol v1 test vector seed'), Ed25519 private key",
        "public_key": public_key_bytes(test_key()).hex(),
        "valid": cases,
        "edge_valid": edges,
        "invalid": invalid,
    }


def _valid_case(name: str, exp: Experience) -> dict[str, Any]:
    record = sign(exp, test_key())
    return {
        "name": name,
        "fields": _fields_json(exp),
        "unsigned_hex": encode_unsigned(exp).hex(),
        "id": record.id.hex(),
        "signature": record.signature.hex(),
        "wire_hex": record.wire.hex(),
    }


def _fields_json(exp: Experience) -> dict[str, Any]:
    """The record's fields as JSON; ``examples`` appears only when the wire has key 9."""
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
        out |= {"text": exp.text, "domain": exp.domain, "confidence": exp.confidence}
        if exp.examples:
            out["examples"] = [[e.input, e.output, e.correct] for e in exp.examples]
        out |= {"source_model": exp.source_model, "code": exp.code.hex()}
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
        examples=tuple(Example(*e) for e in fields.get("examples", ())),
        source_model=fields["source_model"],
        code=bytes.fromhex(fields["code"]),
    )


# -- feedback (SPEC.md §8) ------------------------------------------------------------------


def _verdict(target: bytes, verdict: int, created_at: int = CREATED_AT + 10, **changes) -> Feedback:
    fields: dict[str, Any] = dict(
        voter=public_key_bytes(test_key()),
        space=SPACE,
        created_at=created_at,
        target=target,
        verdict=FeedbackVerdict(verdict),
        task=hashlib.sha256(b"Add 3 m and 20 cm").digest(),
    )
    fields.update(changes)
    return Feedback(**fields)


def _valid_feedback() -> list[tuple[str, Feedback]]:
    """Verdicts on the record vectors' experiences (their ids are in v1.json)."""
    ids = {name: sign(exp, test_key()).id for name, exp in _valid_experiences()}
    return [
        ("helpful_with_task", _verdict(ids["add_with_examples"], 1)),
        ("harmful_without_task", _verdict(ids["modify"], -1, CREATED_AT + 11, task=None)),
        ("withdrawn", _verdict(ids["add_with_examples"], 0, CREATED_AT + 12)),
    ]


def _edge_feedback() -> list[tuple[str, str, Feedback]]:
    target = sign(_lesson(), test_key()).id
    return [
        ("created_at_zero", "0 is in range (fixint 00)", _verdict(target, 1, 0)),
        ("created_at_max", "2^53-1 is in range (uint 64)", _verdict(target, -1, 2**53 - 1)),
        ("zero_target", "any 32 bytes name a target; the record need not be known",
         _verdict(bytes(32), 1, task=None)),
    ]  # fmt: skip


def _feedback_case(name: str, fb: Feedback) -> dict[str, Any]:
    record = sign_feedback(fb, test_key())
    fields: dict[str, Any] = {
        "voter": fb.voter.hex(),
        "space": fb.space.hex(),
        "created_at": fb.created_at,
        "target": fb.target.hex(),
        "verdict": int(fb.verdict),
    }
    if fb.task is not None:
        fields["task"] = fb.task.hex()
    return {
        "name": name,
        "fields": fields,
        "unsigned_hex": encode_feedback_unsigned(fb).hex(),
        "id": record.id.hex(),
        "signature": record.signature.hex(),
        "wire_hex": record.wire.hex(),
    }


def feedback_from_json(fields: dict[str, Any]) -> Feedback:
    """Rebuild a Feedback from a vector's ``fields``."""
    return Feedback(
        voter=bytes.fromhex(fields["voter"]),
        space=bytes.fromhex(fields["space"]),
        created_at=fields["created_at"],
        target=bytes.fromhex(fields["target"]),
        verdict=FeedbackVerdict(fields["verdict"]),
        task=bytes.fromhex(fields["task"]) if "task" in fields else None,
    )


def _invalid_feedback(good_fb: Feedback) -> list[tuple[str, ErrorCode, str, bytes]]:
    record = sign_feedback(good_fb, test_key())
    good = [(int(k), v) for k, v in _feedback_fields(good_fb)] + [
        (int(FeedbackKey.SIGNATURE), record.signature)
    ]
    wire = _pack_pairs(good)
    flipped = bytearray(wire)
    flipped[-1] ^= 0x01
    E, K = ErrorCode, FeedbackKey
    r = lambda key, value: _pack_pairs(_replace(good, key, value))  # noqa: E731
    # The same content id signed under the experience prefix: domain separation.
    experience_prefixed = test_key().sign(SIGNING_PREFIX + record.id)
    lesson_wire = sign(_lesson(), test_key()).wire
    cases: list[tuple[str, ErrorCode, str, bytes]] = [
        ("oversize", E.OVERSIZE, "over 256 bytes, checked before parsing", wire + bytes(256)),
        ("truncated", E.MALFORMED, "ends inside the map", wire[:-10]),
        ("reserved_byte", E.MALFORMED, "0xc1 is never valid msgpack", b"\xc1"),
        ("trailing_byte", E.TRAILING_BYTES, "one byte after the map", wire + b"\x00"),
        ("not_a_map", E.NOT_A_MAP, "an array", msgpack.packb([1, 2, 3])),
        ("unknown_field", E.UNKNOWN_FIELD, "key 8", _pack_pairs([*good, (8, 1)])),
        ("string_key", E.UNKNOWN_FIELD, "the str key \"5\" is not the int 5",
         _pack_pairs([(str(k), v) if k == K.VERDICT else (k, v) for k, v in good])),
        ("duplicate_field", E.DUPLICATE_FIELD, "key 5 twice", _pack_pairs([*good[:6], good[5], *good[6:]])),
        ("verdict_as_bool", E.WRONG_TYPE, "true is not the int 1", r(K.VERDICT, True)),
        ("verdict_as_float", E.WRONG_TYPE, "1.0 is not the int 1", r(K.VERDICT, 1.0)),
        ("verdict_as_string", E.WRONG_TYPE, "\"helpful\" is not an int", r(K.VERDICT, "helpful")),
        ("voter_as_str", E.WRONG_TYPE, "str for bin", r(K.VOTER, "a" * 32)),
        ("task_nil", E.WRONG_TYPE, "an absent task is omitted, never nil", r(K.TASK, None)),
        ("experience_as_feedback", E.OVERSIZE, "a whole experience record is over 256 bytes",
         lesson_wire),
        ("experience_pairs_as_feedback", E.WRONG_TYPE,
         "an experience's first four pairs: its key 1 (op, an int) is no voter",
         _first_pairs(lesson_wire)),
        ("version_2", E.UNSUPPORTED_VERSION, "version 2", r(K.VERSION, 2)),
        ("missing_version", E.MISSING_FIELD, "no key 0", _pack_pairs(_without(good, K.VERSION))),
        ("missing_target", E.MISSING_FIELD, "no key 4", _pack_pairs(_without(good, K.TARGET))),
        ("missing_signature", E.MISSING_FIELD, "no key 7", _pack_pairs(_without(good, K.SIGNATURE))),
        ("voter_31_bytes", E.OUT_OF_RANGE, "bin of the wrong length", r(K.VOTER, good_fb.voter[:31])),
        ("space_17_bytes", E.OUT_OF_RANGE, "bin of the wrong length", r(K.SPACE, SPACE + b"\x00")),
        ("negative_created_at", E.OUT_OF_RANGE, "created_at -1", r(K.CREATED_AT, -1)),
        ("target_33_bytes", E.OUT_OF_RANGE, "bin of the wrong length", r(K.TARGET, bytes(33))),
        ("verdict_2", E.OUT_OF_RANGE, "-1, 0 or 1 only", r(K.VERDICT, 2)),
        ("verdict_minus_2", E.OUT_OF_RANGE, "-1, 0 or 1 only", r(K.VERDICT, -2)),
        ("task_16_bytes", E.OUT_OF_RANGE, "a task digest is 32 bytes", r(K.TASK, bytes(16))),
        ("signature_63_bytes", E.OUT_OF_RANGE, "a bin of the wrong length",
         r(K.SIGNATURE, record.signature[:63])),
        ("verdict_out_of_range_before_non_canonical", E.OUT_OF_RANGE, "values before canonical form",
         _pack_pairs(list(reversed(_replace(good, K.VERDICT, 5))))),
        ("keys_out_of_order", E.NON_CANONICAL, "keys descending", _pack_pairs(list(reversed(good)))),
        ("long_verdict_encoding", E.NON_CANONICAL, "verdict 1 as uint8 (cc 01)",
         _swap(wire, b"\x05\x01\x06", b"\x05\xcc\x01\x06")),
        ("long_map_header", E.NON_CANONICAL, "map 16 header for 8 pairs",
         b"\xde\x00" + bytes([wire[0] & 0x0F]) + wire[1:]),
        ("bad_signature_last_byte", E.BAD_SIGNATURE, "one bit of S flipped", bytes(flipped)),
        ("verdict_changed_after_signing", E.BAD_SIGNATURE, "helpful turned harmful",
         r(K.VERDICT, -1)),
        ("signed_as_experience", E.BAD_SIGNATURE,
         "the same id signed under zoo/dso/experience/v1: prefixes keep the types apart",
         r(K.SIGNATURE, experience_prefixed)),
    ]  # fmt: skip
    return cases


def _first_pairs(lesson_wire: bytes) -> bytes:
    """An experience record cut to its first four pairs, re-framed as a 4-pair map: the
    first pairs an experience decoder sees, small enough for the feedback size limit."""
    pairs = list(msgpack.unpackb(lesson_wire, strict_map_key=False).items())[:4]
    return _pack_pairs(pairs)


def build_feedback_vectors() -> dict[str, Any]:
    """The feedback record vectors (``feedback-v1.json``)."""
    valid = _valid_feedback()
    return {
        "protocol": FEEDBACK_SIGNING_PREFIX.decode(),
        "spec": "SPEC.md §8",
        "test_seed_hex": TEST_SEED.hex(),
        "public_key": public_key_bytes(test_key()).hex(),
        "valid": [_feedback_case(name, fb) for name, fb in valid],
        "edge_valid": [
            _feedback_case(name, fb) | {"note": note} for name, note, fb in _edge_feedback()
        ],
        "invalid": [
            {"name": name, "error": code.value, "note": note, "wire_hex": data.hex()}
            for name, code, note, data in _invalid_feedback(valid[0][1])
        ],
    }


# -- network (NETWORK.md) -----------------------------------------------------------------------

TOPIC_TEMPLATE = "/zoo/dso/1/{space_hex}/experiences"
SYNC_PROTOCOL = "/zoo/dso/sync/1"
QUERY_PROTOCOL = "/zoo/dso/query/2"
BUCKET_MS = 3_600_000
CANONICAL_DIM = 7680


def _frame(message: dict[str, Any]) -> bytes:
    data = msgpack.packb(message, use_bin_type=True)
    return struct.pack(">I", len(data)) + data


def to_json(value: Any) -> Any:
    """A msgpack value as JSON: bin as {"bin": hex}, maps as {"map": [[key, value], ...]} so
    that int keys stay ints and key order stays visible."""
    if isinstance(value, bytes):
        return {"bin": value.hex()}
    if isinstance(value, dict):
        return {"map": [[to_json(k), to_json(v)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def from_json(value: Any) -> Any:
    """The inverse of :func:`to_json`."""
    if isinstance(value, dict) and set(value) == {"bin"}:
        return bytes.fromhex(value["bin"])
    if isinstance(value, dict) and set(value) == {"map"}:
        return {from_json(k): from_json(v) for k, v in value["map"]}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def _frame_case(name: str, message: dict[str, Any], note: str = "") -> dict[str, Any]:
    case = {"name": name, "message": to_json(message), "frame_hex": _frame(message).hex()}
    return case | ({"note": note} if note else {})


def _gossip_cases(records: dict[str, bytes], other_space: bytes) -> list[dict[str, Any]]:
    add, ex, mod = records["add"], records["add_with_examples"], records["modify"]
    flipped = bytearray(add)
    flipped[-1] ^= 0x01
    fresh = CREATED_AT + 60_000
    out = []

    def case(name, data, outcome, reason, now_ms=fresh, holds=(), note=""):
        entry = {
            "name": name,
            "data_hex": data.hex(),
            "message_id": hashlib.sha256(data).hexdigest(),
            "now_ms": now_ms,
            "receiver_holds": list(holds),
            "outcome": outcome,
            "reason": reason,
        }
        out.append(entry | ({"note": note} if note else {}))

    pack = lambda items: msgpack.packb(items, use_bin_type=True)  # noqa: E731
    case("one_record", pack([add]), "accept", "ok")
    case("two_records", pack([ex, mod]), "accept", "ok")
    case(
        "one_known_one_new",
        pack([add, ex]),
        "accept",
        "ok",
        holds=["add"],
        note="a message with at least one accepted record is accepted and forwarded whole",
    )
    case(
        "all_known",
        pack([add]),
        "ignore",
        "known",
        holds=["add"],
        note="every record ignored: not forwarded, no penalty",
    )
    case(
        "bad_record_rejects_batch",
        pack([ex, bytes(flipped)]),
        "reject",
        "bad_signature",
        note="one invalid record rejects the whole message",
    )
    case("wrong_space", pack([other_space]), "reject", "wrong_space")
    case(
        "from_future",
        pack([add]),
        "reject",
        "from_future",
        now_ms=CREATED_AT - 300_001,
        note="created_at more than 300000 ms after the receiver's clock",
    )
    case("at_future_limit", pack([add]), "accept", "ok", now_ms=CREATED_AT - 300_000)
    case(
        "too_old",
        pack([add]),
        "ignore",
        "too_old",
        now_ms=CREATED_AT + 365 * 86_400_000 + 1,
        note="created_at more than 365 days before the receiver's clock",
    )
    case(
        "array16_header",
        b"\xdc\x00\x01" + pack([add])[1:],
        "accept",
        "ok",
        note="any valid msgpack array header is accepted; its message id differs",
    )
    case("empty_batch", pack([]), "reject", "malformed_batch")
    case("not_an_array", pack({"0": add}), "reject", "malformed_batch")
    case("str_item", pack(["not a record"]), "reject", "malformed_batch")
    case("not_msgpack", b"\xc1 not msgpack", "reject", "malformed_batch")
    case("trailing_byte", pack([add]) + b"\x00", "reject", "malformed_batch")
    case(
        "257_items",
        pack([b"\x00"] * 257),
        "reject",
        "oversize_batch",
        note="more than 256 items, before any record is read",
    )
    case(
        "bad_record_bytes",
        pack([b"\x00"]),
        "reject",
        "not_a_map",
        note="a record's decode error is the message's reason",
    )
    return out  # fmt: skip


def _query_vector(code: bytes) -> bytes:
    """The canonical query of the vectors: the unit direction of a record's decoded code."""
    import numpy as np

    from zoonode.native.codec import decompress
    from zoonode.native.space import load_space

    v = decompress(code, load_space().v_ref)
    return (v / np.linalg.norm(v)).astype("<f2").tobytes()


def _query_score(query: bytes, code: bytes) -> float:
    """What an answering node with the shipped space reports: cos(head^T q, head^T v_hat)."""
    import numpy as np

    from zoonode.native.codec import decompress
    from zoonode.native.space import load_space

    space = load_space()
    q = np.frombuffer(query, "<f2").astype(np.float32) @ space.head
    r = decompress(code, space.v_ref) @ space.head
    return float(np.float32(q @ r / (np.linalg.norm(q) * np.linalg.norm(r))))


def build_network_vectors() -> dict[str, Any]:
    """The network vectors (``network-v1.json``)."""
    valid = dict(_valid_experiences())
    records = {name: sign(exp, test_key()) for name, exp in valid.items()}
    wires = {name: r.wire for name, r in records.items()}
    other_space = sign(_lesson(space=bytes(16)), test_key()).wire
    ids = {name: r.id for name, r in records.items()}
    start = CREATED_AT - CREATED_AT % BUCKET_MS
    xor = 0
    for record_id in ids.values():
        xor ^= int.from_bytes(record_id[:16], "big")
    held = sorted(ids.values())
    sync = [
        _frame_case("digest_request", {"op": "digest"}),
        _frame_case(
            "digest_answer",
            {"buckets": {start: [len(ids), xor.to_bytes(16, "big")]}, "bucket_ms": BUCKET_MS},
            "bucket keys are msgpack ints (ms), not strings",
        ),
        _frame_case("ids_request", {"op": "ids", "start": start, "end": start + BUCKET_MS}),
        _frame_case("ids_answer", {"ids": held}, "ascending byte order"),
        _frame_case(
            "get_request",
            {"op": "get", "ids": [ids["add_with_examples"], ids["add"], b"\x07" * 32]},
        ),
        _frame_case(
            "get_answer",
            {"wires": [wires["add_with_examples"], wires["add"]]},
            "in the order asked; ids the node does not hold are skipped",
        ),
        _frame_case("unknown_op_request", {"op": "merkle"}),
        _frame_case("unknown_op_answer", {"error": "unknown_op", "message": "unknown op 'merkle'"}),
        _frame_case("bad_request_request", {"op": "ids", "start": "0", "end": 1}),
        _frame_case(
            "bad_request_answer", {"error": "bad_request", "message": "ids needs int start and end"}
        ),
        _frame_case("unknown_type_request", {"op": "digest", "type": "endorsement"}),
        _frame_case(
            "unknown_type_answer",
            {"error": "unknown_type", "message": "syncs 'experience' and 'feedback' records"},
        ),
    ]
    code = valid["add_with_examples"].code
    assert code is not None
    vector = _query_vector(code)
    query = [
        _frame_case("query_request", {"space": SPACE, "vector": vector, "k": 1}),
        _frame_case(
            "query_answer",
            {"wires": [wires["add_with_examples"]], "scores": [_query_score(vector, code)]},
            "scores: the answering node's cosines, informative only",
        ),
        _frame_case(
            "filtered_request",
            {"space": SPACE, "vector": vector, "k": 5, "domain": "math", "min_confidence": 0.8},
        ),
        _frame_case(
            "filtered_answer",
            {"wires": [wires["modify"]], "scores": [_query_score(vector, valid["modify"].code)]},
            "only active lessons in domain math.* with confidence >= 0.8 (add was revoked)",
        ),
        _frame_case(
            "compact_384_request",
            {"space": SPACE, "vector": bytes(384 * 4), "k": 5},
            "384 float32: a backbone's private coordinates, as /zoo/dso/query/1 carried",
        ),
        _frame_case(
            "compact_384_answer",
            {"error": "wrong_dimension", "message": "vector must be 7680 float16 values"},
        ),
        _frame_case("wrong_space_request", {"space": bytes(16), "vector": vector, "k": 5}),
        _frame_case("wrong_space_answer", {"error": "wrong_space", "message": "other space"}),
        _frame_case("nan_request", {"space": SPACE, "vector": b"\xff\x7f" * CANONICAL_DIM, "k": 5}),
        _frame_case("nan_answer", {"error": "bad_vector", "message": "NaN or infinite values"}),
    ]
    return {
        "spec": "NETWORK.md",
        "space": SPACE.hex(),
        "topic": TOPIC_TEMPLATE.format(space_hex=SPACE.hex()),
        "protocols": {
            "security": "/noise",
            "muxer": "/yamux/1.0.0",
            "identify": "/ipfs/id/1.0.0",
            "gossip": ["/meshsub/1.1.0", "/meshsub/1.0.0"],
            "sync": SYNC_PROTOCOL,
            "query": QUERY_PROTOCOL,
        },
        "records": {name: {"id": ids[name].hex(), "wire_hex": wires[name].hex()} for name in ids},
        "gossip": _gossip_cases(wires, other_space),
        "sync": {"node_holds": list(ids), "frames": sync},
        "query": {"node_holds": list(ids), "frames": query},
    }


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=VECTORS_DIR, help="vectors directory")
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    differ = []
    files = (
        (RECORDS_FILE, build_vectors()),
        (FEEDBACK_FILE, build_feedback_vectors()),
        (NETWORK_FILE, build_network_vectors()),
    )
    for name, data in files:
        path = args.out / name
        text = render(data)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                differ.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if differ:
        print(f"differs from the generator: {', '.join(differ)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
