"""GossipSub for experiences: one topic per space, batched messages, validated and scored.

Choices against py-libp2p 0.8.1's defaults (notes/py-libp2p-0.8.1.md):
- explicit mesh degree (D 6, D_lo 4, D_hi 12) and a 1 s heartbeat (the default is 120 s);
- the built-in spam limit (10 msgs/s per topic, which drops our own publishes) is off; floods
  are scored instead. A peer sending more than ``flood_rate`` messages/s *that bring nothing
  new* (every record ignored) gets a negative application score (P6), and while it is over
  the rate its messages are rejected unread (reason ``flood``, P4). The P4 step is needed
  because py-libp2p 0.8.1's publish gate (``allow_publish``, one topic) reads only the topic
  score: P6 lowers the graylist score (no GRAFT, no gossip) but never stops a message from
  being validated. Valid news is never counted as flood: under a 4,000-Sybil flood of valid
  records, counting every message made honest relays the ones cut off (simulations/results/
  sybil-1000-4000), since a relay forwards what its peers publish;
- invalid messages (P4, weight 10) push a peer under the graylist threshold (-80) after ~8;
- the eclipse "IP diversity" heuristic is off: on one machine every peer is 127.0.0.1;
- message id = SHA-256 of the payload (content-addressed): a restarted node's new messages are
  never mistaken for old ones (pitfall 5), and a batch seen twice is dropped once;
- batches of up to 128 records, flushed by size or after 50 ms; publishing waits while a peer's
  outbound queue is more than half full instead of letting the library drop (pitfall 6);
- "ignore" (Lighthouse's middle verdict, which py-libp2p's bool validators lack): a message
  whose records are all ignored (known, too old, banned author, author over its rate) is
  accepted without penalty but not forwarded. Forwarding it made honest relays carry a
  spammer's flood, and their neighbours' flood score (P6) then graylisted the relays.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import weakref
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from zoonode.net.scoring import RULES, ScoreRules
from zoonode.net.validation import (
    NO_PENALTY,
    AuthorLimiter,
    Checked,
    MessageVerdict,
    Policy,
    Reason,
    Verdict,
    check_feedback,
    check_message,
    encode_batch,
)
from zoonode.protocol import Op, SignedRecord

log = logging.getLogger(__name__)

BATCH_RECORDS = 128
MAX_PENDING = 4096
FLUSH_SECONDS = 0.05


EXPERIENCE_TOPIC = "experiences"
FEEDBACK_TOPIC = "feedback"  # "feedback" is its own plural (SPEC.md §1.1)


def topic_for(space: bytes, record_type: str = EXPERIENCE_TOPIC) -> str:
    """NETWORK.md §4.1: one topic per space and record type."""
    return f"/zoo/dso/1/{space.hex()}/{record_type}"


def content_message_id(msg) -> bytes:
    """NETWORK.md §4.3: SHA-256 of the pubsub message's ``data`` (32 raw bytes)."""
    return hashlib.sha256(msg.data).digest()


@dataclass
class GossipStats:
    """Counters the node exports as metrics."""

    messages_in: int = 0
    messages_out: int = 0
    records_out: int = 0
    not_forwarded: int = 0  # messages whose records were all ignored
    reader_wait_s: float = 0.0  # time the subscription reader spent handing records over
    # messages ignored because the ingest queue had no room for them, or the library would not
    # have delivered them (its subscription channel full: Gossip._deliverable)
    queue_full: int = 0
    malformed_rpc: int = 0  # pubsub streams reset for an RPC the library could not handle
    verdicts: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def _one_writer_per_stream(write: Callable[..., Awaitable[bool]]) -> Callable[..., Awaitable[bool]]:
    """py-libp2p's ``Pubsub.write_msg`` with one write at a time per stream. The library
    writes a peer's RPCs from its per-peer queue task and, for published messages and some
    control messages, straight from the router: two writers on one yamux stream interleave
    the frames of a large RPC (a batch of records is ~200 KB), and the receiver reads a
    length prefix followed by another RPC's bytes (protobuf DecodeError; a node that joined
    after a 200-lesson batch counted 2-26 such resets in 25 s)."""
    locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    async def write_msg(stream, rpc_msg) -> bool:
        lock = locks.get(stream)
        if lock is None:
            lock = locks[stream] = trio.Lock()
        async with lock:
            return await write(stream, rpc_msg)

    return write_msg


