"""Wire protocol v1: round trips, test vectors, tampering and fuzzing."""

from __future__ import annotations

import contextlib
import hashlib
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
    Key,
    Op,
    ProtocolError,
    content_id,
    decode,
    decode_stored,
    encode_unsigned,
    public_key_bytes,
    record_to_dict,
    sign,
)
from zoonode.protocol.make_vectors import build_vectors, experience_from_json
from zoonode.protocol.record import (
    BLANK_CODE_POINTS,
    FORBIDDEN_CODE_POINTS,
    check_text,
    is_blank,
)

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


def test_stored_records_decode_to_the_same_record_without_the_seal_checks():
    """``decode_stored`` (a record this node verified before storing it) gives what ``decode``
    gives, for every op; it parses and checks the fields but skips the signature, so a
    record with a broken signature, which ``decode`` refuses, must never reach it."""
    parent = sign(lesson(), KEY).id
    for exp in (
        lesson(examples=(Example("2+2", "4", True),)),
        Experience(op=Op.REVOKE, author=AUTHOR, space=b"s" * 16, created_at=5, parent=parent),
        lesson(op=Op.MODIFY, parent=parent),
    ):
        record = sign(exp, KEY)
        assert decode_stored(record.wire, record.id) == decode(record.wire) == record
    record = sign(lesson(), KEY)
    forged = record.wire[:-64] + bytes(64)  # the signature is the last field
    with pytest.raises(ProtocolError) as err:
        decode(forged)
    assert err.value.code is ErrorCode.BAD_SIGNATURE
    assert decode_stored(forged, record.id).experience == record.experience
    with pytest.raises(ProtocolError) as err:  # the fields are still checked
        decode_stored(forged[:-1], record.id)
    assert err.value.code is ErrorCode.MALFORMED


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"text": ""}, ErrorCode.BAD_TEXT),
        ({"text": "x" * 1025}, ErrorCode.OVERSIZE),
        ({"domain": "Math"}, ErrorCode.BAD_DOMAIN),
        ({"confidence": float("nan")}, ErrorCode.NON_FINITE),
        ({"confidence": -0.1}, ErrorCode.OUT_OF_RANGE),
        ({"confidence": True}, ErrorCode.WRONG_TYPE),
        ({"code": CODE[:-1]}, ErrorCode.OUT_OF_RANGE),
        ({"code": struct.pack("<f", float("inf")) + CODE[4:]}, ErrorCode.BAD_CODE),
        ({"code": struct.pack("<f", -1.0) + CODE[4:]}, ErrorCode.BAD_CODE),
        ({"author": b"a" * 31}, ErrorCode.OUT_OF_RANGE),
        ({"parent": b"p" * 32}, ErrorCode.FORBIDDEN_FIELD),
        ({"op": Op.MODIFY}, ErrorCode.MISSING_FIELD),
        ({"op": 7}, ErrorCode.OUT_OF_RANGE),
        ({"created_at": 2**53}, ErrorCode.OUT_OF_RANGE),
        ({"text": "a\x00b"}, ErrorCode.BAD_TEXT),
        ({"text": "\ud800"}, ErrorCode.BAD_TEXT),
        ({"text": "\u00a0\u2028"}, ErrorCode.BAD_TEXT),
        ({"domain": "a\x00"}, ErrorCode.BAD_DOMAIN),
        ({"source_model": "x\x7f"}, ErrorCode.BAD_TEXT),
        ({"examples": [["i", "o"]]}, ErrorCode.WRONG_TYPE),
        ({"examples": [["i", "o", True]] * 9}, ErrorCode.OUT_OF_RANGE),
        ({"text": "", "author": b"a"}, ErrorCode.OUT_OF_RANGE),  # key order: author first
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
    """Both vector files are exactly what ``python -m zoonode.protocol.make_vectors`` writes."""
    from zoonode.protocol.make_vectors import build_network_vectors, main, render

    folder = resources.files("zoonode.protocol") / "vectors"
    assert (folder / "v1.json").read_text(encoding="utf-8") == render(build_vectors())
    assert (folder / "network-v1.json").read_text(encoding="utf-8") == render(
        build_network_vectors()
    )
    assert main(["--check"]) == 0


