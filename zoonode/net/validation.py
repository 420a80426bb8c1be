"""Gossip validation, Lighthouse style: every record is ACCEPTed, IGNOREd or REJECTed, with a
reason code (pure: the clock, the known-id lookup and the rate state are passed in).

- REJECT: the sender broke the protocol (bad bytes, bad signature, another space, a record
  from far in the future, an oversize batch). GossipSub penalises the peer that sent it (P4).
- IGNORE: nothing wrong with the sender, but we do not want it (already known, older than the
  horizon, author banned for a mismatching embedding, the backlog of unchecked records full for
  a newcomer, author over its rate).
- ACCEPT: forward it and store it at once as *pending*.

The embedding check (the code must agree with the text) needs the encoder, ~10 ms a record, so
it runs in the background after the record is stored as pending, and on demand before a
pending record can be returned (README, "Ingest in two stages"). Its pure half is here:
:func:`code_vectors` (the vector a code implies, a pending record's place in the index) and
:func:`check_embeddings` (the rule: codes and re-encoded texts -> one verdict per record).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import msgpack
import numpy as np

from zoonode.native.codec import decompress_many
from zoonode.native.head import lower
from zoonode.protocol import (
    Op,
    ProtocolError,
    SignedFeedback,
    SignedRecord,
    decode,
    decode_feedback,
)

if TYPE_CHECKING:
    from zoonode.native.space import Space

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
    BACKLOG = "backlog"  # too many unchecked records already wait (from this newcomer or all)
    FLOOD = "flood"  # the forwarder sends more than flood_rate messages/s of nothing new
    # feedback topic only (NETWORK.md §4.7)
    SUPERSEDED = "superseded"  # a later verdict of the same voter on the same target is held
    VOTER_RATE = "voter_rate"  # the voter is over its feedback rate
    UNKNOWN_TARGET = "unknown_target"  # the target lesson is not held here (sync brings it later)
    FEEDBACK_FULL = "feedback_full"  # the bound on verdicts from voters without trust is reached


# IGNOREs that say nothing about the forwarder (an honest relay meets them): they never count
# toward its flood rate.
NO_PENALTY = frozenset({Reason.UNKNOWN_TARGET, Reason.FEEDBACK_FULL})
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


@dataclass(frozen=True)
class BacklogBounds:
    """How many stored records may wait for the embedding check.

    ``total``: over it, records of *newcomers* (authors none of whose records has passed the
    check here) are ignored until the backlog drains; ``per_author``: over it, that author's
    records are ignored, whoever it is. Authors with a checked record may go on past
    ``total``, each up to ``per_author``, but nobody past :attr:`hard` (twice ``total``):
    one checked lesson per identity does not buy a Sybil crowd an unbounded backlog."""

    total: int = 100_000
    per_author: int = 10_000

    @property
    def hard(self) -> int:
        """The backlog's hard bound, vouched authors included: ``2 x total``."""
        return 2 * self.total


def backlog_admits(
    pending_total: int, pending_of_author: int, vouched: bool, bounds: BacklogBounds
) -> bool:
    """Whether one more unchecked record of this author may be stored now."""
    if pending_of_author >= bounds.per_author or pending_total >= bounds.hard:
        return False
    return vouched or pending_total < bounds.total


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
    backlog: Callable[[SignedRecord], bool] = lambda r: True,
) -> Checked:
    """``decoder`` is the strict decode + signature check; the simulator passes a memoised
    one (it is a pure function of the bytes). ``backlog(record)`` says whether the record
    may join the backlog of unchecked records (:func:`backlog_admits`); when it may not the
    record is ignored with reason ``backlog``: not stored, not forwarded, nobody penalised."""
    try:
        record = decoder(wire)
    except ProtocolError as exc:
        return Checked(Verdict.REJECT, exc.code.value)
    return _check_decoded(record, policy, now_ms, known, limiter, banned, backlog)


