"""Wire protocol v1: round trips, test vectors, tampering and fuzzing."""

from __future__ import annotations

import contextlib
import json
import struct
from importlib import resources

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zoonode.protocol import (
    MAX_RECORD_BYTES,
    ErrorCode,
    Example,
    Experience,
    Op,
    ProtocolError,
    content_id,
    decode,
    public_key_bytes,
    record_to_dict,
    sign,
)
from zoonode.protocol.make_vectors import build_vectors, experience_from_json

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
AUTHOR = public_key_bytes(KEY)
CODE = struct.pack("<f", 0.01) + bytes(range(256)) * 3 + bytes(192)


def lesson(**changes) -> Experience:
    fields = dict(
        op=Op.ADD,
        author=AUTHOR,
        space=b"s" * 16,
        created_at=1_700_000_000_000,
        text="Validate that solutions lie within bounded regions",
        domain="math.geometry",
        confidence=0.8,
        code=CODE,
        source_model="deepseek-v3",
    )
    fields.update(changes)
    return Experience(**fields)


VALID_WIRE = sign(lesson(examples=(Example("x", "y", True),)), KEY).wire


def load_vectors() -> dict:
    text = (resources.files("zoonode.protocol") / "vectors" / "v1.json").read_text()
    return json.loads(text)


def test_round_trip_is_identity():
    exp = lesson(examples=(Example("2+2", "4", True), Example("2+2", "5", False)))
    record = sign(exp, KEY)
    decoded = decode(record.wire)
    assert decoded == record
    assert decoded.experience == exp
    assert decoded.id == content_id(exp)
    assert len(record.wire) < MAX_RECORD_BYTES


def test_encoding_is_deterministic_and_id_ignores_signature():
    a, b = sign(lesson(), KEY), sign(lesson(), KEY)
    assert a.wire == b.wire
    other = sign(lesson(confidence=0.81), KEY)
    assert other.id != a.id


def test_revoke_and_modify_round_trip():
    parent = sign(lesson(), KEY).id
    for exp in (
        Experience(op=Op.REVOKE, author=AUTHOR, space=b"s" * 16, created_at=5, parent=parent),
        lesson(op=Op.MODIFY, parent=parent),
    ):
        assert decode(sign(exp, KEY).wire).experience == exp


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"text": ""}, ErrorCode.BAD_TEXT),
        ({"text": "x" * 1025}, ErrorCode.OVERSIZE),
        ({"domain": "Math"}, ErrorCode.BAD_DOMAIN),
        ({"confidence": float("nan")}, ErrorCode.NON_FINITE),
        ({"confidence": -0.1}, ErrorCode.OUT_OF_RANGE),
        ({"confidence": True}, ErrorCode.WRONG_TYPE),
        ({"code": CODE[:-1]}, ErrorCode.BAD_CODE),
        ({"code": struct.pack("<f", float("inf")) + CODE[4:]}, ErrorCode.BAD_CODE),
        ({"code": struct.pack("<f", -1.0) + CODE[4:]}, ErrorCode.BAD_CODE),
        ({"author": b"a" * 31}, ErrorCode.OUT_OF_RANGE),
        ({"parent": b"p" * 32}, ErrorCode.FORBIDDEN_FIELD),
        ({"op": Op.MODIFY}, ErrorCode.MISSING_FIELD),
        ({"op": 7}, ErrorCode.OUT_OF_RANGE),
        ({"created_at": 2**53}, ErrorCode.OUT_OF_RANGE),
        ({"text": "a\x00b"}, ErrorCode.BAD_TEXT),
        ({"text": "\ud800"}, ErrorCode.BAD_TEXT),
    ],
)
def test_building_an_invalid_experience_raises_its_code(changes, code):
    with pytest.raises(ProtocolError) as err:
        lesson(**changes)
    assert err.value.code is code


def test_signing_with_someone_elses_key_is_refused():
    with pytest.raises(ProtocolError) as err:
        sign(lesson(), Ed25519PrivateKey.generate())
    assert err.value.code is ErrorCode.BAD_KEY


def test_oversize_record_cannot_be_signed():
    examples = tuple(Example("i" * 1000, "o" * 1000, True) for _ in range(5))
    with pytest.raises(ProtocolError) as err:
        sign(lesson(examples=examples), KEY)
    assert err.value.code is ErrorCode.OVERSIZE


def test_shipped_vectors_equal_the_generator():
    assert load_vectors() == json.loads(json.dumps(build_vectors()))


def test_valid_vectors_rebuild_byte_for_byte():
    vectors = load_vectors()
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vectors["test_seed_hex"]))
    assert public_key_bytes(key).hex() == vectors["public_key"]
    for case in vectors["valid"]:
        exp = experience_from_json(case["fields"])
        record = sign(exp, key)
        assert record.wire.hex() == case["wire_hex"], case["name"]
        assert record.id.hex() == case["id"]
        assert record.signature.hex() == case["signature"]
        assert decode(bytes.fromhex(case["wire_hex"])).experience == exp


def test_invalid_vectors_fail_with_their_code():
    vectors = load_vectors()
    assert len({c["error"] for c in vectors["invalid"]}) >= 14
    for case in vectors["invalid"]:
        with pytest.raises(ProtocolError) as err:
            decode(bytes.fromhex(case["wire_hex"]))
        assert err.value.code.value == case["error"], case["name"]


def test_every_single_byte_flip_is_caught():
    for i in range(len(VALID_WIRE)):
        tampered = bytearray(VALID_WIRE)
        tampered[i] ^= 0xFF
        with pytest.raises(ProtocolError):
            decode(bytes(tampered))


def test_record_to_dict_is_json_ready():
    view = record_to_dict(decode(VALID_WIRE))
    assert json.loads(json.dumps(view))["examples"] == [
        {"input": "x", "output": "y", "correct": True}
    ]
    assert view["code"]["bytes"] == 964


def _decode_only_raises_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode(data)


@settings(max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes(data):
    _decode_only_raises_protocol_errors(data)


@settings(max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.tuples(st.integers(0, len(VALID_WIRE) - 1), st.integers(0, 255)), min_size=1, max_size=8
    ),
    st.integers(0, len(VALID_WIRE)),
    st.binary(max_size=16),
)
def test_fuzz_mutated_records(edits, cut, tail):
    data = bytearray(VALID_WIRE)
    for pos, value in edits:
        data[pos] = value
    mutated = bytes(data[:cut]) + tail
    if mutated == VALID_WIRE:
        return
    with pytest.raises(ProtocolError):
        decode(mutated)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.dictionaries(
        st.one_of(st.integers(-2, 20), st.text(max_size=3)),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(2**63), 2**64 - 1),
            st.floats(),
            st.binary(max_size=70),
            st.text(max_size=20),
            st.lists(st.integers(-(2**63), 2**63), max_size=3),
        ),
        max_size=14,
    )
)
def test_fuzz_structured_maps(fields):
    _decode_only_raises_protocol_errors(msgpack.packb(fields, use_bin_type=True))
