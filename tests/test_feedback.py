"""Feedback records (SPEC.md §8): vectors, strict decoding, validation verdicts, the store's
one standing verdict per (voter, target)."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zoonode.net.validation import AuthorLimiter, Policy, Reason, Verdict, check_feedback
from zoonode.protocol import (
    ErrorCode,
    Feedback,
    FeedbackVerdict,
    ProtocolError,
    decode,
    decode_feedback,
    public_key_bytes,
    sign_feedback,
)
from zoonode.protocol.make_vectors import build_feedback_vectors, feedback_from_json, render
from zoonode.store import SCHEMA_VERSION, Store

SPACE = bytes(range(16))
NOW = 1_780_000_000_000


def load() -> dict:
    folder = resources.files("zoonode.protocol") / "vectors"
    return json.loads((folder / "feedback-v1.json").read_text(encoding="utf-8"))


def verdict(key, target=b"\x01" * 32, value=1, at=NOW, space=SPACE, task=None):
    body = Feedback(public_key_bytes(key), space, at, target, FeedbackVerdict(value), task)
    return sign_feedback(body, key)


def test_shipped_feedback_vectors_equal_the_generator():
    folder = resources.files("zoonode.protocol") / "vectors"
    assert (folder / "feedback-v1.json").read_text(encoding="utf-8") == render(
        build_feedback_vectors()
    )


def test_valid_feedback_vectors_rebuild_byte_for_byte():
    vectors = load()
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vectors["test_seed_hex"]))
    for case in vectors["valid"] + vectors["edge_valid"]:
        record = sign_feedback(feedback_from_json(case["fields"]), key)
        assert record.wire.hex() == case["wire_hex"], case["name"]
        assert record.id.hex() == case["id"]
        decoded = decode_feedback(bytes.fromhex(case["wire_hex"]))
        assert decoded.feedback == record.feedback


def test_invalid_feedback_vectors_fail_with_their_code():
    vectors = load()
    assert {c["error"] for c in vectors["invalid"]} >= {
        "oversize", "malformed", "trailing_bytes", "not_a_map", "unknown_field",
        "duplicate_field", "wrong_type", "unsupported_version", "missing_field",
        "out_of_range", "non_canonical", "bad_signature",
    }  # fmt: skip
    for case in vectors["invalid"]:
        with pytest.raises(ProtocolError) as err:
            decode_feedback(bytes.fromhex(case["wire_hex"]))
        assert err.value.code.value == case["error"], case["name"]


def test_a_feedback_record_is_never_an_experience_and_vice_versa(key):
    record = verdict(key)
    with pytest.raises(ProtocolError):
        decode(record.wire)  # key 1 is op there: bytes are wrong_type
    with pytest.raises(ProtocolError) as err:
        sign_feedback(record.feedback, Ed25519PrivateKey.generate())
    assert err.value.code is ErrorCode.BAD_KEY


def test_check_feedback_gives_each_fault_its_verdict(key):
    policy = Policy(space=SPACE)
    limiter = AuthorLimiter(rate=1.0, burst=2.0)
    good = verdict(key)

    def check(record, **kw):
        args = dict(known=lambda _id: False, limiter=AuthorLimiter(1e9, 1e9))
        args.update(kw)
        return check_feedback(record.wire, policy, NOW, args["known"], args["limiter"],
                              standing=kw.get("standing", lambda v, t: None))  # fmt: skip

    assert check(good).verdict is Verdict.ACCEPT
    assert check(verdict(key, space=bytes(16))).reason == Reason.WRONG_SPACE
    assert check(verdict(key, at=NOW + 600_000)).verdict is Verdict.REJECT
    assert check(verdict(key, at=NOW - 400 * 86_400_000)).reason == Reason.TOO_OLD
    assert check(good, known=lambda _id: True).reason == Reason.KNOWN
    later = (NOW + 1, b"\x00" * 32)
    assert check(good, standing=lambda v, t: later).reason == Reason.SUPERSEDED
    assert check(good, standing=lambda v, t: (NOW - 1, b"\xff" * 32)).verdict is Verdict.ACCEPT
    outcomes = [check(verdict(key, bytes([i]) * 32), limiter=limiter).reason for i in range(3)]
    assert outcomes == [Reason.OK, Reason.OK, Reason.VOTER_RATE]
    tampered = bytearray(good.wire)
    tampered[-1] ^= 1
    bad = check_feedback(bytes(tampered), policy, NOW, lambda _id: False, limiter)
    assert (bad.verdict, bad.reason) == (Verdict.REJECT, "bad_signature")


def test_the_store_keeps_one_standing_verdict_per_voter_and_target_the_latest(tmp_path, key):
    store = Store(tmp_path / "s.db", SPACE)
    assert store.schema_version == SCHEMA_VERSION
    table = store.feedback
    first = verdict(key, value=1, at=NOW)
    second = verdict(key, value=-1, at=NOW + 5)
    older = verdict(key, value=0, at=NOW - 5)
    other_target = verdict(key, target=b"\x02" * 32, at=NOW)
    outcomes = table.insert([(first, "p"), (first, "p"), (second, "p"), (older, "p")])
    assert [r.outcome for r in outcomes] == ["accepted", "duplicate", "replaced", "superseded"]
    assert outcomes[2].replaced == first.id
    [r] = table.insert([(other_target, None)])
    assert r.outcome == "accepted"
    assert table.counts() == {"helpful": 1, "harmful": 1, "withdrawn": 0}
    assert not table.known(first.id) and table.known(second.id)
    assert table.standing(first.feedback.voter, first.feedback.target) == (NOW + 5, second.id)
    store.close()
    reopened = Store(tmp_path / "s.db", SPACE)  # durable across reopen
    assert reopened.feedback.counts()["harmful"] == 1
    reopened.close()