class FloodMeter:
    """Messages per second per forwarding peer that brought nothing new, over a sliding
    window: the P6 input."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self.seen: dict[object, deque[float]] = defaultdict(deque)

    def hit(self, peer: object, now: float) -> None:
        times = self.seen[peer]
        times.append(now)
        while times and times[0] < now - self.window:
            times.popleft()

    def rate(self, peer: object, now: float) -> float:
        times = self.seen.get(peer)
        if not times:
            return 0.0
        while times and times[0] < now - self.window:
            times.popleft()
        return len(times) / self.window


def score_params(flood_rate: float, meter: FloodMeter, rules: ScoreRules = RULES):
    from libp2p.pubsub.score import ScoreParams, TopicScoreParams

    def app_score(peer) -> float:
        excess = meter.rate(peer, time.monotonic()) - flood_rate
        return -excess if excess > 0 else 0.0

    return ScoreParams(
        p1_time_in_mesh=TopicScoreParams(
            weight=rules.p1_weight, cap=rules.p1_cap, decay=rules.p1_decay
        ),
        p2_first_message_deliveries=TopicScoreParams(
            weight=rules.p2_weight, cap=rules.p2_cap, decay=rules.p2_decay
        ),
        p4_invalid_messages=TopicScoreParams(
            weight=rules.p4_weight, cap=rules.p4_cap, decay=rules.p4_decay
        ),
        p6_appl_slack_weight=rules.p6_weight,
        p6_appl_slack_decay=1.0,
        publish_threshold=rules.publish_threshold,
        gossip_threshold=rules.gossip_threshold,
        graylist_threshold=rules.graylist_threshold,
        accept_px_threshold=0.0,
        app_specific_score_fn=app_score,
    )


@dataclass
class Channel:
    """One topic with its own validation, delivery callback, stats and outbox."""

    topic: str
    check: Callable[[bytes], MessageVerdict]
    on_records: Callable[[list[Checked], str], Awaitable[None]]
    stats: GossipStats = field(default_factory=GossipStats)
    # Records the receiving queue can still take (None: unbounded). py-libp2p drops a
    # validated message when the subscription's 32-message channel is full, so the reader
    # must never wait: a message whose records would not fit beside those already accepted and
    # not yet handed over is ignored (reason backlog) before it is accepted, never lost after.
    room: Callable[[], int] | None = None
    inflight: int = 0  # records accepted by the validator, not yet handed to on_records
    # Of those, the lessons that will wait for the embedding check, by author: they count
    # toward the backlog bounds of the next messages' validation (experience topic).
    inflight_of: Counter[bytes] = field(default_factory=Counter)
    # Validated messages wait here for the subscription reader; bounded, oldest dropped
    # (a message validated but never delivered, e.g. a duplicate, must not leak).
    pending: OrderedDict[bytes, tuple[list[Checked], str]] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self.outbox_send, self.outbox_recv = trio.open_memory_channel[bytes](10_000)


def _waiting_authors(accepted: list[Checked]) -> Counter[bytes]:
    """The authors of the lessons among ``accepted`` that will wait for the embedding check
    (experience records but revocations; none on the feedback topic)."""
    return Counter(
        c.record.experience.author
        for c in accepted
        if isinstance(c.record, SignedRecord) and c.record.experience.op is not Op.REVOKE
    )


def _handed_over(channel: Channel, accepted: list[Checked]) -> None:
    """``accepted`` left the channel's pending messages (delivered, or dropped unread)."""
    channel.inflight -= len(accepted)
    channel.inflight_of.subtract(_waiting_authors(accepted))
    for author in [a for a, n in channel.inflight_of.items() if n <= 0]:
        del channel.inflight_of[author]


