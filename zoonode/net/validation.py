"""Gossip validation, Lighthouse style: every record is ACCEPTed, IGNOREd or REJECTed, with a
reason code (pure: the clock, the known-id lookup and the rate state are passed in).

- REJECT: the sender broke the protocol (bad bytes, bad signature, another space, a record
  from far in the future, an oversize batch). GossipSub penalises the peer that sent it (P4).
- IGNORE: nothing wrong with the sender, but we do not want it (already known, older than the
  horizon, author over its rate, author banned for a mismatching embedding).
- ACCEPT: forward it and queue it for the embedding check and the store.

The embedding check (the code must agree with the text) needs the encoder, ~10 ms a record, so
it runs after forwarding, before storing (see README, "design tensions");
:func:`embedding_agrees` is its pure half.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, StrEnum

import msgpack
import numpy as np

from zoonode.native.codec import decompress_many
from zoonode.native.head import lower
from zoonode.protocol import ProtocolError, SignedFeedback, SignedRecord, decode, decode_feedback

MAX_BATCH_RECORDS = 256
MAX_BATCH_BYTES = 512 * 1024  # well under libp2p's silent 1 MiB drop


class Verdict(Enum):
    ACCEPT = "accept"
    IGNORE = "ignore"
    REJECT = "reject"


class Reason(StrEnum):
    OK = "ok"
    MALFORMED_BATCH = "malformed_batch"
    OVERSIZE_BATCH = "oversize_batch"
    WRONG_SPACE = "wrong_space"
    FROM_FUTURE = "from_future"
    TOO_OLD = "too_old"
    KNOWN = "known"
    AUTHOR_RATE = "author_rate"
    AUTHOR_BANNED = "author_banned"
    EMBEDDING_MISMATCH = "embedding_mismatch"
    FLOOD = "flood"  # the forwarder sends more than flood_rate messages/s of nothing new
    # feedback topic only (NETWORK.md §4.7)
    SUPERSEDED = "superseded"  # a later verdict of the same voter on the same target is held
    VOTER_RATE = "voter_rate"  # the voter is over its feedback rate
    # plus every protocol ErrorCode value (bad_signature, oversize, ...), used as is


@dataclass(frozen=True)
class Policy:
    space: bytes
    max_future_ms: int = 5 * 60_000
    horizon_ms: int = 365 * 24 * 3_600_000
    author_rate: float = 20.0  # records per second per author, sustained
    author_burst: float = 200.0
    feedback_rate: float = 5.0  # verdicts per second per voter, sustained
    feedback_burst: float = 200.0


@dataclass
class AuthorLimiter:
    """Token bucket per author; the state of the per-author rate rule."""

    rate: float
    burst: float
    buckets: dict[bytes, tuple[float, float]] = field(default_factory=dict)

    def allow(self, author: bytes, now_s: float) -> bool:
        tokens, last = self.buckets.get(author, (self.burst, now_s))
        tokens = min(self.burst, tokens + (now_s - last) * self.rate)
        if tokens < 1.0:
            self.buckets[author] = (tokens, now_s)
            return False
        self.buckets[author] = (tokens - 1.0, now_s)
        if len(self.buckets) > 100_000:  # bound memory: forget the fullest buckets
            for key in [k for k, (t, _) in self.buckets.items() if t >= self.burst - 1][:50_000]:
                del self.buckets[key]
        return True


@dataclass(frozen=True)
class Checked:
    verdict: Verdict
    reason: str
    record: SignedRecord | SignedFeedback | None = None


def encode_batch(wires: list[bytes]) -> bytes:
    return msgpack.packb(wires, use_bin_type=True)


def decode_batch(data: bytes) -> list[bytes]:
    """A gossip message (NETWORK.md §4.2): a msgpack array of 1..256 ``bin`` record wires,
    at most 512 KiB. Raises ValueError(reason), checked in this order: ``oversize_batch``
    (over 512 KiB), ``malformed_batch`` (not exactly one msgpack array), ``malformed_batch``
    (empty), ``oversize_batch`` (over 256 items), ``malformed_batch`` (an item not bin)."""
    if len(data) > MAX_BATCH_BYTES:
        raise ValueError(Reason.OVERSIZE_BATCH)
    try:
        items = msgpack.unpackb(data, raw=False, use_list=True, max_ext_len=0, ext_hook=_no_ext)
    except Exception as exc:
        raise ValueError(Reason.MALFORMED_BATCH) from exc
    if type(items) is not list or not items:
        raise ValueError(Reason.MALFORMED_BATCH)
    if len(items) > MAX_BATCH_RECORDS:
        raise ValueError(Reason.OVERSIZE_BATCH)
    if not all(type(i) is bytes for i in items):  # raw=False: a str item decodes to str
        raise ValueError(Reason.MALFORMED_BATCH)
    return items


def _no_ext(code: int, data: bytes) -> None:
    raise ValueError("ext")


def check_record(
    wire: bytes,
    policy: Policy,
    now_ms: int,
    known: Callable[[bytes], bool],
    limiter: AuthorLimiter,
    banned: Callable[[bytes], bool] = lambda a: False,
    decoder: Callable[[bytes], SignedRecord] = decode,
) -> Checked:
    """``decoder`` is the strict decode + signature check; the simulator passes a memoised
    one (it is a pure function of the bytes)."""
    try:
        record = decoder(wire)
    except ProtocolError as exc:
        return Checked(Verdict.REJECT, exc.code.value)
    exp = record.experience
    if exp.space != policy.space:
        return Checked(Verdict.REJECT, Reason.WRONG_SPACE, record)
    if exp.created_at > now_ms + policy.max_future_ms:
        return Checked(Verdict.REJECT, Reason.FROM_FUTURE, record)
    if exp.created_at < now_ms - policy.horizon_ms:
        return Checked(Verdict.IGNORE, Reason.TOO_OLD, record)
    if known(record.id):
        return Checked(Verdict.IGNORE, Reason.KNOWN, record)
    if banned(exp.author):
        return Checked(Verdict.IGNORE, Reason.AUTHOR_BANNED, record)
    if not limiter.allow(exp.author, now_ms / 1000):
        return Checked(Verdict.IGNORE, Reason.AUTHOR_RATE, record)
    return Checked(Verdict.ACCEPT, Reason.OK, record)


@dataclass(frozen=True)
class MessageVerdict:
    """A gossip message's outcome (NETWORK.md §4.4): REJECT at the first rejected record (its
    reason), else ACCEPT if any record is accepted, else IGNORE (the first record's reason)."""

    verdict: Verdict
    reason: str
    accepted: list[Checked]
    checked: list[Checked]


def check_feedback(
    wire: bytes,
    policy: Policy,
    now_ms: int,
    known: Callable[[bytes], bool],
    limiter: AuthorLimiter,
    banned: Callable[[bytes], bool] = lambda a: False,
    standing: Callable[[bytes, bytes], tuple[int, bytes] | None] = lambda v, t: None,
    decoder: Callable[[bytes], SignedFeedback] = decode_feedback,
) -> Checked:
    """One feedback record on the feedback topic (NETWORK.md §4.7): decode and verify
    (REJECT, the SPEC code), space (REJECT ``wrong_space``), ``from_future`` (REJECT),
    ``too_old``, ``known``, ``author_banned`` (the voter), ``superseded`` (``standing(voter,
    target)`` names a verdict held that is later: (created_at, id) greater), ``voter_rate``
    (``limiter``: the voter's token bucket): IGNORE. Otherwise ACCEPT."""
    try:
        record = decoder(wire)
    except ProtocolError as exc:
        return Checked(Verdict.REJECT, exc.code.value)
    fb = record.feedback
    if fb.space != policy.space:
        return Checked(Verdict.REJECT, Reason.WRONG_SPACE, record)
    if fb.created_at > now_ms + policy.max_future_ms:
        return Checked(Verdict.REJECT, Reason.FROM_FUTURE, record)
    if fb.created_at < now_ms - policy.horizon_ms:
        return Checked(Verdict.IGNORE, Reason.TOO_OLD, record)
    if known(record.id):
        return Checked(Verdict.IGNORE, Reason.KNOWN, record)
    if banned(fb.voter):
        return Checked(Verdict.IGNORE, Reason.AUTHOR_BANNED, record)
    held = standing(fb.voter, fb.target)
    if held is not None and held >= (fb.created_at, record.id):
        return Checked(Verdict.IGNORE, Reason.SUPERSEDED, record)
    if not limiter.allow(fb.voter, now_ms / 1000):
        return Checked(Verdict.IGNORE, Reason.VOTER_RATE, record)
    return Checked(Verdict.ACCEPT, Reason.OK, record)


def check_message(
    data: bytes,
    policy: Policy,
    now_ms: int,
    known: Callable[[bytes], bool],
    limiter: AuthorLimiter,
    banned: Callable[[bytes], bool] = lambda a: False,
    check: Callable[..., Checked] = check_record,
    **extra: Callable,
) -> MessageVerdict:
    """Validate one gossip message's data: the batch framing, then each record in order with
    ``check`` (``check_record`` on the experience topic, ``check_feedback`` with its
    ``standing`` lookup on the feedback topic)."""
    try:
        wires = decode_batch(data)
    except ValueError as exc:
        return MessageVerdict(Verdict.REJECT, str(exc.args[0]), [], [])
    checked: list[Checked] = []
    for wire in wires:
        result = check(wire, policy, now_ms, known, limiter, banned, **extra)
        checked.append(result)
        if result.verdict is Verdict.REJECT:
            return MessageVerdict(Verdict.REJECT, result.reason, [], checked)
    accepted = [c for c in checked if c.verdict is Verdict.ACCEPT]
    if accepted:
        return MessageVerdict(Verdict.ACCEPT, Reason.OK, accepted, checked)
    return MessageVerdict(Verdict.IGNORE, checked[0].reason, [], checked)


def embedding_agreement(
    codes: list[bytes], text_compact: np.ndarray, head: np.ndarray, v_ref: np.ndarray
) -> np.ndarray:
    """cos(W^T v_hat, u) per record: the code's projection onto the space's 384-d basis against
    the re-encoded text. Honest records score ~0.98 (1 bit over 7680 random directions is a good
    sketch of a 384-d vector); a code lifted from another text scores like that text's cosine."""
    if not codes:
        return np.zeros(0, np.float32)
    sketch = lower(decompress_many(codes, v_ref), head)
    sketch /= np.linalg.norm(sketch, axis=1, keepdims=True)
    return np.sum(sketch * np.asarray(text_compact, np.float32), axis=1)


def embedding_agrees(
    codes: list[bytes],
    text_compact: np.ndarray,
    head: np.ndarray,
    v_ref: np.ndarray,
    threshold: float,
) -> np.ndarray:
    return embedding_agreement(codes, text_compact, head, v_ref) >= threshold
