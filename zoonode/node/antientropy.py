"""The anti-entropy room (``/zoo/dso/sync/1``, NETWORK.md §6): serve our digest, ids and
records to peers, and every ``SYNC_INTERVAL`` per connected peer fetch what we lack
(``zoonode.net.sync`` holds the pure digest). Two record types are synced, each with its own
digest: experiences (no ``type``, the default) and feedback (``"type": "feedback"``); a peer
that answers ``unknown_type`` for feedback (an older node) is asked again after
``UNSUPPORTED_RETRY``. Fetched records are validated like gossip and join their queue;
``SYNC_PARALLEL`` differing buckets are fetched at a time, each with up to ``GET_AHEAD`` ``get``
requests in flight whose answers are decoded and their signatures verified in worker threads
(``DECODE_THREADS``, off the event loop), and a round that brought records is followed by the
next at once (a joining node catches up at the store's pace, not one round per
interval). Fetching experiences stops when the backlog of records waiting for the embedding
check is full for their authors (they are fetched after it drains); feedback has its own
queue and is never held back by that backlog. A peer that does not serve sync (another
implementation may not) or whose rounds fail is backed off and logged once per state change,
not once per round.

Records waiting for the embedding check are held, so they are in the digest and served to
peers (who check them themselves, as they check gossip); one that fails becomes a tombstone,
which the digest counts the same, so the digest does not change when a record is checked."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from zoonode.experiences import now_ms
from zoonode.net.sync import MAX_GET
from zoonode.net.validation import (
    AuthorLimiter,
    Checked,
    Prepared,
    Reason,
    Verdict,
    prepare_records,
    verdicts_of,
)

if TYPE_CHECKING:
    from zoonode.node.core import Node

log = logging.getLogger("zoonode.node.sync")

SYNC_INTERVAL = 30.0  # seconds between rounds with one peer
ROUND_TIMEOUT = 120.0
MAX_GET_ROOM = 128  # one ``get`` of records
SYNC_PARALLEL = 4  # buckets fetched at a time from one peer
GET_AHEAD = 2  # ``get`` requests of one bucket in flight while the answer before is queued
DECODE_THREADS = 2  # worker threads decoding and verifying ``get`` answers, all peers together


UNSUPPORTED_RETRY = 600.0  # seconds before asking again a peer that does not serve sync
MAX_BACKOFF = 600.0  # cap of the doubling wait after failed rounds
MAX_TRACKED_PEERS = 4096


@dataclass
class PeerSync:
    """Where sync stands with one peer. ``state``: ``new`` (never tried), ``ok``,
    ``unsupported`` (does not serve the protocol) or ``failing`` (rounds fail)."""

    state: str = "new"
    next_round: float = 0.0
    failures: int = 0
    feedback_after: float = 0.0  # monotonic time before which feedback is not asked again
    # The last round stopped (or did not start) for a full backlog: the next starts as soon as
    # it has a get's worth of room again, not an interval later.
    held: bool = False


class AntiEntropy:
    """Both sides of ``/zoo/dso/sync/1``. Rounds with one peer run every ``interval``; a peer
    that does not serve sync is asked again after ``unsupported_retry``, a failing one after a
    doubling backoff. Each peer's state change is logged once, never each round; every round's
    outcome is counted (``sync:round_ok``, ``sync:unsupported``, ``sync:failed_<code>``)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.peers: OrderedDict[str, PeerSync] = OrderedDict()
        self.interval = SYNC_INTERVAL
        self.unsupported_retry = UNSUPPORTED_RETRY
        self._decoders = trio.CapacityLimiter(DECODE_THREADS)
        self._asked = 0  # experiences asked for by ``get`` and not yet queued (``_room_left``)

    async def serve(self, peer: str, req: dict) -> dict[str, Any]:
        """One request of NETWORK.md §6: ``digest``, ``ids`` or ``get``."""
        from zoonode.net.rpc import BAD_REQUEST, ServeError
        from zoonode.net.sync import FEEDBACK_TYPE, MAX_GET, MAX_IDS, RECORD_TYPE
        from zoonode.protocol.record import MAX_CREATED_AT

        node = self.node
        kind = req.get("type", RECORD_TYPE)
        if kind == RECORD_TYPE:
            digest, table = node.digest, node.kb.store
        elif kind == FEEDBACK_TYPE:
            digest, table = node.feedback_digest, node.kb.store.feedback
        else:
            raise ServeError(
                "unknown_type", f"this node syncs {RECORD_TYPE!r} and {FEEDBACK_TYPE!r} records"
            )
        op = req.get("op")
        if op == "digest":
            return {"buckets": digest.to_wire(), "bucket_ms": digest.bucket_ms}
        if op == "ids":
            start, end = req.get("start"), req.get("end")
            if type(start) is not int or type(end) is not int:
                raise ServeError(BAD_REQUEST, "ids needs int start and end (ms)")
            # created_at is 0..2^53 - 1 (SPEC §2.1): clamping keeps the answer and keeps
            # msgpack's 64-bit ints (up to 2^64 - 1) inside SQLite's signed 64-bit range
            start, end = (min(max(t, 0), MAX_CREATED_AT + 1) for t in (start, end))
            after = req.get("after", b"")
            if type(after) is not bytes or len(after) not in (0, 32):
                raise ServeError(BAD_REQUEST, "after is a 32-byte bin id")
            # One more than the cap: whether the page was cut (``more``, §6.3).
            ids = await node.in_kb(table.ids_between, start, end, MAX_IDS + 1, after)
            if len(ids) > MAX_IDS:
                return {"ids": ids[:MAX_IDS], "more": True}
            return {"ids": ids}
        if op == "get":
            wanted = req.get("ids")
            if type(wanted) is not list:
                raise ServeError(BAD_REQUEST, "get needs ids, a list of 32-byte bin")
            ids = [i for i in wanted[:MAX_GET] if type(i) is bytes and len(i) == 32]
            return {"wires": await node.in_kb(table.wires, ids)}
        raise ServeError("unknown_op", f"unknown op {op!r}: digest, ids or get")

    async def run(self) -> None:
        while True:
            for peer in self.node.connected_peers():
                key = str(peer)
                entry = self.peers.get(key) or self._track(key)
                # Held back by the backlog: again once it has room (with max_pending under
                # what a peer holds, a joiner otherwise paused an interval at every fill).
                room_again = entry.held and entry.state == "ok" and self._room()
                if room_again or time.monotonic() >= entry.next_round:
                    entry.next_round = time.monotonic() + self.interval  # until the round ends
                    fetched = 0
                    with trio.move_on_after(ROUND_TIMEOUT):
                        fetched = await self.sync_with(peer)
                    entry.held = not self._room()
                    if fetched and entry.state == "ok":
                        # More may be waiting: the next round at once (a full backlog makes
                        # it fetch nothing, and then the interval applies).
                        entry.next_round = time.monotonic()
            await trio.sleep(0.5)

    def _track(self, key: str) -> PeerSync:
        entry = self.peers[key] = PeerSync()
        while len(self.peers) > MAX_TRACKED_PEERS:
            self.peers.popitem(last=False)
        return entry

    def _outcome(self, key: str, state: str, detail: str = "") -> None:
        """Record a round's outcome; log only when the peer's state changes."""
        entry = self.peers.get(key) or self._track(key)
        now = time.monotonic()
        previous = entry.state
        if state == "ok":
            entry.failures = 0
            entry.next_round = now + self.interval
            self.node.counters["sync:round_ok"] += 1
            if previous in ("unsupported", "failing"):
                log.info("sync with %s works again", key)
        elif state == "unsupported":
            entry.next_round = now + self.unsupported_retry
            self.node.counters["sync:unsupported"] += 1
            if previous != "unsupported":
                log.info(
                    "peer %s does not serve %s: not syncing with it (asking again every %.0f s)",
                    key,
                    _sync_protocol(),
                    self.unsupported_retry,
                )
        else:
            entry.failures += 1
            wait = min(self.interval * 2 ** (entry.failures - 1), MAX_BACKOFF)
            entry.next_round = now + wait
            self.node.counters[f"sync:failed_{detail.split(':', 1)[0]}"] += 1
            if previous != "failing":
                log.warning(
                    "sync with %s failed (%s): backing off, up to %.0f s between tries",
                    key,
                    detail,
                    MAX_BACKOFF,
                )
        entry.state = state

    async def sync_with(self, peer) -> int:
        """One anti-entropy round with ``peer``: experiences, then feedback; returns how many
        records were fetched."""
        from zoonode.net.rpc import RpcError, Unsupported

        key = str(peer)
        fetched = 0
        try:
            fetched = await self._sync_type(peer, "experience")
            entry = self.peers.get(key) or self._track(key)
            if time.monotonic() >= entry.feedback_after:
                try:
                    fetched += await self._sync_type(peer, "feedback")
                except RpcError as exc:
                    if exc.code != "unknown_type":
                        raise
                    entry.feedback_after = time.monotonic() + self.unsupported_retry
                    self.node.counters["sync:feedback_unsupported"] += 1
        except Unsupported:
            self._outcome(key, "unsupported")
            return fetched
        except RpcError as exc:
            self._outcome(key, "failing", f"{exc.code}: {exc}")
            return fetched
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self._outcome(key, "failing", f"bad_answer: {type(exc).__name__}: {exc}")
            return fetched
        self._outcome(key, "ok")
        if fetched:
            log.info("sync: fetched %d records from %s", fetched, peer)
        return fetched

    async def _sync_type(self, peer, kind: str) -> int:
        """digest -> ids of differing buckets -> get what we lack, for one record type
        (``experience`` or ``feedback``), ``SYNC_PARALLEL`` buckets at a time (each costs two
        or more request round trips; one at a time, a joining node waited on the network).
        Experiences start with a get's worth of room (``_room``) and stop when the backlog has
        none left (``_room_left``); feedback never does.
        Returns how many records were queued; raises RpcError (the first a bucket met), or
        ValueError on a malformed answer."""
        from zoonode.net.rpc import SYNC_PROTOCOL, RpcError, request

        node = self.node
        if kind == "experience":
            if not self._room():  # a round starts with a get's worth of room (no busy rounds)
                return 0
            digest, base, room = node.digest, {}, self._has_room
        else:
            digest, base, room = node.feedback_digest, {"type": kind}, _always
        limiter = AuthorLimiter(rate=1e9, burst=1e9)  # backlog, not a live flood
        theirs = await request(node.host, peer, SYNC_PROTOCOL, {"op": "digest", **base})
        if theirs.get("bucket_ms") != digest.bucket_ms:
            raise ValueError("other bucket_ms")
        buckets = theirs.get("buckets")
        if not isinstance(buckets, dict):
            raise ValueError("digest without buckets")
        starts = digest.differing(buckets)
        fetched = [0]
        errors: list[Exception] = []

        async def worker() -> None:
            while starts and not errors and room():
                start = starts.pop(0)
                try:
                    fetched[0] += await self._bucket(peer, kind, start, limiter, room)
                except (RpcError, ValueError, KeyError, TypeError, AttributeError) as exc:
                    errors.append(exc)  # raised below, once the other workers stopped

        async with trio.open_nursery() as nursery:
            for _ in range(SYNC_PARALLEL):
                nursery.start_soon(worker)
        if errors:
            raise errors[0]
        if starts:
            log.info("sync: backlog full, fetching the rest after it drains")
        return fetched[0]

    async def _bucket(self, peer, kind: str, start: int, limiter: AuthorLimiter, room) -> int:
        """Fetch what we lack of one time bucket of ``kind``; returns how many records were
        queued."""
        from zoonode.net.rpc import SYNC_PROTOCOL, request

        node = self.node
        if kind == "experience":
            digest, base = node.digest, {}
        else:
            digest, base = node.feedback_digest, {"type": kind}
        fetched = 0
        after = b""
        while True:  # one page of ids at a time (NETWORK.md §6.3: ``more`` and ``after``)
            page = {"op": "ids", "start": start, "end": start + digest.bucket_ms, **base}
            if after:
                page["after"] = after
            listed = await request(node.host, peer, SYNC_PROTOCOL, page)
            ids = [i for i in listed.get("ids", []) if isinstance(i, bytes) and len(i) == 32]
            if after and ids and ids[0] <= after:
                # A peer that ignores ``after`` lists the first page again: what it gave is
                # all we can learn of this bucket from it (as before paging existed).
                node.counters["sync:ids_no_paging"] += 1
                break
            fetched += await self._fetch_missing(peer, kind, ids, limiter, room)
            if listed.get("more") is not True or not ids or not room():
                break
            after = ids[-1]
        return fetched

    async def _fetch_missing(self, peer, kind: str, ids: list[bytes], limiter, room) -> int:
        """``get`` the ids of one page we do not know, validate them and queue them. Up to
        ``GET_AHEAD`` gets are in flight (each under the request's timeout) while an answer
        before them is queued, and at most ``GET_AHEAD`` answers wait to be queued; each
        fetcher asks again only when the backlog has room. An experience answer is decoded
        and its signatures verified in a worker thread (``prepare_records``), not on the
        event loop; each record's bounds (backlog, author rate) are still taken as it is
        queued, one answer after the other."""
        node = self.node
        if kind == "experience":
            table = node.kb.store
            missing = await node.in_kb(_unknown, table, ids)
        else:  # nor verdicts fetched before whose lesson is still not held (NETWORK.md §4.7)
            missing = await node.in_kb(node.feedback.worth_fetching, ids)
        chunks = [missing[i : i + MAX_GET] for i in range(0, len(missing), MAX_GET)]
        if not chunks:
            return 0
        todo = iter(chunks)
        send, recv = trio.open_memory_channel[Any](0)
        failure: list[Exception] = []
        fetched = 0

        counted = kind == "experience"  # asked for and not yet queued: ``_room_left`` sees them

        async def fetch(send) -> None:
            async with send:
                for wanted in todo:  # shared: each chunk is asked once, by one fetcher
                    if failure or not room():
                        break
                    if counted:  # no more than the backlog has room for
                        wanted = wanted[: self._room_left()]
                    asked = len(wanted) if counted else 0
                    self._asked += asked
                    try:
                        answer = await self._get(peer, kind, wanted)
                        await send.send((answer, asked))
                    except Exception as exc:  # raised below, outside the nursery
                        self._asked -= asked
                        failure.append(exc)
                        break
                    except BaseException:  # cancelled: never handed over
                        self._asked -= asked
                        raise

        async with trio.open_nursery() as nursery:
            async with send:
                for _ in range(min(GET_AHEAD, len(chunks))):
                    nursery.start_soon(fetch, send.clone())
            async with recv:
                try:
                    async for answer, asked in recv:
                        # Each record leaves ``_asked`` as it joins the ingest queue's count,
                        # not after the whole answer: counted in both, it left a concurrent
                        # get asking too few, and a round ended short of the bound.
                        left = [asked]

                        def counted(left=left) -> None:
                            if left[0] > 0:
                                left[0] -= 1
                                self._asked -= 1

                        try:
                            fetched += await self._queue(peer, kind, answer, limiter, counted)
                        finally:
                            self._asked -= left[0]
                except Exception as exc:
                    failure.append(exc)
                    nursery.cancel_scope.cancel()
        if failure:
            raise failure[0]
        return fetched

    async def _get(self, peer, kind: str, wanted: list[bytes]) -> Any:
        """One ``get`` of ``wanted`` (at most ``MAX_GET`` ids), and for experiences the costly
        half of the checks (decode, signature, known) in a worker thread. A peer that sends
        more records than were asked has the surplus dropped before any is decoded."""
        from zoonode.net.rpc import SYNC_PROTOCOL, request

        node = self.node
        base = {} if kind == "experience" else {"type": kind}
        got = await request(node.host, peer, SYNC_PROTOCOL, {"op": "get", "ids": wanted, **base})
        wires = got.get("wires", [])
        if not isinstance(wires, list):
            raise ValueError("get answer without a list of wires")
        wires = wires[: len(wanted)]
        if kind != "experience":
            return wires
        return await trio.to_thread.run_sync(
            _prepare, wires, node.kb.store.known_many, limiter=self._decoders
        )

    async def _queue(
        self,
        peer,
        kind: str,
        answer: Any,
        limiter: AuthorLimiter,
        counted: Callable[[], None] | None = None,
    ) -> int:
        """The rest of one answer's checks, each record's as it is queued; returns how many
        were queued."""
        from zoonode.net.validation import check_feedback

        node = self.node
        verdicts: Iterable[Checked]
        if kind == "experience":
            enqueue, prefix = node.ingest.enqueue, "sync"
            verdicts = verdicts_of(
                answer,
                node.policy,
                now_ms(),
                limiter,
                node.banned.__contains__,
                node.backlog_admits,
                stop_at_reject=False,
            )
        else:
            enqueue, prefix = node.feedback.enqueue, "sync_feedback"
            extra = node.feedback.check_extra()
            table = node.kb.store.feedback
            verdicts = [
                check_feedback(
                    wire,
                    node.policy,
                    now_ms(),
                    table.known,
                    limiter,
                    node.banned.__contains__,
                    **extra,
                )
                for wire in answer
            ]
        fetched = 0
        for checked in verdicts:
            node.counters[f"{prefix}:{checked.verdict.value}:{checked.reason}"] += 1
            if checked.reason == Reason.UNKNOWN_TARGET:
                node.feedback.note_unheld(checked.record)
            elif checked.reason == Reason.FEEDBACK_FULL:
                node.feedback.note_refused(checked.record)
            if checked.verdict is Verdict.ACCEPT:
                if kind == "experience":
                    await enqueue(checked.record, str(peer), counted)
                else:
                    await enqueue(checked.record, str(peer))
                fetched += 1
        return fetched

    def _room(self) -> bool:
        """Room in the backlog to start a round (one ``get``'s worth spare, or an empty backlog
        where ``max_pending`` is under one ``get``: else sync never fetched)."""
        return self._room_left() >= min(MAX_GET_ROOM, self.node.bounds.total)

    def _has_room(self) -> bool:
        return self._room_left() > 0

    def _room_left(self) -> int:
        """Newcomers' records the backlog can still take: ``max_pending`` less those waiting
        for the check, in the ingest queue (the batch being stored included) and asked for by
        ``get`` and not yet queued. A round goes on while there is any (its last ``get``s ask
        only as many), so a joiner fetches up to the bound, not to one ``get`` short of it
        and then the rest an interval later."""
        node = self.node
        waiting = node.ingest.waiting() + self._asked
        return node.bounds.total - waiting


def _unknown(table, ids: list[bytes]) -> list[bytes]:
    """Knowledge-base thread: the ids of ``ids`` neither held nor tombstoned, in order."""
    held = table.known_many(ids)
    return [i for i in ids if i not in held]


def _prepare(wires: list, known_many) -> Prepared:
    """Worker thread: decode and verify one ``get`` answer (every wire gets its verdict)."""
    return prepare_records(wires, known_many, stop_at_reject=False)


def _always() -> bool:
    return True


def _sync_protocol() -> str:
    from zoonode.net.rpc import SYNC_PROTOCOL

    return SYNC_PROTOCOL