def check_records(
    wires: Sequence[bytes],
    policy: Policy,
    now_ms: int,
    known_many: Callable[[list[bytes]], set[bytes]],
    limiter: AuthorLimiter,
    banned: Callable[[bytes], bool] = lambda a: False,
    decoder: Callable[[bytes], SignedRecord] = decode,
    backlog: Callable[[SignedRecord], bool] = lambda r: True,
    *,
    stop_at_reject: bool = True,
) -> Iterator[Checked]:
    """:func:`check_record` on each wire in order, with one ``known_many(ids)`` lookup (the
    subset of ``ids`` already known) for all the records instead of one ``known`` per record:
    the same verdicts, same reasons, same rate state. ``stop_at_reject``: stop after the first
    REJECT (a gossip message); else every wire gets its verdict (sync's ``get``). Every wire
    up to the stop is decoded and verified, and the known ids looked up, before the first
    verdict; the rest of each record's checks (banned, backlog bound, author rate) run as its
    verdict is taken from the iterator, so a caller that queues each accepted record before
    taking the next one has the bounds see it, as with :func:`check_record` one at a time."""
    prepared = prepare_records(wires, known_many, decoder, stop_at_reject=stop_at_reject)
    yield from verdicts_of(
        prepared, policy, now_ms, limiter, banned, backlog, stop_at_reject=stop_at_reject
    )


@dataclass
class Prepared:
    """:func:`prepare_records`'s result: each wire decoded and verified (or its REJECT), and
    the ids among them already known."""

    decoded: list[SignedRecord | Checked]
    held: set[bytes]


def prepare_records(
    wires: Sequence[bytes],
    known_many: Callable[[list[bytes]], set[bytes]],
    decoder: Callable[[bytes], SignedRecord] = decode,
    *,
    stop_at_reject: bool = True,
) -> Prepared:
    """The first half of :func:`check_records`, the costly one: the strict decode and the
    Ed25519 signature of every wire (up to the first REJECT with ``stop_at_reject``), and one
    ``known_many`` lookup. It holds no rate or bound state, so it may run off the event loop
    (sync does it in a worker thread); :func:`verdicts_of` takes the rest."""
    decoded: list[SignedRecord | Checked] = []
    for wire in wires:
        try:
            decoded.append(decoder(wire))
        except ProtocolError as exc:
            decoded.append(Checked(Verdict.REJECT, exc.code.value))
            if stop_at_reject:
                break
    ids = [r.id for r in decoded if not isinstance(r, Checked)]
    return Prepared(decoded, known_many(ids) if ids else set())


def verdicts_of(
    prepared: Prepared,
    policy: Policy,
    now_ms: int,
    limiter: AuthorLimiter,
    banned: Callable[[bytes], bool] = lambda a: False,
    backlog: Callable[[SignedRecord], bool] = lambda r: True,
    *,
    stop_at_reject: bool = True,
) -> Iterator[Checked]:
    """The second half of :func:`check_records`: each prepared record's remaining checks
    (space, time, known, banned, backlog bound, author rate), lazily, in order."""
    known = prepared.held.__contains__
    for item in prepared.decoded:
        result = (
            item
            if isinstance(item, Checked)
            else _check_decoded(item, policy, now_ms, known, limiter, banned, backlog)
        )
        yield result
        if stop_at_reject and result.verdict is Verdict.REJECT:
            return


def _check_decoded(
    record: SignedRecord,
    policy: Policy,
    now_ms: int,
    known: Callable[[bytes], bool],
    limiter: AuthorLimiter,
    banned: Callable[[bytes], bool],
    backlog: Callable[[SignedRecord], bool],
) -> Checked:
    """:func:`check_record`'s checks after the strict decode and signature."""
    exp = record.experience
    refused = _envelope(
        record, exp.space, exp.created_at, exp.author, policy, now_ms, known, banned
    )
    if refused is not None:
        return refused
    if not backlog(record):
        return Checked(Verdict.IGNORE, Reason.BACKLOG, record)
    if not limiter.allow(exp.author, now_ms / 1000):
        return Checked(Verdict.IGNORE, Reason.AUTHOR_RATE, record)
    return Checked(Verdict.ACCEPT, Reason.OK, record)