class Gossip:
    """Subscribes to the space's topics, validates every message, batches what we publish.

    The experience topic is always on; ``add_feedback`` adds the feedback topic (NETWORK.md
    §4.7) before ``run_services``. ``on_records`` receives the ACCEPTed records of each valid
    message with the forwarding peer; it must return quickly (the node queues them for the
    store, where they wait for the embedding check). ``backlog(record)``: whether the record
    may join the node's backlog of unchecked records; when not, the record is ignored (reason
    ``backlog``). ``room()``: records the ingest queue can still take (experience topic only;
    the feedback topic has its own queue and room, never the records' backlog).
    ``known_many(ids)``: the known subset of a message's ids in one lookup (optional; else
    ``known`` per record).
    """

    def __init__(
        self,
        host,
        policy: Policy,
        known: Callable[[bytes], bool],
        banned: Callable[[bytes], bool],
        on_records: Callable[[list[Checked], str], Awaitable[None]],
        *,
        flood_rate: float = 50.0,
        backlog: Callable[[SignedRecord, Counter[bytes]], bool] | None = None,
        room: Callable[[], int] = lambda: 1 << 30,
        known_many: Callable[[list[bytes]], set[bytes]] | None = None,
    ) -> None:
        from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
        from libp2p.pubsub.pubsub import Pubsub

        self.host = host
        self.policy = policy
        self.known = known
        # ``known`` for a whole message at once (one store lookup per message, not per record)
        self.known_many = known_many
        self.banned = banned
        self.on_records = on_records
        self.backlog = backlog  # may this record wait for the embedding check? (else IGNORE)
        # Records the ingest queue can still take. py-libp2p drops a validated message when
        # the subscription's 32-message channel is full, so the reader must never wait: a
        # message whose records would not fit beside those already accepted and not yet
        # handed over is ignored (reason backlog) before it is accepted, never lost after.
        self.room = room
        self.topic = topic_for(policy.space)
        self.limiter = AuthorLimiter(policy.author_rate, policy.author_burst)
        self.meter = FloodMeter()
        self.flood_rate = flood_rate
        self.stats = GossipStats()
        self.channels: dict[str, Channel] = {}
        self.channels[self.topic] = Channel(
            self.topic,
            lambda data: check_message(
                data,
                self.policy,
                time.time_ns() // 1_000_000,
                self.known,
                self.limiter,
                self.banned,
                backlog=self.backlog,
                known_many=self.known_many,
                ahead=self.channels[self.topic].inflight_of,
            ),
            on_records,
            self.stats,
            room=lambda: self.room(),
        )
        self.feedback: Channel | None = None
        self.router = GossipSub(
            # 1.1 and 1.0 only: without IDONTWANT the library roughly doubles throughput
            # (notes, "Numbers"), and 1.1 is enough for scoring and PRUNE backoff.
            protocols=[PROTOCOL_ID_V11, PROTOCOL_ID],
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_interval=1,
            heartbeat_initial_delay=0.1,
            time_to_live=30,
            gossip_window=3,
            gossip_history=5,
            score_params=score_params(flood_rate, self.meter),
            spam_protection_enabled=False,
            eclipse_protection_enabled=False,
        )
        self.pubsub = Pubsub(
            host,
            self.router,
            strict_signing=True,
            msg_id_constructor=content_message_id,
            seen_ttl=300,
            validation_cache_size=4096,
        )
        self.pubsub.counter = time.time_ns()  # pitfall 5, in case ids ever use seqno
        self.pubsub.continuously_read_stream = self._guarded_reader(
            self.pubsub.continuously_read_stream
        )
        self.pubsub.write_msg = _one_writer_per_stream(self.pubsub.write_msg)
        # Ids of messages the validator ignored: the router's forwarding skips them.
        self._ignored: OrderedDict[bytes, None] = OrderedDict()
        forward = self.router.publish

        async def forward_unless_ignored(msg_forwarder, msg) -> None:
            message_id = content_message_id(msg)
            if message_id in self._ignored:
                del self._ignored[message_id]
                for topic in msg.topicIDs:
                    if topic in self.channels:
                        self.channels[topic].stats.not_forwarded += 1
                return
            await forward(msg_forwarder, msg)

        self.router.publish = forward_unless_ignored

    def _guarded_reader(
        self, read: Callable[[object], Awaitable[None]]
    ) -> Callable[[object], Awaitable[None]]:
        """py-libp2p's pubsub stream reader, made safe against what a peer sends: the library
        catches only its stream errors and an oversized RPC, so a frame that does not parse as
        a pubsub RPC (protobuf's DecodeError: seven bytes did it) or a control message its
        router fails on went up through the swarm and stopped the node. Here any such error
        resets that peer's pubsub stream and drops it from pubsub's peers, as the library does
        for an oversized RPC (the connection and sync stay; the peer may open a new stream),
        and counts it (``GossipStats.malformed_rpc``, ``/metrics``). Cancellation passes."""

        async def guarded(stream) -> None:
            try:
                await read(stream)
            except Exception as exc:  # anything a peer's bytes can raise
                peer = stream.muxed_conn.peer_id
                self.stats.malformed_rpc += 1
                log.info("pubsub stream of %s reset: %s: %s", peer, type(exc).__name__, exc)
                with contextlib.suppress(Exception):
                    await stream.reset()
                self.pubsub._handle_dead_peer(peer)

        return guarded

    def add_feedback(
        self,
        known: Callable[[bytes], bool],
        standing: Callable[[bytes, bytes], tuple[int, bytes] | None],
        on_records: Callable[[list[Checked], str], Awaitable[None]],
        room: Callable[[], int] | None = None,
        **extra: Callable,
    ) -> Channel:
        """The feedback topic (``/zoo/dso/1/<space>/feedback``): its records are checked by
        ``check_feedback`` (``known`` ids, the ``standing`` verdict of a voter on a target,
        the voter's own token bucket) and handed to ``on_records``; ``room()`` is what the
        feedback queue can still take (a message that does not fit is ignored, reason
        ``backlog``; the records' backlog of unchecked lessons never limits it); ``extra``
        goes to ``check_feedback`` (``target_held``, ``admits``). Call before running."""
        limiter = AuthorLimiter(self.policy.feedback_rate, self.policy.feedback_burst)
        topic = topic_for(self.policy.space, FEEDBACK_TOPIC)
        self.feedback = self.channels[topic] = Channel(
            topic,
            lambda data: check_message(
                data,
                self.policy,
                time.time_ns() // 1_000_000,
                known,
                limiter,
                self.banned,
                check=check_feedback,
                standing=standing,
                **extra,
            ),
            on_records,
            room=room,
        )
        self.feedback_limiter = limiter
        return self.feedback

    @property
    def inflight(self) -> int:
        """Experience records accepted by the validator, not yet handed to ``on_records``."""
        return self.channels[self.topic].inflight

    # -- validation -----------------------------------------------------------------------
    def _validate(self, forwarder, msg) -> bool:
        """Sync validator of the experience topic (see ``_validate_on``)."""
        return self._validate_on(self.channels[self.topic], forwarder, msg)

    def _validate_on(self, channel: Channel, forwarder, msg) -> bool:
        """Sync validator, run on every message of ``channel``'s topic (ours too) before it
        is forwarded."""
        stats = channel.stats
        stats.messages_in += 1
        if self.meter.rate(forwarder, time.monotonic()) > self.flood_rate:
            stats.verdicts[f"reject:{Reason.FLOOD}"] += 1
            log.debug("reject message from %s: flood", forwarder)
            return False
        outcome = channel.check(msg.data)
        for checked in outcome.checked:
            stats.verdicts[f"{checked.verdict.value}:{checked.reason}"] += 1
        if outcome.verdict is Verdict.REJECT:
            if not outcome.checked:  # the batch itself, not a record
                stats.verdicts[f"reject:{outcome.reason}"] += 1
            log.debug("reject message from %s on %s: %s", forwarder, channel.topic, outcome.reason)
            return False
        accepted = outcome.accepted
        message_id = content_message_id(msg)
        room = channel.room
        if accepted and (
            (room is not None and room() - channel.inflight < len(accepted))
            or not self._deliverable(channel.topic, forwarder, msg)
        ):
            stats.verdicts[f"accept:{Reason.OK}"] -= len(accepted)
            stats.verdicts[f"ignore:{Reason.BACKLOG}"] += len(accepted)
            stats.queue_full += 1
            self._ignored[message_id] = None  # not forwarded, nobody penalised
            while len(self._ignored) > MAX_PENDING:
                self._ignored.popitem(last=False)
            return True
        if accepted:
            channel.pending[message_id] = (accepted, str(forwarder))
            channel.inflight += len(accepted)
            channel.inflight_of.update(_waiting_authors(accepted))
            while len(channel.pending) > MAX_PENDING:
                _handed_over(channel, channel.pending.popitem(last=False)[1][0])
        elif forwarder != self.host.get_id():  # our own publishes of stored records go out
            if any(c.reason not in NO_PENALTY for c in outcome.checked):
                self.meter.hit(forwarder, time.monotonic())  # nothing new: toward a flood
            self._ignored[message_id] = None
            while len(self._ignored) > MAX_PENDING:
                self._ignored.popitem(last=False)
        return True

    def _deliverable(self, topic: str, forwarder, msg) -> bool:
        """Whether py-libp2p will hand this message, once validated, to our subscription.
        It drops it unread where the subscription's channel (32 messages) is full, which a
        burst of more than 32 messages in one RPC does (one task per message, none yielding
        between validation and delivery: a fresh review lost 3 of 36 that way), or where it
        claims our own id but comes from another peer. Counted as accepted, such a message's
        records stayed in ``inflight`` and the backlog bounds until the node restarted. The
        library validates and delivers with no checkpoint in between, so a channel with room
        now still has it at delivery."""
        send = self.pubsub.subscribed_topics_send.get(topic)
        if send is None:
            return False
        if msg.from_id == self.host.get_id().to_bytes() and forwarder != self.host.get_id():
            return False
        stats = send.statistics()
        return stats.current_buffer_used < stats.max_buffer_size

    # -- running --------------------------------------------------------------------------
    async def run_services(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Start pubsub + router (before the host listens: pitfall 3), then serve forever."""
        from libp2p.tools.anyio_service import background_trio_service

        async with background_trio_service(self.pubsub), background_trio_service(self.router):
            await self.pubsub.wait_until_ready()
            async with trio.open_nursery() as nursery:
                for channel in self.channels.values():
                    self.pubsub.set_topic_validator(
                        channel.topic,
                        lambda forwarder, msg, channel=channel: self._validate_on(
                            channel, forwarder, msg
                        ),
                        False,
                    )
                    subscription = await self.pubsub.subscribe(channel.topic)
                    nursery.start_soon(self._receive, channel, subscription)
                    nursery.start_soon(self._flush_loop, channel)
                task_status.started()
                await trio.sleep_forever()

    async def _receive(self, channel: Channel, subscription) -> None:
        while True:
            msg = await subscription.get()
            accepted, forwarder = channel.pending.pop(content_message_id(msg), ([], ""))
            _handed_over(channel, accepted)
            if accepted:
                started = time.monotonic()
                await channel.on_records(accepted, forwarder)
                channel.stats.reader_wait_s += time.monotonic() - started

    async def publish(self, wires: list[bytes]) -> None:
        """Queue experience records for the experience topic."""
        for wire in wires:
            await self.channels[self.topic].outbox_send.send(wire)

    async def publish_feedback(self, wires: list[bytes]) -> None:
        """Queue feedback records for the feedback topic."""
        assert self.feedback is not None, "add_feedback first"
        for wire in wires:
            await self.feedback.outbox_send.send(wire)

    async def _flush_loop(self, channel: Channel) -> None:
        batch: list[bytes] = []
        while True:
            with trio.move_on_after(FLUSH_SECONDS):
                while len(batch) < BATCH_RECORDS:
                    batch.append(await channel.outbox_recv.receive())
            if batch:
                await self._wait_for_room()
                await self.pubsub.publish(channel.topic, encode_batch(batch))
                channel.stats.messages_out += 1
                channel.stats.records_out += len(batch)
                batch = []

    async def _wait_for_room(self, limit: int = 16, timeout: float = 5.0) -> None:
        """Backpressure: the library drops RPCs when a peer's queue (32) is full."""
        with trio.move_on_after(timeout):
            while any(len(q) > limit for q in self.pubsub.peer_queues.values()):
                await trio.sleep(0.005)

    def peer_scores(self) -> dict[str, float]:
        scorer = self.router.scorer
        peers = list(self.pubsub.peers) if hasattr(self.pubsub, "peers") else []
        return {str(p): scorer.score(p, [self.topic]) for p in peers}

    def mesh_peers(self, topic: str | None = None) -> list[str]:
        return [str(p) for p in self.router.mesh.get(topic or self.topic, ())]
