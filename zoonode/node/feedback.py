"""The feedback room: agents' verdicts on the lessons they used (signed feedback records,
SPEC.md §8), their gossip topic and sync type, and this node's personalised trust.

Data flow of a verdict: an agent reports it (API, MCP, CLI, client) -> :meth:`Feedback.rate`
signs it with the node's key -> feedback table (one standing verdict per voter and target,
the latest) -> the feedback topic. Peers' verdicts: feedback-topic validator (decode,
signature, space, time, known, voter banned, superseded, voter rate) -> queue -> table.

Trust (``zoonode.trust``) is recomputed every ``trust.recompute_s`` while verdicts or lessons
changed: the endorsement graph is read from the table a page at a time on the knowledge-base
thread, then computed on the room's own worker thread (one at a time), so neither queries nor
ingest wait for it. :meth:`standing` combines it with time known into the standing selection
receives (``trust.author_standing_from``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from zoonode.experiences import now_ms
from zoonode.net.validation import AuthorLimiter, Checked
from zoonode.protocol import (
    Feedback as FeedbackBody,
)
from zoonode.protocol import (
    FeedbackVerdict,
    Op,
    SignedFeedback,
    sign_feedback,
)
from zoonode.store import FeedbackResult, StorageFull, VoteRow
from zoonode.trust import TrustResult, TrustSettings, VoteTable, author_standing_from, compute_trust

if TYPE_CHECKING:
    from zoonode.node.core import Node

log = logging.getLogger("zoonode.node.feedback")

QUEUE = 10_000
BATCH = 256
EDGE_PAGE = 50_000  # endorsement rows read per knowledge-base call
MAX_VOTES_SHOWN = 10  # votes listed per lesson in an explanation
# Verdicts sync fetched and ignored (``unknown_target``), remembered with their target so that
# later rounds fetch them again only once the lesson is held (~200 B each in memory).
MAX_UNHELD = 100_000
# Verdicts sync fetched and ignored as ``feedback_full``, remembered with their voter so that
# later rounds fetch them again only once the voter has trust here or there is room again
# (without it a peer holding other untrusted verdicts made every round re-fetch them all).
MAX_REFUSED = 100_000


class RateRefused(Exception):
    """An agent's verdict that is refused: ``code`` (``not_found``, ``not_a_lesson``,
    ``own_lesson``, ``rate_limited``) and a message; nothing was stored or sent."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


@dataclass(frozen=True)
class TrustStatus:
    """What ``/v1/status`` and ``/metrics`` show of the trust graph."""

    votes: int
    voters: int
    authors: int
    identities: int
    root_endorsements: int
    ready: bool
    reference: float | None
    iterations: int
    recomputed_at: int | None  # ms
    seconds: float | None  # the last recomputation's duration (read + compute)
    stored: int  # every standing verdict stored (held target or not, withdrawn included)
    untrusted_stored: int  # of them, from voters without trust (as of the last computation)
    max_untrusted: int  # trust.max_untrusted_verdicts

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