def _envelope(
    record: Any,
    space: bytes,
    created_at: int,
    signer: bytes,
    policy: Policy,
    now_ms: int,
    known: Callable[[bytes], bool],
    banned: Callable[[bytes], bool],
) -> Checked | None:
    """The checks every record type shares (NETWORK.md §4.5, §4.7), in order: space (REJECT
    ``wrong_space``), ``from_future`` (REJECT), ``too_old``, ``known``, ``author_banned`` (the
    signer) (IGNORE); None when the record passes them all."""
    if space != policy.space:
        return Checked(Verdict.REJECT, Reason.WRONG_SPACE, record)
    if created_at > now_ms + policy.max_future_ms:
        return Checked(Verdict.REJECT, Reason.FROM_FUTURE, record)
    if created_at < now_ms - policy.horizon_ms:
        return Checked(Verdict.IGNORE, Reason.TOO_OLD, record)
    if known(record.id):
        return Checked(Verdict.IGNORE, Reason.KNOWN, record)
    if banned(signer):
        return Checked(Verdict.IGNORE, Reason.AUTHOR_BANNED, record)
    return None


def code_vectors(codes: Sequence[bytes], head: np.ndarray, v_ref: np.ndarray) -> np.ndarray:
    """The unit vectors (n, h) that codes imply in the space's compact coordinates: each
    964-byte code decoded to its 7680-d BitDelta vector, projected onto the head's basis
    (W^T v_hat) and normalised. A pending record is indexed at this vector until its text is
    re-encoded (cos to the text's own vector ~0.98 for an honest record)."""
    if not codes:
        return np.zeros((0, head.shape[1]), np.float32)
    sketch = lower(decompress_many(list(codes), v_ref), head)
    return sketch / np.linalg.norm(sketch, axis=1, keepdims=True)


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
    target_held: Callable[[bytes], bool] = lambda t: True,
    admits: Callable[[bytes, bool], bool] = lambda v, replacing: True,
) -> Checked:
    """One feedback record on the feedback topic (NETWORK.md §4.7): decode and verify
    (REJECT, the SPEC code), space (REJECT ``wrong_space``), ``from_future`` (REJECT),
    ``too_old``, ``known``, ``author_banned`` (the voter), ``superseded`` (``standing(voter,
    target)`` names a verdict held that is later: (created_at, id) greater),
    ``unknown_target`` (``target_held(target)`` is false), ``feedback_full`` (``admits(voter,
    replacing)`` is false: the node's bound on verdicts from voters without trust),
    ``voter_rate`` (``limiter``: the voter's token bucket): IGNORE. Otherwise ACCEPT."""
    try:
        record = decoder(wire)
    except ProtocolError as exc:
        return Checked(Verdict.REJECT, exc.code.value)
    fb = record.feedback
    refused = _envelope(record, fb.space, fb.created_at, fb.voter, policy, now_ms, known, banned)
    if refused is not None:
        return refused
    held = standing(fb.voter, fb.target)
    if held is not None and held >= (fb.created_at, record.id):
        return Checked(Verdict.IGNORE, Reason.SUPERSEDED, record)
    if not target_held(fb.target):
        return Checked(Verdict.IGNORE, Reason.UNKNOWN_TARGET, record)
    if not admits(fb.voter, held is not None):
        return Checked(Verdict.IGNORE, Reason.FEEDBACK_FULL, record)
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
    known_many: Callable[[list[bytes]], set[bytes]] | None = None,
    backlog: Callable[[SignedRecord, Counter[bytes]], bool] | None = None,
    ahead: Counter[bytes] | None = None,
    **extra: Callable,
) -> MessageVerdict:
    """Validate one gossip message's data: the batch framing, then each record in order with
    ``check`` (``check_record`` on the experience topic; ``check_feedback`` with its
    ``standing`` lookup on the feedback topic); ``extra`` keyword arguments go to ``check``.
    ``known_many`` (experience topic): the known test for the whole message in one lookup
    (:func:`check_records`), instead of ``known`` per record.

    ``backlog(record, ahead)`` (experience topic): the backlog bound (:func:`check_record`),
    told the lessons accepted and not yet queued, by author: ``ahead`` (earlier messages not
    yet handed over; not changed here), then this message's before this record. They are not
    queued until the whole message is accepted, so a bound read from the node's counts alone
    let one message of 256 records past it (a fresh review: 30 of one author stored under
    ``max_pending_per_author`` 10)."""
    try:
        wires = decode_batch(data)
    except ValueError as exc:
        return MessageVerdict(Verdict.REJECT, str(exc.args[0]), [], [])
    ahead = Counter(ahead)  # and this message's lessons accepted so far, by author
    if backlog is not None:
        extra = {**extra, "backlog": lambda r: backlog(r, ahead)}
    if known_many is not None and check is check_record:
        results = check_records(wires, policy, now_ms, known_many, limiter, banned, **extra)
    else:
        results = (check(w, policy, now_ms, known, limiter, banned, **extra) for w in wires)
    checked = []
    for result in results:  # lazily: each verdict is counted before the next one is taken
        checked.append(result)
        if result.verdict is Verdict.REJECT:
            return MessageVerdict(Verdict.REJECT, result.reason, [], checked)
        if backlog is not None and result.verdict is Verdict.ACCEPT:
            experience = result.record.experience
            if experience.op is not Op.REVOKE:  # a revocation never waits for the check
                ahead[experience.author] += 1
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
    sketch = code_vectors(codes, head, v_ref)
    return np.sum(sketch * np.asarray(text_compact, np.float32), axis=1)