def test_valid_vectors_rebuild_byte_for_byte():
    vectors = load_vectors()
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vectors["test_seed_hex"]))
    assert public_key_bytes(key).hex() == vectors["public_key"]
    cases = vectors["valid"] + vectors["edge_valid"]
    assert len(vectors["edge_valid"]) >= 10
    for case in cases:
        exp = experience_from_json(case["fields"])
        record = sign(exp, key)
        assert encode_unsigned(exp).hex() == case["unsigned_hex"], case["name"]
        assert record.wire.hex() == case["wire_hex"], case["name"]
        assert record.id.hex() == case["id"]
        assert record.signature.hex() == case["signature"]
        assert decode(bytes.fromhex(case["wire_hex"])).experience == exp
        # "examples" is listed exactly when the wire carries key 9 (never as []).
        has_key_9 = Key.EXAMPLES in dict(msgpack.unpackb(record.wire, strict_map_key=False))
        assert ("examples" in case["fields"]) == has_key_9, case["name"]
        assert case["fields"].get("examples", [None]) != []


def test_invalid_vectors_fail_with_their_code():
    vectors = load_vectors()
    codes = {c["error"] for c in vectors["invalid"]}
    assert codes == {c.value for c in ErrorCode} - {"bad_key"}  # every decode code has a case
    for case in vectors["invalid"]:
        with pytest.raises(ProtocolError) as err:
            decode(bytes.fromhex(case["wire_hex"]))
        assert err.value.code.value == case["error"], case["name"]


def test_text_rule_sets_are_the_unicode_ones():
    """SPEC §2.3: forbidden = Cc below U+0080 except TAB and LF; blank = White_Space."""
    import sys
    import unicodedata

    cc_c0 = {c for c in range(0x80) if unicodedata.category(chr(c)) == "Cc"} - {0x09, 0x0A}
    assert cc_c0 == FORBIDDEN_CODE_POINTS
    # Python's str.isspace() is White_Space plus U+001C..U+001F (which are forbidden anyway).
    white_space = {c for c in range(sys.maxunicode + 1) if chr(c).isspace()}
    assert white_space - set(range(0x1C, 0x20)) == BLANK_CODE_POINTS
    assert len(BLANK_CODE_POINTS) == 25
    for c in BLANK_CODE_POINTS:
        assert is_blank(chr(c) * 2)
    for text in ("\ufeff", "\u200b", "\u180e", "\u2060", "x "):
        assert not is_blank(text)
    assert check_text("t", "a\u0085\u009fb", 10, allow_blank=False) == "a\u0085\u009fb"
    with pytest.raises(ProtocolError) as err:
        check_text("t", "\x00" * 11, 10, allow_blank=True)
    assert err.value.code is ErrorCode.OVERSIZE  # length before characters
    assert check_text("t", " ", 10, allow_blank=True) == " "


def test_strict_ed25519_rule_refuses_what_openssl_accepts():
    """SPEC §3.3 names libsodium's rule: the small-order vectors verify under OpenSSL
    (RFC 8032 without the extra checks) and must not verify here."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from zoonode.protocol.wire import SIGNING_PREFIX, verify_signature

    cases = {c["name"]: c for c in load_vectors()["invalid"]}
    lax_accepts = 0
    for name in ("ed25519_small_order_r", "ed25519_identity_author", "ed25519_s_plus_l"):
        record = dict(msgpack.unpackb(bytes.fromhex(cases[name]["wire_hex"]), strict_map_key=False))
        author, signature = record[Key.AUTHOR], record[Key.SIGNATURE]
        unsigned = msgpack.Packer(use_bin_type=True).pack_map_pairs(
            [(k, v) for k, v in record.items() if k != Key.SIGNATURE]
        )
        message = SIGNING_PREFIX + hashlib.sha256(unsigned).digest()
        assert not verify_signature(author, message, signature), name
        try:
            Ed25519PublicKey.from_public_bytes(author).verify(signature, message)
            lax_accepts += 1
        except InvalidSignature:
            pass
    assert lax_accepts == 2  # small-order R and A pass OpenSSL; S + L fails everywhere


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