class Feedback:
    """Publishing our agents' verdicts, the queue of peers' verdicts, and trust."""

    def __init__(self, node: Node) -> None:
        self.node = node
        cfg = node.cfg.trust
        self.settings = TrustSettings(
            damping=cfg.damping,
            established_mass=cfg.established_mass,
            established_voters=cfg.established_voters,
            voters_min_standing=cfg.voters_min_standing,
        )
        self.interval = cfg.recompute_s
        self._send, self._recv = trio.open_memory_channel[tuple[SignedFeedback, str]](QUEUE)
        self._own_limiter = AuthorLimiter(node.policy.feedback_rate, node.policy.feedback_burst)
        self._worker = trio.CapacityLimiter(1)  # the trust computation's own thread
        self._dirty = True
        self.trust: TrustResult | None = None
        self.recomputed_at: int | None = None
        self.recompute_seconds: float | None = None
        self.recomputations = 0
        self.max_untrusted = cfg.max_untrusted_verdicts
        counts = list(node.kb.store.feedback.count_by_voter())
        self.stored = sum(n for _, n in counts)
        self.untrusted_stored = sum(n for voter, n in counts if not self.has_trust(voter))
        self._admitted = 0  # admitted by ``admits``, not stored yet
        self.unheld: OrderedDict[bytes, bytes] = OrderedDict()  # verdict id -> target
        self.refused: OrderedDict[bytes, bytes] = OrderedDict()  # verdict id -> voter

    # -- our agents' verdicts ---------------------------------------------------------------
    async def rate(
        self, target: bytes, verdict: FeedbackVerdict, task: bytes | None = None
    ) -> dict[str, Any]:
        """Sign, store and gossip this node's verdict on the experience ``target``.

        Returns {id, target, verdict, outcome (accepted: first verdict on it; replaced: the
        previous one no longer stands), previous (its verdict or None)}. The target is read
        as ``GET /v1/experiences/{id}`` reads it (``Node.read_by_id``): a record still waiting
        for the embedding check is checked first. Raises RateRefused: ``not_found`` (no such
        experience here, or one that failed its check: nothing is signed, stored or sent),
        ``not_a_lesson`` (a revocation), ``own_lesson`` (a vote on our own lesson counts for
        nothing), ``rate_limited`` (over ``network.feedback_rate``); and StorageFull. The
        same verdict (and task) as the one that stands answers outcome ``unchanged`` with the
        standing verdict's id: nothing is signed, sent or counted against the rate."""
        node = self.node

        def work() -> tuple[SignedFeedback, FeedbackResult, int | None] | dict[str, Any]:
            row = node.read_by_id(target)  # a pending target is checked first, as GET does
            if row is None:
                raise RateRefused("not_found", "no such experience on this node")
            if row.op is Op.REVOKE:
                raise RateRefused("not_a_lesson", "a revocation carries no lesson to rate")
            if row.author == node.author:
                raise RateRefused(
                    "own_lesson", "a verdict on this node's own lesson counts for nothing"
                )
            table = node.kb.store.feedback
            same = table.standing_verdict(node.author, target)
            if same is not None and same[1] == int(verdict) and same[2] == task:
                return {
                    "id": same[0].hex(),
                    "target": target.hex(),
                    "verdict": verdict.label,
                    "outcome": "unchanged",
                    "previous": verdict.label,
                }
            held = table.standing(node.author, target)
            previous = table.verdict(held[1]) if held is not None else None
            if not self._own_limiter.allow(node.author, time.monotonic()):
                raise RateRefused(
                    "rate_limited",
                    f"over {node.policy.feedback_rate:g} verdicts/s (burst "
                    f"{node.policy.feedback_burst:g}): peers would ignore more",
                )
            # Latest wins: a verdict made within the same millisecond still follows.
            stamp = max(now_ms(), held[0] + 1) if held else now_ms()
            body = FeedbackBody(node.author, node.encoder.space, stamp, target, verdict, task)
            record = sign_feedback(body, node.key)
            [result] = self.insert([(record, "local")])
            return record, result, previous

        done = await node.in_kb(work)
        if isinstance(done, dict):
            node.counters["feedback:unchanged"] += 1
            return done
        record, result, previous = done
        self._note(record, result)
        node.counters[f"feedback:{result.outcome}"] += 1
        await node.gossip.publish_feedback([record.wire])
        names = {1: "helpful", -1: "harmful", 0: "withdrawn"}
        return {
            "id": record.id.hex(),
            "target": target.hex(),
            "verdict": record.feedback.verdict.label,
            "outcome": result.outcome,
            "previous": names.get(previous) if previous is not None else None,
        }

    # -- peers' verdicts ----------------------------------------------------------------------
    async def on_gossip(self, accepted: list[Checked], forwarder: str) -> None:
        for checked in accepted:
            assert isinstance(checked.record, SignedFeedback)
            await self._send.send((checked.record, forwarder))

    def room(self) -> int:
        """Verdicts the queue can still take (the feedback topic's gossip room)."""
        return QUEUE - self._send.statistics().current_buffer_used

    def has_trust(self, voter: bytes) -> bool:
        """A root, or a voter the last trust computation gives trust (T > 0)."""
        if voter in self.roots:
            return True
        return self.trust is not None and self.trust.trust_of(voter) > 0.0

    def admits(self, voter: bytes, replacing: bool) -> bool:
        """Whether a peer's verdict may be stored (NETWORK.md §4.7 ``feedback_full``): a
        trusted voter's always, one that replaces a standing verdict always (it adds no row),
        else while verdicts from voters without trust are under ``max_untrusted``."""
        if replacing or self.has_trust(voter):
            return True
        if self.untrusted_stored + self._admitted >= self.max_untrusted:
            return False
        self._admitted += 1  # on its way to the table: counted before it lands
        return True

    def note_unheld(self, record: SignedFeedback) -> None:
        """Sync fetched this verdict on a lesson we do not hold: not again until we do."""
        self.unheld[record.id] = record.feedback.target
        while len(self.unheld) > MAX_UNHELD:
            self.unheld.popitem(last=False)

    def note_refused(self, record: SignedFeedback) -> None:
        """Sync fetched this verdict and refused it (``feedback_full``): not again while its
        voter has no trust here and the bound is still reached."""
        self.refused[record.id] = record.feedback.voter
        while len(self.refused) > MAX_REFUSED:
            self.refused.popitem(last=False)

    def worth_fetching(self, ids: list[bytes]) -> list[bytes]:
        """Of a sync page's ids, those to ``get`` (knowledge-base thread; reads ``unheld``
        and ``refused`` only): not held, not a verdict fetched before whose target is still
        not held, and not one refused as ``feedback_full`` whose voter still has no trust
        while the bound is still reached."""
        store = self.node.kb.store
        full = self.untrusted_stored + self._admitted >= self.max_untrusted
        out = []
        for i in ids:
            if store.feedback.known(i):
                continue
            target = self.unheld.get(i)
            if target is not None and not store.has(target):
                continue
            voter = self.refused.get(i)
            if voter is not None and full and not self.has_trust(voter):
                continue
            out.append(i)
        return out

    def check_extra(self) -> dict[str, Any]:
        """The node-state lookups ``check_feedback`` takes, for gossip and sync alike."""
        store = self.node.kb.store
        return {
            "standing": store.feedback.standing,
            "target_held": store.has,
            "admits": self.admits,
        }

    async def enqueue(self, record: SignedFeedback, peer: str) -> None:
        """A verdict fetched by sync, already validated like gossip."""
        await self._send.send((record, peer))

    async def run(self) -> None:
        """Store peers' verdicts in batches (50 ms to fill one), and keep trust fresh."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run_trust)
            while True:
                batch = [await self._recv.receive()]
                with trio.move_on_after(0.05):
                    while len(batch) < BATCH:
                        batch.append(await self._recv.receive())
                try:
                    results = await self.node.in_kb(self.insert, batch)
                except StorageFull as exc:
                    self.node.counters["feedback:storage_full"] += len(batch)
                    log.warning("%d peer verdicts dropped: %s", len(batch), exc)
                    continue
                for (record, _), result in zip(batch, results, strict=True):
                    self.node.counters[f"feedback_store:{result.outcome}"] += 1
                    self._note(record, result)

    def insert(self, items: list[tuple[SignedFeedback, str | None]]) -> list[FeedbackResult]:
        """Store verdicts and count them (knowledge-base thread: the counts change in step
        with the table, so a recomputation's recount never misses or repeats one)."""
        results = self.node.kb.store.feedback.insert(items)
        for (record, _), result in zip(items, results, strict=True):
            if result.outcome == "accepted":
                self.stored += 1
                if not self.has_trust(record.feedback.voter):
                    self.untrusted_stored += 1
        return results

    def _note(self, record: SignedFeedback, result: FeedbackResult) -> None:
        """The sync digest follows the table: the new verdict in, the one it replaced out."""
        if self._admitted and not self.has_trust(record.feedback.voter):
            self._admitted -= 1  # stored or not, no longer on its way
        if result.outcome in ("accepted", "replaced"):
            self.node.feedback_digest.add(record.id, record.feedback.created_at)
            if result.replaced is not None and result.replaced_created_at is not None:
                self.node.feedback_digest.remove(result.replaced, result.replaced_created_at)
            self.changed()

    def changed(self) -> None:
        """Verdicts or lessons changed: trust is recomputed at the next tick."""
        self._dirty = True

    # -- trust --------------------------------------------------------------------------------
    async def _run_trust(self) -> None:
        while True:
            if self._dirty:
                await self.recompute()
            await trio.sleep(self.interval)

    @property
    def roots(self) -> set[bytes]:
        return {self.node.author, *self.node.trusted_authors}

    async def recompute(self) -> TrustResult:
        """Read the endorsement graph (pages on the knowledge-base thread), compute trust on
        the room's worker thread, and make it the one queries use."""
        started = time.perf_counter()
        self._dirty = False
        pages = []
        after = 0
        store = self.node.kb.store.feedback
        while True:
            page = await self.node.in_kb(store.edges_page, after, EDGE_PAGE)
            if not page:
                break
            pages.append(page)
            after = page[-1][0]
            if len(page) < EDGE_PAGE:
                break
        roots = self.roots

        def work() -> TrustResult:  # ~3 s of table building at 1M votes: off the trio thread
            table = VoteTable()
            for page in pages:
                table.add((voter, author, verdict) for _, voter, author, verdict in page)
            return compute_trust(table, roots, self.settings)

        result = await trio.to_thread.run_sync(work, limiter=self._worker)
        self.trust = result

        def recount() -> None:  # on the knowledge-base thread, like every insert
            counts = list(store.count_by_voter())
            self.stored = sum(n for _, n in counts)
            self.untrusted_stored = sum(n for voter, n in counts if not self.has_trust(voter))

        await self.node.in_kb(recount)
        # Admitted ones dropped on the way (a batch rejected after them, a full queue) no
        # longer count: at most those still in the queue are on their way.
        self._admitted = min(self._admitted, QUEUE - self.room())
        self.recomputed_at = now_ms()
        self.recompute_seconds = time.perf_counter() - started
        self.recomputations += 1
        self.node.counters["trust:recomputed"] += 1
        log.debug(
            "trust: %d votes, %d identities, %d root endorsements, %.3f s",
            result.votes,
            len(result.identities),
            result.root_endorsements,
            self.recompute_seconds,
        )
        return result

    @property
    def ready(self) -> bool:
        """Whether the roots have endorsed enough authors (``trust.min_endorsements``) for
        trust, not age, to decide who is established."""
        return (
            self.trust is not None
            and self.trust.root_endorsements >= self.node.cfg.trust.min_endorsements
        )

    def trust_standing(self, author: bytes) -> float:
        if author in self.roots:
            return 1.0
        return self.trust.standing(author) if self.trust is not None else 0.0

    def vouched(self, author: bytes) -> bool:
        """Whether this node's trust vouches for ``author`` (``TrustResult.vouched``)."""
        if author in self.roots:
            return True
        return self.trust is not None and self.trust.vouched(
            author, self.node.cfg.trust.vouched_standing
        )

    def standing(self, author: bytes, time_standing: float) -> float:
        """The standing selection receives: trust combined with time known."""
        if author in self.roots:
            return 1.0
        return author_standing_from(
            self.trust_standing(author),
            time_standing,
            ready=self.ready,
            unendorsed_cap=self.node.cfg.trust.unendorsed_cap,
        )

    def status(self) -> TrustStatus:
        t = self.trust
        return TrustStatus(
            votes=t.votes if t else 0,
            voters=t.voters if t else 0,
            authors=t.authors if t else 0,
            identities=len(t.identities) if t else 0,
            root_endorsements=t.root_endorsements if t else 0,
            ready=self.ready,
            reference=t.reference if t and t.informative else None,
            iterations=t.iterations if t else 0,
            recomputed_at=self.recomputed_at,
            seconds=self.recompute_seconds,
            stored=self.stored,
            untrusted_stored=self.untrusted_stored,
            max_untrusted=self.max_untrusted,
        )

    # -- explanations ---------------------------------------------------------------------------
    def explain(self, authors: dict[bytes, bytes], votes: dict[bytes, list[VoteRow]]) -> dict:
        """Per lesson id: its author's trust and the standing verdicts behind it. ``authors``
        maps lesson id -> author; ``votes`` comes from ``FeedbackStore.votes_on``. The
        trust-weighted sums come first (what a reader should weigh): raw counts can be made by
        any number of free keys. The author's own votes on its lesson are left out (trust
        ignores them too)."""
        out = {}
        for lesson, author in authors.items():
            rows = [r for r in votes.get(lesson, []) if r.voter != author]
            helpful = [r for r in rows if r.verdict > 0]
            harmful = [r for r in rows if r.verdict < 0]
            shown = sorted(rows, key=lambda r: -self.trust_standing(r.voter))[:MAX_VOTES_SHOWN]
            out[lesson] = {
                "helpful_trusted": float(sum(self.trust_standing(r.voter) for r in helpful)),
                "harmful_trusted": float(sum(self.trust_standing(r.voter) for r in harmful)),
                "author_trust_standing": self.trust_standing(author),
                "author_trust": self.trust.trust_of(author) if self.trust else 0.0,
                "helpful": len(helpful),
                "harmful": len(harmful),
                "helpful_untrusted": sum(1 for r in helpful if self.trust_standing(r.voter) == 0),
                "harmful_untrusted": sum(1 for r in harmful if self.trust_standing(r.voter) == 0),
                "votes": [
                    {
                        "voter": r.voter.hex(),
                        "verdict": "helpful" if r.verdict > 0 else "harmful",
                        "voter_standing": self.trust_standing(r.voter),
                        "created_at": r.created_at,
                    }
                    for r in shown
                ],
            }
        return out


def task_digest(task: str) -> bytes:
    """The optional task field of a verdict: SHA-256 of the task text (UTF-8)."""
    return hashlib.sha256(task.encode("utf-8")).digest()