def embedding_agrees(
    codes: list[bytes],
    text_compact: np.ndarray,
    head: np.ndarray,
    v_ref: np.ndarray,
    threshold: float,
) -> np.ndarray:
    return embedding_agreement(codes, text_compact, head, v_ref) >= threshold


@dataclass(frozen=True)
class EmbeddingVerdict:
    """The embedding check's answer for one record.

    ``accept``: the code agrees with the text (the record becomes active); ``score``: the
    statistic the rule tested (here the cosine agreement); ``ban``: the evidence is enough to
    ban the author on this node (a rejected record is always tombstoned, banned or not)."""

    accept: bool
    score: float
    ban: bool


class EmbeddingRule(Protocol):
    """What the node calls to check codes against re-encoded texts: ``codes`` (n records'
    964-byte codes), ``text_compact`` (n, h) unit vectors of their texts in compact
    coordinates, ``space`` (head, v_ref). One verdict per record, in order. Pure."""

    def __call__(
        self, codes: Sequence[bytes], text_compact: np.ndarray, space: Space
    ) -> list[EmbeddingVerdict]: ...


@dataclass(frozen=True)
class AbsoluteAgreement:
    """The rule today: accept when cos(code's vector, text's vector) >= ``threshold``, and
    ban the author of any record below it (one signed mismatch is proof against its author).

    Honest same-backbone records score 0.963-0.985; a random text's code median 0.09
    (benchmarks/embedding_check.py). Another rule (a relative test, proportional punishment)
    is a drop-in replacement: any :class:`EmbeddingRule`."""

    threshold: float = 0.9

    def __call__(
        self, codes: Sequence[bytes], text_compact: np.ndarray, space: Space
    ) -> list[EmbeddingVerdict]:
        scores = embedding_agreement(list(codes), text_compact, space.head, space.v_ref)
        return [
            EmbeddingVerdict(bool(s >= self.threshold), float(s), bool(s < self.threshold))
            for s in scores
        ]
