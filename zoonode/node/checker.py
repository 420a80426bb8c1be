"""The embedding check's room: the second stage of ingest.

A peer's record is stored *pending* as soon as the cheap checks pass (``ingest``), indexed at
the vector its code implies. This room re-encodes pending texts in the background, in batches
at the encoder's pace, and applies the node's :class:`~zoonode.net.validation.EmbeddingRule`:
an agreeing record is promoted to *active* with its text's exact vector (store and replica);
a disagreeing one is removed and tombstoned, and, when the evidence suffices
(:class:`zoonode.embedcheck.Punishment`: one decisive failure, or at least
``network.ban_strikes`` failures that a binomial test says an author failing at most
``ban_share`` of its checks would show less than once in a thousand), its author is banned and every
other record of that author still waiting is dropped unseen. A single failure of an honest
peer on another backbone is a strike, never a ban.

Queries and stage 1 come first: the background loop starts a batch in a quiet moment, or after
waiting long enough to keep ``SHARE`` of the time (a quarter under back-to-back queries; 5 %
while stage 1 is under a burst, records waiting in the ingest queue or stored at 200/s or more:
a backlog always drains, and mostly after the burst; :func:`may_start`), and a query checks the
few pending records its selection would return itself, on demand (:meth:`Checker.check_now`).
Once started, a batch encodes in a thread of its own at a lower CPU priority
(``ingest.check_nice``, :class:`CheckThread`): a query that arrives meanwhile takes the core
from it instead of sharing it (benchmarks/drain_query.py: on 2 busy shared cores the query p50
while a backlog drains was lower in 3 of 4 side-by-side pairs, 1.2-1.8x).

Order of the backlog: first the pending records recent queries had among their candidates
(newest query first); then (``knowledge.Backlog``) authors vouched for by an earlier check
before newcomers; within each, every author's first waiting record before anyone's second (a
liar is found, banned and purged after one decisive check or a few strikes, however many
records it queued); newest first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import trio

from zoonode.embedcheck import Punishment, Standing, make_rule
from zoonode.net.validation import EmbeddingRule, Reason
from zoonode.node.checkworker import CheckProcess
from zoonode.protocol import decode
from zoonode.store import Row, StorageFull

if TYPE_CHECKING:
    from zoonode.node.core import Node

log = logging.getLogger("zoonode.node.checker")

# One encoder thread for the background check: on 2 cores it leaves one to queries, gossip and
# the store, and two encodes never stall on each other's thread barrier (benchmarks/ingest.py).
# That thread is the check's own, niced (``ingest.check_nice``, :class:`CheckThread`): the
# kernel gives queries and stage 1 the CPU first, and the check every cycle they leave.
CHECK_THREADS = 1
# Queries and stage 1 come first. Before each batch the background check waits for a quiet
# moment (no query running, none and no store batch in the last QUIET_S), but at most so long
# that it still gets SHARE of the time: under back-to-back queries or a sustained flood it
# runs one batch in 1/SHARE of the time, and a backlog always drains.
QUIET_S = 0.05
SHARE = 0.25
# While stage 1 is under a burst (records wait in the ingest queue, or BURST_RATE records/s
# or more were stored over the last second: a gossip flood, a sync catch-up, a large import):
# stage 1 first. On 2 cores the check's encode otherwise took a third of the CPU that a
# 1,000 records/s burst needs (benchmarks/ingest.py); the backlog drains after the burst.
FLOOD_SHARE = 0.05
BURST_RATE = 200.0
RATE_WINDOW_S = 30.0
HOT_MAX = 4096
FULL_RETRY_S = 5.0  # a full disk: the checked batch stays pending, tried again after this
MAX_STANDINGS = 100_000  # authors whose check record is kept in memory
# Stopping: how long the background check's thread may take to finish its current encode.
CLOSE_WAIT_S = 30.0


@dataclass(frozen=True)
class CheckOutcome:
    """Outcome of checking some records: exact vectors of the promoted (and of those found
    already promoted), and the seqs removed (failed, or author banned)."""

    vectors: dict[int, np.ndarray]
    removed: set[int]


def may_start(waited_s: float, batch_s: float, burst: bool, busy: bool) -> bool:
    """Whether the background check starts its next batch now, having waited ``waited_s``
    (its last batch took ``batch_s``): at once in a quiet moment (not ``busy``: no query
    running, none and no store batch in the last ``QUIET_S``), unless stage 1 is under a
    ``burst``; otherwise once it has waited long enough to keep its share of the time
    (``FLOOD_SHARE`` in a burst, else ``SHARE``), so a backlog always drains. Pure."""
    share = FLOOD_SHARE if burst else SHARE
    if waited_s >= batch_s * (1 - share) / share:
        return True
    return not (burst or busy)


def query_threads(waiting: int, check_niced: bool) -> int | None:
    """Encoder threads for a query's encodes (its text, its on-demand checks) with
    ``waiting`` records in the backlog: the encoder's own (None) when nothing waits or the
    background check's encodes are niced (they yield the core: one thread cost a query ~3 ms
    while 8,000 records drained at 100k, benchmarks/drain_query.py); one
    (``CHECK_THREADS``) beside a check at normal priority (``ingest.check_nice`` 0, or nice
    unavailable), as two encodes sharing 2 cores stall on each other's thread barrier.
    Pure."""
    return CHECK_THREADS if waiting and not check_niced else None


class RateMeter:
    """Events per second over a sliding window (the check rate shown in status)."""

    def __init__(self, window: float = RATE_WINDOW_S) -> None:
        self.window = window
        self.events: deque[tuple[float, int]] = deque()

    def add(self, n: int, now: float | None = None) -> None:
        self.events.append((time.monotonic() if now is None else now, n))

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self.events and self.events[0][0] < now - self.window:
            self.events.popleft()
        if not self.events:
            return 0.0
        span = max(now - self.events[0][0], 1.0)
        return sum(n for _, n in self.events) / span


class Checker:
    def __init__(self, node: Node) -> None:
        self.node = node
        settings = node.cfg.ingest
        net = node.cfg.network
        # The rule (zoonode.embedcheck; network.embedding_check): "relative" by default, which
        # accepts honest records of peers on other backbones (fitted heads) and rejects codes
        # that do not single out their own text; "absolute" is the single-backbone cosine.
        relative = net.embedding_check == "relative"
        self.rule: EmbeddingRule = make_rule(
            net.embedding_check,
            node.encoder.references() if relative else None,
            net.embedding_max_rank,
            net.embedding_floor,
            net.embedding_threshold,
        )
        # Proportional punishment: each author's checked / failed counts on this node (kept in
        # memory, newest authors last; a restart forgets strikes, never bans).
        self.punishment = Punishment(net.ban_strikes, net.ban_share)
        self.standings: dict[bytes, Standing] = {}
        self.batch = settings.check_batch
        self.max_rate = settings.check_rate
        self.meter = RateMeter()
        self.queries = 0  # queries running now: the background loop waits for them
        self.last_activity = 0.0  # monotonic time a query or a store batch last ended
        self._batch_s = 0.1  # how long the last background batch took
        self._work = trio.Event()
        self.thread = CheckThread(settings.check_nice)
        # The encodes in a niced worker process (checkworker), or in the niced thread.
        self.process: CheckProcess | None = None
        if settings.check_process and node.encoder.settings is not None:
            self.process = CheckProcess(node.encoder.settings, settings.check_nice, CHECK_THREADS)
            self.thread = CheckThread(0)  # only waits on the worker's pipe
        self._encoder_slot = trio.Lock()  # held while the background check encodes
        self._hot: dict[int, None] = {}  # pending seqs queries saw as candidates, newest last

    def touch(self, seqs: Sequence[int]) -> None:
        """Pending records a query had among its candidates: checked first (queries on the
        same topic tend to follow)."""
        for seq in seqs:
            self._hot.pop(seq, None)
            self._hot[seq] = None
        while len(self._hot) > HOT_MAX:
            del self._hot[next(iter(self._hot))]
        if seqs:
            self._work.set()

    def _next(self, hot: list[int]) -> list[Row]:
        """Knowledge-base thread: the next batch, touched records first."""
        kb = self.node.kb
        rows = kb.pending(self.batch, hot) if hot else []
        if len(rows) < self.batch:
            taken = {r.seq for r in rows}
            rows += [r for r in kb.pending(self.batch) if r.seq not in taken]
        return rows[: self.batch]

    def notify(self) -> None:
        """New pending records: wake the background loop."""
        self._work.set()

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            await self.thread.aclose()
            if self.process is not None:
                self.process.close()

    async def _run(self) -> None:
        node = self.node
        while True:
            self._work = trio.Event()
            hot = list(self._hot)[-self.batch :][::-1]
            for seq in hot:
                del self._hot[seq]
            rows = await node.in_kb(self._next, hot)
            if not rows:
                await self._work.wait()
                continue
            if self.process is not None:  # loading its encoder is no batch's time
                await self.thread.run(self.process.start)
            await self._yield_to_queries()
            started = time.monotonic()
            texts = [decode(r.wire).experience.text for r in rows]
            async with self._encoder_slot:
                if self.process is not None:
                    compact = await self.thread.run(self.process.encode, texts)
                else:
                    compact = await self.thread.run(
                        node.encoder.encode_compact, texts, len(texts), False, CHECK_THREADS
                    )
            try:
                await node.in_kb(self._apply, rows, compact, "background")
            except StorageFull as exc:
                # Nothing of the failed write changed (one transaction each); the records
                # still wait, so they are checked again once there is room. The node goes on.
                node.counters["check:storage_full"] += len(rows)
                log.warning("embedding check of %d records not recorded: %s", len(rows), exc)
                await trio.sleep(FULL_RETRY_S)
                continue
            self._batch_s = time.monotonic() - started
            if self.max_rate > 0:  # the operator's cap: leave the CPU to other work
                await trio.sleep(max(0.0, len(rows) / self.max_rate - (time.monotonic() - started)))

    def active(self) -> None:
        """A query or a store batch just ended (the background check waits for quiet)."""
        self.last_activity = time.monotonic()

    async def _yield_to_queries(self) -> None:
        """Wait for a quiet moment, or until the check has waited long enough to keep its
        share of the time: ``SHARE``, or ``FLOOD_SHARE`` while stage 1 is under a burst (then
        the gaps between its batches are no quiet moments), judged afresh as a burst starts
        or ends."""
        ingest = self.node.ingest
        started = time.monotonic()
        while True:
            now = time.monotonic()
            if may_start(
                now - started,
                self._batch_s,
                bool(ingest.queued()) or ingest.stored_rate() >= BURST_RATE,
                bool(self.queries) or now - self.last_activity < QUIET_S,
            ):
                return
            await trio.sleep(0.005)

    def threads(self) -> int | None:
        """The encoder threads for a query's encodes (its text, its on-demand checks):
        :func:`query_threads` of this node's backlog and check priority."""
        niced = self.process.niced if self.process is not None else self.thread.niced
        return query_threads(self.node.kb.backlog.total, niced)

    def check_now(self, seqs: Sequence[int]) -> CheckOutcome:
        """Knowledge-base thread: check these records now if they still wait (a query's
        selected few, one encoder batch with the query's threads, :meth:`threads`), and
        report every one's fate."""
        node = self.node
        seqs = [int(s) for s in seqs]
        rows = node.kb.pending(len(seqs), seqs)
        vectors: dict[int, np.ndarray] = {}
        removed: set[int] = set()
        if rows:
            texts = [decode(r.wire).experience.text for r in rows]
            compact = node.encoder.encode_compact(texts, len(texts), False, self.threads())
            try:
                outcome = self._apply(rows, compact, "on_demand")
            except StorageFull as exc:  # a query is a read: it goes on without these records
                node.counters["check:storage_full"] += len(rows)
                log.warning("on-demand check of %d records not recorded: %s", len(rows), exc)
                return CheckOutcome({}, set(seqs))
            vectors |= outcome.vectors
            removed |= outcome.removed
        rest = [s for s in seqs if s not in vectors and s not in removed]
        found = node.kb.store.rows_with_vectors(rest) if rest else {}
        for seq in rest:
            if seq in found and not found[seq][0].pending:
                vectors[seq] = found[seq][1]
            else:
                removed.add(seq)  # gone (rejected, purged, evicted) or, oddly, still waiting
        return CheckOutcome(vectors, removed)

    def _apply(self, rows: list[Row], compact: np.ndarray, how: str) -> CheckOutcome:
        """Knowledge-base thread: the rule's verdicts, applied to store, replica and bans.

        Only the rows still pending now are judged (their authors' standings) and counted: a
        background batch reads its rows, then encodes them outside the knowledge-base lock,
        and a query may check some of them on demand meanwhile (or a ban purge them); those
        were judged there, and judging them again counted one non-decisive failure as two
        strikes. A row purged by an earlier row's ban in this call is skipped too (purged)."""
        node = self.node
        kb = node.kb
        waiting = kb.pending_seqs([r.seq for r in rows])
        if len(waiting) < len(rows):
            keep = [i for i, r in enumerate(rows) if r.seq in waiting]
            log.debug("%d of %d checked elsewhere meanwhile", len(rows) - len(keep), len(rows))
            rows, compact = [rows[i] for i in keep], compact[keep]
        if not rows:
            return CheckOutcome({}, set())
        codes = [decode(r.wire).experience.code for r in rows]
        verdicts = self.rule(codes, compact, node.encoder.space_info)
        good = [i for i, v in enumerate(verdicts) if v.accept]
        promoted = set(kb.promote([rows[i] for i in good], compact[good]))
        vectors = {rows[i].seq: compact[i] for i in good if rows[i].seq in promoted}
        removed: set[int] = set()
        judged = 0
        for row, verdict in zip(rows, verdicts, strict=True):
            if row.seq in removed:  # purged with its author, banned on an earlier row
                continue
            standing, ban = self._judge(row.author, verdict.accept, verdict.ban)
            judged += 1
            if verdict.accept:
                continue
            if ban and row.author not in node.banned:  # first: a full disk retries
                kb.store.ban(row.author, Reason.EMBEDDING_MISMATCH)  # the whole step
            if not kb.remove([row], Reason.EMBEDDING_MISMATCH):
                continue  # not expected: it was pending at the start of this call
            removed.add(row.seq)
            node.counters[f"check:{how}:rejected"] += 1
            log.warning(
                "embedding mismatch in %s from %s: %s; author %s: %s",
                row.id.hex()[:16],
                row.peer,
                self._explain(verdict),
                row.author.hex()[:16],
                self.punishment.explain(standing, ban, verdict.ban),
            )
            if ban and row.author not in node.banned:
                purged = kb.remove(kb.pending_of(row.author), Reason.AUTHOR_BANNED)
                node.banned.add(row.author)  # after the purge, which a full disk retries
                removed |= {r.seq for r in purged}
                node.counters["check:purged"] += len(purged)
        node.counters[f"check:{how}:promoted"] += len(promoted)
        node.counters[f"check:{how}"] += judged
        self.meter.add(judged)
        return CheckOutcome(vectors, removed)

    def _explain(self, verdict) -> str:
        """The failed record's statistics against the rule's bounds, for the log."""
        explain = getattr(self.rule, "explain", None)  # any EmbeddingRule may be plugged in
        return explain(verdict) if explain else f"score {verdict.score:.3f}"

    def _judge(self, author: bytes, accepted: bool, decisive: bool) -> tuple[Standing, bool]:
        """One more checked record of ``author``: its new standing, and whether to ban it."""
        standing = self.standings.pop(author, Standing())
        standing, ban = self.punishment.update(standing, accepted, decisive)
        self.standings[author] = standing  # re-inserted: the most recent authors stay
        if len(self.standings) > MAX_STANDINGS:
            for old in list(self.standings)[: MAX_STANDINGS // 10]:
                del self.standings[old]
        return standing, ban

    def status(self) -> dict[str, float | int]:
        """The backlog as ``/v1/status`` and the CLI show it."""
        node = self.node
        backlog = node.kb.backlog
        c = node.counters
        return {
            "pending": backlog.total,
            "pending_authors": len(backlog.by_author),
            "check_rate": round(self.meter.rate(), 2),
            "checked": c["check:background"] + c["check:on_demand"],
            "promoted": c["check:background:promoted"] + c["check:on_demand:promoted"],
            "rejected": c["check:background:rejected"] + c["check:on_demand:rejected"],
            "purged": c["check:purged"],
            "on_demand": c["check:on_demand"],
            "deferred": c["check:deferred"],
            "ignored": node.gossip.stats.verdicts.get(f"ignore:{Reason.BACKLOG}", 0)
            + c[f"sync:ignore:{Reason.BACKLOG}"],
            "max_pending": node.bounds.total,
            "max_pending_per_author": node.bounds.per_author,
        }


class CheckThread:
    """The one thread that runs the background check's encodes, at a lower CPU priority
    (``nice``, Linux only: there a thread has its own nice value; elsewhere, or where it
    cannot be set, it runs at the process's priority). A thread of its own, because a thread
    cannot raise its priority back without privilege, so the niced thread is never one that
    a query or the knowledge base uses."""

    def __init__(self, nice: int) -> None:
        self.nice = nice
        self.niced = False
        self.tid: int | None = None  # the thread's native id, once started
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        self.tid = tid = threading.get_native_id()
        if self.nice and sys.platform.startswith("linux"):
            try:
                now = os.getpriority(os.PRIO_PROCESS, tid)
                os.setpriority(os.PRIO_PROCESS, tid, min(now + self.nice, 19))
                # Lower than the rest of the node only if it was not at 19 already.
                self.niced = os.getpriority(os.PRIO_PROCESS, tid) > now
            except OSError as exc:  # e.g. a sandbox without setpriority
                log.info("background check runs at normal priority: %s", exc)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, done = job
            try:
                result = (True, fn(*args))
            except BaseException as exc:  # handed to the awaiting task
                result = (False, exc)
            done(result)

    async def run(self, fn, *args):
        """``fn(*args)`` in the check thread, the calling task waiting for it. Cancelled, the
        task returns at once; the thread finishes the call and its result is dropped."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="zoonode-check", daemon=True)
            self._thread.start()
        token = trio.lowlevel.current_trio_token()
        finished = trio.Event()
        box: list = []

        def done(result) -> None:
            box.append(result)
            with contextlib.suppress(trio.RunFinishedError):  # the node has stopped
                token.run_sync_soon(finished.set)

        self._jobs.put((fn, args, done))
        await finished.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value

    async def aclose(self, timeout: float = CLOSE_WAIT_S) -> None:
        """Stop the thread once its current call returns, and wait for that (shielded, at
        most ``timeout`` s). A process that exits while the thread is still inside the
        encoder's native code (torch's or ONNX Runtime's thread pool) aborts at exit
        ("terminate called without an active exception", rc 134 / signal 6): a node stopped
        mid-backlog by SIGTERM did, and so did a test process."""
        if self._thread is None:
            return
        self._jobs.put(None)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._thread.join, timeout)
        if self._thread.is_alive():
            log.warning("the background check's thread did not stop within %.0f s", timeout)
