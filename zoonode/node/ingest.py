"""The ingest room: what enters the store, from us (publish, revoke), a file (import) or
the network (gossip, sync).

Data flow of a peer's record: gossip validator (decode, signature, space, time, known, author
rate; REJECT penalises the forwarder) -> forwarded by GossipSub -> ingest queue -> embedding
check (re-encode the text; the code must agree) -> store (durable) -> replica. A record that
fails the embedding check is never stored or returned; its id is tombstoned and its author
banned on this node. Records missed while away come back through sync and take the same path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from zoonode.experiences import create_revocation, now_ms, sign_lessons
from zoonode.net.validation import (
    AuthorLimiter,
    Checked,
    Reason,
    Verdict,
    check_record,
    embedding_agreement,
)
from zoonode.protocol import Op, SignedRecord, decode
from zoonode.store import Incoming, InsertResult, Outcome, Status, StorageFull

if TYPE_CHECKING:
    from zoonode.node.core import Node

log = logging.getLogger("zoonode.node.ingest")

INGEST_BATCH = 64
INGEST_QUEUE = 10_000


class Ingest:
    """Publishing, importing, revoking, and the queue of peers' records waiting for the
    embedding check."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._send, self._recv = trio.open_memory_channel[tuple[SignedRecord, str]](INGEST_QUEUE)

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
        embedding check, the store, then gossip onward. Returns (id, outcome) per wire, the
        outcome being accepted, duplicate or ``rejected:<reason>``."""
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
        stored = await node.in_kb(self.check_and_store, fresh, outcomes) if fresh else []
        node.note_stored(stored)
        await node.gossip.publish([r.wire for r in stored])
        out = [
            (record_id, outcomes.get(record_id, "duplicate") if outcome == "pending" else outcome)
            for record_id, outcome in out
        ]
        for _, outcome in out:
            node.counters[f"import:{outcome}"] += 1
        return out

    async def on_gossip(self, accepted: list[Checked], forwarder: str) -> None:
        """Gossip's callback: records that passed validation wait for the embedding check."""
        for checked in accepted:
            assert checked.record is not None
            await self._send.send((checked.record, forwarder))

    async def enqueue(self, record: SignedRecord, peer: str) -> None:
        """A record fetched by sync, already validated like gossip."""
        await self._send.send((record, peer))

    async def run(self) -> None:
        """Drain the queue in batches of up to ``INGEST_BATCH`` (50 ms to fill one)."""
        while True:
            batch = [await self._recv.receive()]
            with trio.move_on_after(0.05):
                while len(batch) < INGEST_BATCH:
                    batch.append(await self._recv.receive())
            try:
                stored = await self.node.in_kb(self.check_and_store, batch)
            except StorageFull as exc:
                # Not stored, so not in the digest: sync fetches them again once there is room.
                self.node.counters["ingest:storage_full"] += len(batch)
                log.warning("%d peer records dropped: %s", len(batch), exc)
                continue
            self.node.note_stored(stored)

    def check_and_store(
        self, batch: list[tuple[SignedRecord, str]], outcomes: dict[bytes, str] | None = None
    ) -> list[SignedRecord]:
        """Runs in the knowledge-base thread. Returns the records newly stored; fills
        ``outcomes`` (id -> accepted / duplicate / rejected:<reason>) when given."""
        node = self.node
        store = node.kb.store
        outcomes = {} if outcomes is None else outcomes
        for r, _ in batch:
            if store.known(r.id):
                outcomes[r.id] = "duplicate"
        batch = [(r, p) for r, p in batch if not store.known(r.id)]
        lessons = [(r, p) for r, p in batch if r.experience.op is not Op.REVOKE]
        items = [Incoming(r, None, p) for r, p in batch if r.experience.op is Op.REVOKE]
        if lessons:
            compact = node.encoder.encode_compact([r.experience.text for r, _ in lessons])
            agreement = embedding_agreement(
                [r.experience.code for r, _ in lessons],
                compact,
                node.encoder.space_info.head,
                node.encoder.space_info.v_ref,
            )
            for (record, peer), vector, agree in zip(lessons, compact, agreement, strict=True):
                if agree >= node.embedding_threshold:
                    items.append(Incoming(record, vector, peer))
                    continue
                node.counters[f"reject:{Reason.EMBEDDING_MISMATCH}"] += 1
                outcomes[record.id] = f"rejected:{Reason.EMBEDDING_MISMATCH}"
                log.warning(
                    "embedding mismatch (agreement %.3f) in %s by author %s from %s: author banned",
                    agree,
                    record.id_hex[:16],
                    record.experience.author.hex()[:16],
                    peer,
                )
                store.add_tombstone(
                    record.id, record.experience.created_at, Reason.EMBEDDING_MISMATCH
                )
                store.ban(record.experience.author, Reason.EMBEDDING_MISMATCH)
                node.banned.add(record.experience.author)
        results = node.kb.ingest(items) if items else []
        stored = []
        for item, result in zip(items, results, strict=True):
            node.counters[f"store:{result.outcome.name.lower()}"] += 1
            outcome = result.outcome.name.lower()
            outcomes[item.record.id] = (
                f"rejected:{result.reason}" if result.outcome is Outcome.REJECTED else outcome
            )
            if result.outcome is Outcome.ACCEPTED:
                stored.append(item.record)
        return stored
