"""The ingest room: what enters the store, from us (publish, revoke), a file (import) or
the network (gossip, sync).

Data flow of a peer's record, stage 1 (the store's pace): gossip validator (decode, signature,
space, time, known, banned, backlog bound, author rate; REJECT penalises the forwarder) ->
forwarded by GossipSub -> ingest queue -> stored durably at once as *pending*, indexed at the
vector its code implies -> replica. Stage 2 (the encoder's pace) is ``checker``: the text is
re-encoded and the record promoted to active, or removed, tombstoned and its author banned.
Nothing pending is ever returned to an agent unchecked (``query``). Records missed while away
come back through sync and take the same path. Our own lessons are encoded here, so they are
stored active at once.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import trio

from zoonode.experiences import create_revocation, now_ms, sign_lessons
from zoonode.net.validation import (
    AuthorLimiter,
    Checked,
    Verdict,
    check_record,
    code_vectors,
)
from zoonode.protocol import Op, SignedRecord, decode
from zoonode.store import Incoming, InsertResult, Outcome, Status, StorageFull

if TYPE_CHECKING:
    from zoonode.node.core import Node

log = logging.getLogger("zoonode.node.ingest")

INGEST_BATCH = 256
# A backed-up queue is drained up to this many records a batch (no waiting for them): one
# commit (the fsync, the largest share of a stored record on a loaded disk) for up to 1,024.
INGEST_BATCH_MAX = 1024
INGEST_QUEUE = 10_000
FILL_S = 0.02  # longest a batch waits to fill
RATE_WINDOW_S = 1.0  # how far back ``Ingest.stored_rate`` looks


class Ingest:
    """Publishing, importing, revoking, and the queue of peers' records waiting for the
    embedding check."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._send, self._recv = trio.open_memory_channel[tuple[SignedRecord, str]](INGEST_QUEUE)
        # Peers' lessons in the queue, not yet stored, by author: they count toward the
        # backlog bounds (``Node.backlog_admits``) as if already waiting for the check;
        # otherwise a burst is admitted against counts that lag by up to the whole queue.
        self.queued_of: Counter[bytes] = Counter()
        self.queued_lessons = 0
        # The backlog's size when the batch being stored started (None: none is): that batch
        # is still in ``queued_lessons`` while ``KnowledgeBase.ingest`` adds it to the backlog,
        # so the sum counted it twice for a moment (``waiting``); and by author, for the
        # authors of that batch (``waiting_of``).
        self._storing_from: int | None = None
        self._storing_of: dict[bytes, int] = {}
        self._stores: deque[tuple[float, int]] = deque()  # (time, records) of store batches

    # -- our own lessons ----------------------------------------------------------------------
    async def publish(self, items: Sequence[dict]) -> list[tuple[bytes, str]]:
        """Encode, sign, store and gossip our own lessons. Returns (id, outcome) per item;
        a duplicate returns the existing id."""
        node = self.node

        def work() -> tuple[list[SignedRecord], list[InsertResult]]:
            results: list[InsertResult | None] = [self._own_copy(item) for item in items]
            todo = [i for i, res in enumerate(results) if res is None]
            records: list[SignedRecord] = []
            if todo:
                compact = node.encoder.encode_compact([items[i]["text"] for i in todo])
                records = sign_lessons(node.encoder, node.key, [items[i] for i in todo], compact)
                stored = node.kb.ingest(
                    [Incoming(r, v, "local") for r, v in zip(records, compact, strict=True)]
                )
                for i, res in zip(todo, stored, strict=True):
                    results[i] = res
            return records, [r for r in results if r is not None]

        records, results = await node.in_kb(work)
        accepted = {res.id for res in results if res.outcome is Outcome.ACCEPTED}
        fresh = [r for r in records if r.id in accepted]
        for res in results:
            node.counters[f"publish:{res.outcome.name.lower()}"] += 1
        node.note_stored(fresh)
        await node.gossip.publish([r.wire for r in fresh])
        return [(res.id, res.outcome.name.lower()) for res in results]

    def _own_copy(self, item: dict) -> InsertResult | None:
        """Sharing a lesson we already hold (same text and domain, still active) returns the
        existing id instead of signing a second copy."""
        if item.get("parent") or not isinstance(item.get("text"), str):
            return None
        store = self.node.kb.store
        for row in store.own_active(self.node.author, str(item.get("domain")), item["text"]):
            if decode(row.wire).experience.text == item["text"]:
                return InsertResult(row.id, Outcome.DUPLICATE, row.seq, "already shared")
        return None

    async def revoke(self, record_id: bytes) -> str:
        """Withdraw one of our lessons, network-wide. Idempotent: the outcome is ``revoked``
        (a revocation was stored and gossiped) or ``already_revoked`` (nothing emitted); a
        refusal is ``not_found``, ``not_author`` or ``not_revocable`` (a revocation)."""
        node = self.node

        def work() -> tuple[str, SignedRecord | None]:
            # On the knowledge-base thread: check and store in one step, so two concurrent
            # calls cannot both sign a revocation.
            row = node.kb.get(record_id)
            if row is None:
                return "not_found", None
            if row.op is Op.REVOKE:
                return "not_revocable", None
            if row.author != node.author:
                return "not_author", None
            if row.status is Status.REVOKED:
                return "already_revoked", None
            record = create_revocation(node.key, node.encoder.space, record_id)
            [result] = node.kb.ingest([Incoming(record, None, "local")])
            if result.outcome is Outcome.ACCEPTED:
                return "revoked", record
            return result.reason or result.outcome.name.lower(), None

        outcome, record = await node.in_kb(work)
        node.counters[f"revoke:{outcome}"] += 1
        if record is not None:
            node.note_stored([record])
            await node.gossip.publish([record.wire])
        return outcome

    # -- records signed by others ---------------------------------------------------------------
    async def import_records(self, wires: Sequence[bytes]) -> list[tuple[bytes | None, str]]:
        """Ingest signed records from a file (another node's export): the gossip checks, the
        store (pending: the embedding check follows in the background), then gossip onward.
        Returns (id, outcome) per wire, the outcome being accepted (stored), duplicate or
        ``rejected:<reason>``. The operator's import is not held to the backlog bounds."""
        node = self.node
        limiter = AuthorLimiter(rate=1e9, burst=1e9)  # a file, not a live flood
        out: list[tuple[bytes | None, str]] = []
        fresh: list[tuple[SignedRecord, str]] = []
        for wire in wires:
            checked = check_record(
                wire, node.policy, now_ms(), lambda _id: False, limiter, node.banned.__contains__
            )
            if checked.verdict is not Verdict.ACCEPT:
                out.append((None, f"rejected:{checked.reason}"))
                continue
            record = checked.record
            out.append((record.id, "pending"))
            fresh.append((record, "import"))
        outcomes: dict[bytes, str] = {}
        stored = await node.in_kb(self.store_pending, fresh, outcomes) if fresh else []
        self._stored(len(stored))
        node.note_stored(stored)
        node.checker.active()
        node.checker.notify()
        await node.gossip.publish([r.wire for r in stored])
        out = [
            (record_id, outcomes.get(record_id, "duplicate") if outcome == "pending" else outcome)
            for record_id, outcome in out
        ]
        for _, outcome in out:
            node.counters[f"import:{outcome}"] += 1
        return out

    async def on_gossip(self, accepted: list[Checked], forwarder: str) -> None:
        """Gossip's callback: records that passed validation join the ingest queue, which
        drains at the store's pace. The validator admitted them only if they fit
        (:meth:`room`), so the reader does not wait."""
        for checked in accepted:
            assert checked.record is not None
            self._count(checked.record, 1)
            try:
                self._send.send_nowait((checked.record, forwarder))
            except trio.WouldBlock:  # not expected: admission leaves the room
                await self._send.send((checked.record, forwarder))

    async def enqueue(
        self, record: SignedRecord, peer: str, counted: Callable[[], None] | None = None
    ) -> None:
        """A record fetched by sync, already validated like gossip. Sync takes at most half
        the queue, so that gossip always finds room. ``counted`` is called the moment the
        record counts as queued (sync stops counting it as asked for: never both)."""
        while self.queued() >= INGEST_QUEUE // 2:
            await trio.sleep(0.01)
        self._count(record, 1)
        if counted is not None:
            counted()
        await self._send.send((record, peer))

    def _count(self, record: SignedRecord, step: int) -> None:
        if record.experience.op is Op.REVOKE:
            return
        author = record.experience.author
        self.queued_of[author] += step
        if self.queued_of[author] <= 0:
            del self.queued_of[author]
        self.queued_lessons += step

    def waiting(self) -> int:
        """Peers' lessons waiting for the embedding check, stored or in this queue, each
        once: what the backlog bound (``ingest.max_pending``) counts. Trio thread."""
        total = self.node.kb.backlog.total
        if self._storing_from is not None:  # the batch being stored is counted as queued
            total = min(total, self._storing_from)
        return total + self.queued_lessons

    def waiting_of(self, author: bytes) -> int:
        """This author's lessons waiting for the embedding check, stored or in this queue,
        each once: what ``ingest.max_pending_per_author`` counts. Trio thread."""
        stored = self.node.kb.backlog.of(author)
        before = self._storing_of.get(author)
        if before is not None:  # the batch being stored is counted as queued
            stored = min(stored, before)
        return stored + self.queued_of[author]

    def queued(self) -> int:
        return self._send.statistics().current_buffer_used

    def room(self) -> int:
        """Records the ingest queue can still take (the gossip validator's admission)."""
        return INGEST_QUEUE - self.queued()

    async def run(self) -> None:
        """Drain the queue in batches of up to ``INGEST_BATCH`` (``FILL_S`` to fill one), or
        of up to ``INGEST_BATCH_MAX`` when more are already waiting (a burst, a catch-up)."""
        while True:
            batch = [await self._recv.receive()]
            with trio.move_on_after(FILL_S):
                while len(batch) < INGEST_BATCH:
                    batch.append(await self._recv.receive())
            while len(batch) < INGEST_BATCH_MAX:
                try:
                    batch.append(self._recv.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                stored = await self.node.in_kb(self._store_queued, batch)
            except StorageFull as exc:
                self._storing_from, self._storing_of = None, {}
                self._uncount(batch)
                # Not stored, so not in the digest: sync fetches them again once there is room.
                self.node.counters["ingest:storage_full"] += len(batch)
                log.warning("%d peer records dropped: %s", len(batch), exc)
                continue
            self._storing_from, self._storing_of = None, {}
            self._uncount(batch)  # stored now: counted by the backlog itself
            self._stored(len(stored))
            self.node.note_stored(stored)
            self.node.checker.active()
            self.node.checker.notify()

    def _store_queued(self, batch: list[tuple[SignedRecord, str]]) -> list[SignedRecord]:
        """Knowledge-base thread: :meth:`store_pending` for a batch of the queue, the backlog's
        size noted first (nothing else changes the backlog while this thread works: ``waiting``
        counts the batch once)."""
        backlog = self.node.kb.backlog
        self._storing_of = {r.experience.author: backlog.of(r.experience.author) for r, _ in batch}
        self._storing_from = backlog.total
        return self.store_pending(batch)

    def _stored(self, records: int) -> None:
        self._stores.append((time.monotonic(), records))

    def stored_rate(self) -> float:
        """Peers' records stored per second over the last ``RATE_WINDOW_S`` (gossip, sync,
        import): how hard stage 1 is working now."""
        now = time.monotonic()
        while self._stores and self._stores[0][0] < now - RATE_WINDOW_S:
            self._stores.popleft()
        return sum(n for _, n in self._stores) / RATE_WINDOW_S

    def _uncount(self, batch: list[tuple[SignedRecord, str]]) -> None:
        for record, _ in batch:
            self._count(record, -1)

    def store_pending(
        self, batch: list[tuple[SignedRecord, str]], outcomes: dict[bytes, str] | None = None
    ) -> list[SignedRecord]:
        """Knowledge-base thread: store peers' records at once, lessons as pending with the
        vectors their codes imply (revokes need no check). Returns the records newly stored;
        fills ``outcomes`` (id -> accepted / duplicate / rejected:<reason>) when given."""
        node = self.node
        kb = node.kb
        outcomes = {} if outcomes is None else outcomes
        fresh = []
        held = kb.store.known_many([record.id for record, _ in batch])
        for record, peer in batch:
            if record.id in held:
                outcomes[record.id] = "duplicate"
            else:
                fresh.append((record, peer))
        lessons = [(r, p) for r, p in fresh if r.experience.op is not Op.REVOKE]
        space = node.encoder.space_info
        vectors = code_vectors([r.experience.code for r, _ in lessons], space.head, space.v_ref)
        queued: Counter[bytes] = Counter()
        items = []
        for (record, peer), vector in zip(lessons, vectors, strict=True):
            author = record.experience.author
            rank = kb.backlog.rank(author) + queued[author]
            items.append(Incoming(record, vector, peer, pending=rank))
            queued[author] += 1
        items += [Incoming(r, None, p) for r, p in fresh if r.experience.op is Op.REVOKE]
        results = kb.ingest(items) if items else []
        stored = []
        for item, result in zip(items, results, strict=True):
            outcome = result.outcome.name.lower()
            node.counters[f"store:{outcome}"] += 1
            outcomes[item.record.id] = (
                f"rejected:{result.reason}" if result.outcome is Outcome.REJECTED else outcome
            )
            if result.outcome is Outcome.ACCEPTED:
                stored.append(item.record)
        return stored
