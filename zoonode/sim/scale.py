"""Scale mode: thousands of nodes as a discrete-event simulation on SimPy.

What is real here: the signed records and their bytes, the gossip message decoding
(``decode_batch``), the record validation (``check_record``: strict decode, signature, space,
time horizon, known, banned, backlog bound, per-author rate), the embedding check (the node's
``AbsoluteAgreement`` rule on real encoder vectors), the peer-scoring rules (``PeerScores``
with the node's ``ScoreRules``) and the selection an agent's query runs (``select``). What is
modelled: the network (lognormal link latency, per-node uplink bandwidth), the GossipSub mesh
(D random peers, eager push to the mesh, IHAVE/IWANT lazy gossip to ``lazy_degree`` other
peers per heartbeat, graylisted peers ignored and pruned), the anti-entropy sync of a node
that rejoins, and the node's two-stage ingest: a record that passes validation is stored
*pending* at once (that is its delivery) and forwarded; each node's checker re-encodes
pending records at ``[ingest] check_rate`` in the node's order (authors vouched for by a
check first, each author's first waiting record before anyone's second, newest first), then
promotes each (``active``) or removes it, bans its author and drops the author's other
waiting records. Agents' queries see what a node returns: checked records and pending ones
that pass the check on demand, never one that fails it.

Pure decode+verify is memoised per byte string (it is a pure function); everything that
depends on a node's state runs per node. Every copy of a message a node sends counts on the
wire, but only a copy that can change something is simulated (a SimPy timeout): one to an
honest node that has not seen the message, arriving before any copy already on its way
(adversaries forward nothing they did not make, so what they receive changes nothing). The
cyclic garbage collector is paused while the events run (it took a third of a 1,000-node
run and found nothing to free).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import heapq
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import numpy as np
import simpy

from zoonode.native.encoder import Encoder
from zoonode.net.gossip import FloodMeter
from zoonode.net.scoring import PeerScores
from zoonode.net.validation import (
    AbsoluteAgreement,
    AuthorLimiter,
    BacklogBounds,
    Policy,
    Reason,
    Verdict,
    backlog_admits,
    check_record,
    decode_batch,
    encode_batch,
)
from zoonode.protocol import decode
from zoonode.sim.scenario import Scenario
from zoonode.sim.workload import CODE_CHUNK, Workload, build_workload

WARMUP_S = 2.0
EMBEDDING_THRESHOLD = 0.9
NEWCOMER_RANK = 1_000_000_000  # as knowledge.NEWCOMER_RANK
WINDOW_HEARTBEATS = 3  # IHAVE advertises messages seen in the last 3 heartbeats
FLOOD_RATE = 50.0  # messages/s of nothing new per peer before the P6 penalty (the default)


@dataclass(eq=False)
class Message:
    data: bytes
    origin: int
    sent_at: float
    id: bytes = b""
    # Earliest arrival scheduled per node: a copy that would arrive later is counted on the
    # wire but not simulated (the receiver drops it as seen), which keeps events ~O(nodes).
    first_arrival: dict[int, float] = field(default_factory=dict)

    _wires: list[bytes] | None = None
    _malformed: str | None = None

    def __post_init__(self) -> None:
        self.id = hashlib.sha256(self.data).digest()

    def wires(self) -> list[bytes]:
        """``decode_batch`` once per message (a pure function of its bytes)."""
        if self._wires is None and self._malformed is None:
            try:
                self._wires = decode_batch(self.data)
            except ValueError as exc:
                self._malformed = str(exc.args[0])
        if self._malformed is not None:
            raise ValueError(self._malformed)
        return self._wires


@dataclass(eq=False)
class SimNode:
    index: int
    honest: bool
    role: str | None
    peers: set[int] = field(default_factory=set)
    links: dict[int, float] = field(default_factory=dict)  # peer -> one-way latency (s)
    mesh: set[int] = field(default_factory=set)
    online: bool = True
    seen: set[bytes] = field(default_factory=set)
    window: list[list[Message]] = field(default_factory=lambda: [[]])
    known: set[bytes] = field(default_factory=set)  # record ids held (or tombstoned)
    stored: dict[bytes, float] = field(default_factory=dict)  # record id -> time stored
    active: dict[bytes, float] = field(default_factory=dict)  # record id -> time checked
    # The backlog of the embedding check: a heap of (rank, -created_at, id) and its counts.
    queue: list = field(default_factory=list)
    pending_of: Counter = field(default_factory=Counter)
    author_of: dict[bytes, bytes] = field(default_factory=dict)  # pending id -> author
    vouched: set[bytes] = field(default_factory=set)
    checking: bool = False
    backlog_peak: int = 0
    banned: set[bytes] = field(default_factory=set)
    rejected: Counter = field(default_factory=Counter)
    scores: PeerScores = field(default_factory=PeerScores)
    meter: FloodMeter = field(default_factory=FloodMeter)  # the node's P6 input
    bytes_sent: int = 0
    limiter: AuthorLimiter | None = None


class ScaleSim:
    def __init__(self, scenario: Scenario, workload: Workload, policy: Policy, space_info) -> None:
        self.sc = scenario
        self.wl = workload
        self.policy = policy
        self.space_info = space_info
        self.rng = random.Random(scenario.seed)
        self.env = simpy.Environment()
        self.t0_ms = 0
        n = scenario.nodes.honest + scenario.nodes.adversarial
        self.nodes = [
            SimNode(
                i,
                i < scenario.nodes.honest,
                workload.roles.get(i),
                limiter=AuthorLimiter(policy.author_rate, policy.author_burst),
            )
            for i in range(n)
        ]
        self._honest = [node.honest for node in self.nodes]
        # The nodes' ``seen`` sets read by message, kept in step with them: one flag per
        # node for each message id. The hot paths (``push``, ``receive``) read one small
        # array per message instead of a large set per node scattered over memory.
        self._seen_by: dict[bytes, bytearray] = {}
        self._latency: dict[tuple[int, int], float] = {}
        self._seconds_per_byte = 8 / (scenario.topology.bandwidth_mbps * 1e6)
        self.decode = functools.lru_cache(maxsize=None)(decode)
        self._agreement: dict[bytes, float] = {}
        self._records: dict[bytes, object] = {}  # every record some node stored, by id
        self.rule = AbsoluteAgreement(EMBEDDING_THRESHOLD)
        ing = scenario.ingest
        self.bounds = BacklogBounds(ing.max_pending, ing.max_pending_per_author)
        self.check_rate, self.check_batch = ing.check_rate, ing.check_batch
        self.published: dict[bytes, float] = {}  # honest record id -> publish time
        self.excluded_at: dict[int, float] = {}  # attacker -> first time an honest node did
        self.graylisted_at: dict[int, float] = {}  # attacker -> first time one graylisted it
        self.attacker_scores: list[tuple[float, float]] = []  # (t, mean score of attackers)
        self.rejoined: dict[int, float] = {}
        self.feedback = None
        if scenario.feedback.enabled:
            from zoonode.sim.feedback import FeedbackLoop

            self.feedback = FeedbackLoop(scenario, workload, random.Random(scenario.seed + 1))
        self._build_topology()
        for i in workload.newcomers:  # offline until they join (feedback.newcomer_join_s)
            self.nodes[i].online = False

    # -- network model -----------------------------------------------------------------------
    def _build_topology(self) -> None:
        top, n_h = self.sc.topology, self.sc.nodes.honest
        honest = list(range(n_h))
        for i in honest:
            for j in self.rng.sample(honest, min(top.connections, n_h - 1) + 1):
                if j != i:
                    self._connect(i, j)
        victim = self.sc.attack.eclipse_victim % n_h
        for node in self.nodes[n_h:]:
            if node.role == "eclipse":
                targets = [victim]
            else:
                targets = self.rng.sample(honest, min(top.attacker_connections, n_h))
            for j in targets:
                self._connect(node.index, j)
        for node in self.nodes:
            self._refill_mesh(node)

    def _connect(self, a: int, b: int) -> None:
        self.nodes[a].peers.add(b)
        self.nodes[b].peers.add(a)
        self.nodes[a].links[b] = self.nodes[b].links[a] = self.latency(a, b)

    def _refill_mesh(self, node: SimNode) -> None:
        """GossipSub mesh upkeep: drop graylisted peers, prune a mesh grown past D_hi back to D
        (keeping the best-scored), graft up to D from the others."""
        d = self.sc.topology.degree
        for p in [p for p in node.mesh if node.scores.graylisted(p)]:
            node.mesh.discard(p)
            self.nodes[p].mesh.discard(node.index)
        if len(node.mesh) > self.sc.topology.degree_high:
            ranked = sorted(node.mesh, key=lambda p: (-node.scores.score(p), self.rng.random()))
            for p in ranked[d:]:
                node.mesh.discard(p)
                self.nodes[p].mesh.discard(node.index)
        if len(node.mesh) >= d:
            return
        options = [p for p in node.peers if p not in node.mesh and not node.scores.graylisted(p)]
        for p in self.rng.sample(options, min(d - len(node.mesh), len(options))):
            node.mesh.add(p)
            self.nodes[p].mesh.add(node.index)  # GRAFT is symmetric

    def latency(self, a: int, b: int) -> float:
        key = (a, b) if a < b else (b, a)
        if key not in self._latency:
            top = self.sc.topology
            self._latency[key] = top.latency_ms / 1000 * math.exp(self.rng.gauss(0.0, top.jitter))
        return self._latency[key]

    def _seen_flags(self, mid: bytes) -> bytearray:
        flags = self._seen_by.get(mid)
        if flags is None:
            flags = self._seen_by[mid] = bytearray(len(self.nodes))
        return flags

    def send(self, msg: Message, frm: int, to: int, extra_delay: float = 0.0) -> None:
        self.push(msg, frm, (to,), extra_delay)

    def push(
        self,
        msg: Message,
        frm: int,
        targets: Collection[int],
        extra_delay: float = 0.0,
        skip: int | None = None,
    ) -> None:
        """A copy of ``msg`` from ``frm`` to each of ``targets`` but ``skip``. Every copy
        counts on the wire; one is simulated (a timeout that calls ``receive``) only if the
        peer is honest, has not seen the message and would get it before any copy already
        under way. Adversaries forward nothing they did not make, so a copy they get
        changes nothing but their own ``seen``, which nothing else reads. This loop runs for
        every peer of every node that forwards a message, and most copies stop at its first
        test: it reads what it needs once per call."""
        sender = self.nodes[frm]
        size = len(msg.data)
        sender.bytes_sent += size * (len(targets) - (skip in targets))
        honest, seen, links = self._honest, self._seen_flags(msg.id), sender.links
        first = msg.first_arrival
        size_delay = size * self._seconds_per_byte
        now, never = self.env.now, math.inf
        timeout, receive = self.env.timeout, self.receive
        for to in targets:
            if to == skip or not honest[to] or seen[to]:
                continue
            delay = links[to] + size_delay + extra_delay
            arrival = now + delay  # where the timeout is scheduled: env.now + delay
            if arrival >= first.get(to, never):
                continue
            first[to] = arrival
            timeout(delay, (msg, frm, to)).callbacks.append(receive)

    # -- a node receiving a message ------------------------------------------------------------
    def receive(self, arrival: simpy.Timeout) -> None:
        """A copy of a message arriving at an honest node: ``arrival.value`` is the message,
        the peer that sent it and the node."""
        msg, frm, to = arrival.value
        node, seen = self.nodes[to], self._seen_by[msg.id]
        now = self.env.now
        if msg.first_arrival.get(to) == now:
            del msg.first_arrival[to]  # a later copy may be scheduled again (e.g. churn)
        if not node.online or seen[to]:
            return
        # P6 is computed when asked, as the real scorer does: a flood's score recovers once
        # its window has passed. (The validator's first rule below reads the same rate.)
        flood_rate = node.meter.rate(frm, now)
        node.scores.set_flood_excess(frm, flood_rate - FLOOD_RATE)
        if node.scores.excluded(frm):  # the library's gate: dropped before validation
            node.rejected["below_publish_threshold"] += 1
            if not self.nodes[frm].honest:
                self.excluded_at.setdefault(frm, now)
            return
        node.seen.add(msg.id)
        seen[to] = 1
        if flood_rate > FLOOD_RATE:  # the validator's first rule
            node.rejected[Reason.FLOOD] += 1
            verdict = Verdict.REJECT
        else:
            verdict = self._validate(node, msg, frm, now)
        if verdict is Verdict.REJECT:
            node.scores.invalid_message(frm)
            if not self.nodes[frm].honest:
                if node.scores.excluded(frm):
                    self.excluded_at.setdefault(frm, now)
                if node.scores.graylisted(frm):
                    self.graylisted_at.setdefault(frm, now)
            return
        node.scores.first_delivery(frm)  # the library credits every message that validates
        if verdict is Verdict.IGNORE:
            node.meter.hit(frm, now)  # nothing new: the flood score's input
            return  # every record ignored: not forwarded, as the node's gossip does
        node.window[-1].append(msg)
        self.push(msg, to, node.mesh, skip=frm)

    def _validate(self, node: SimNode, msg: Message, frm: int, now: float) -> Verdict:
        """The node's gossip validator: REJECT penalises the forwarder; IGNORE (every record
        ignored) is not forwarded; ACCEPT is forwarded."""
        try:
            wires = msg.wires()
        except ValueError as exc:
            node.rejected[str(exc.args[0])] += 1
            return Verdict.REJECT
        accepted = False
        now_ms = self.t0_ms + int(now * 1000)
        for wire in wires:
            checked = check_record(
                wire,
                self.policy,
                now_ms,
                node.known.__contains__,
                node.limiter,
                node.banned.__contains__,
                decoder=self.decode,
                backlog=lambda r, node=node: backlog_admits(
                    len(node.author_of),
                    node.pending_of[r.experience.author],
                    r.experience.author in node.vouched,
                    self.bounds,
                ),
            )
            if checked.verdict is Verdict.REJECT:
                node.rejected[checked.reason] += 1
                return Verdict.REJECT
            if checked.verdict is Verdict.IGNORE:
                node.rejected[checked.reason] += 1
                continue
            accepted = True
            self._store_pending(node, checked.record, now, own=frm == node.index)
        return Verdict.ACCEPT if accepted else Verdict.IGNORE

    # -- two-stage ingest ----------------------------------------------------------------------
    def _store_pending(self, node: SimNode, record, now: float, own: bool = False) -> None:
        """Stage 1: stored at once, waiting for the embedding check (a node's own lessons
        are encoded where they are written: active at once)."""
        author = record.experience.author
        if own:
            node.known.add(record.id)
            node.stored[record.id] = node.active[record.id] = now
            node.vouched.add(author)
            return
        rank = node.pending_of[author] + (0 if author in node.vouched else NEWCOMER_RANK)
        heapq.heappush(node.queue, (rank, -record.experience.created_at, record.id))
        node.pending_of[author] += 1
        node.author_of[record.id] = author
        self._records[record.id] = record
        node.backlog_peak = max(node.backlog_peak, len(node.author_of))
        node.known.add(record.id)
        node.stored[record.id] = now
        if not node.checking:
            node.checking = True
            self.env.process(self._checker(node))

    def _checker(self, node: SimNode):
        """Stage 2: batches at the encoder's rate, in the node's order, until the queue is
        empty (a record purged with its banned author is skipped)."""
        while node.queue:
            batch = []
            while node.queue and len(batch) < self.check_batch:
                _, _, rid = heapq.heappop(node.queue)
                if rid in node.author_of:
                    batch.append(rid)
            if not batch:
                break
            yield self.env.timeout(len(batch) / self.check_rate)
            for rid in batch:
                author = node.author_of.pop(rid, None)
                if author is None:
                    continue  # purged meanwhile
                node.pending_of[author] -= 1
                if self._agrees_id(rid) >= EMBEDDING_THRESHOLD:
                    node.active[rid] = self.env.now
                    node.vouched.add(author)
                    continue
                node.rejected[Reason.EMBEDDING_MISMATCH] += 1
                node.stored.pop(rid, None)
                node.banned.add(author)
                for other in [r for r, a in node.author_of.items() if a == author]:
                    del node.author_of[other]
                    node.pending_of[author] -= 1
                    node.stored.pop(other, None)
                    node.rejected["purged"] += 1  # waiting records of a banned author
        node.checking = False

    def servable(self, node: SimNode) -> list[bytes]:
        """What the node's queries may return: checked records, and waiting ones that pass
        the on-demand check (the same verdict the background check will give)."""
        return [
            rid
            for rid in node.stored
            if rid in node.active or self._agrees_id(rid) >= EMBEDDING_THRESHOLD
        ]

    def _agrees_id(self, rid: bytes) -> float:
        return self._agrees(self._records[rid])

    def _agrees(self, record) -> float:
        if record.id not in self._agreement:
            self.check_embeddings([record])
        return self._agreement[record.id]

    def check_embeddings(self, records: list) -> None:
        """The embedding check's score of each record not yet scored, ``CODE_CHUNK`` records
        per call of the rule (one matrix product for a chunk instead of one per record)."""
        todo = list({r.id: r for r in records if r.id not in self._agreement}.values())
        for start in range(0, len(todo), CODE_CHUNK):
            chunk = todo[start : start + CODE_CHUNK]
            texts = np.stack([self.wl.text_vectors[r.experience.text] for r in chunk])
            try:
                verdicts = self.rule([r.experience.code for r in chunk], texts, self.space_info)
            except ValueError:  # a malformed code: those records are scored one at a time
                if len(chunk) == 1:
                    raise
                continue
            for r, verdict in zip(chunk, verdicts, strict=True):
                self._agreement[r.id] = verdict.score

    # -- processes -----------------------------------------------------------------------------
    def publish(self, index: int, data: bytes) -> None:
        node = self.nodes[index]
        msg = Message(data, index, self.env.now)
        node.seen.add(msg.id)
        self._seen_flags(msg.id)[index] = 1
        if node.honest:
            if self._validate(node, msg, index, self.env.now) is Verdict.REJECT:
                return
            node.window[-1].append(msg)
        self.push(msg, index, node.mesh if node.honest else node.peers)  # attackers: every peer

    def honest_publisher(self, index: int):
        records = self.wl.honest[index]
        if index in self.wl.newcomers:  # joins late: syncs what its peers hold, publishes
            yield self.env.timeout(WARMUP_S + self.sc.feedback.newcomer_join_s)
            node = self.nodes[index]
            node.online = True
            self.feedback.joined(node.index, self.env.now - WARMUP_S)
            self._sync(node)
            yield self.env.timeout(1.0)
        else:
            yield self.env.timeout(WARMUP_S + self.rng.random() * self.sc.workload.publish_window_s)
        for r in records:
            self.published[r.id] = self.env.now
        self.publish(index, encode_batch([r.wire for r in records]))

    def attacker(self, index: int):
        node = self.nodes[index]
        items = self.wl.attacks.get(index, [])
        yield self.env.timeout(WARMUP_S + self.rng.random() * self.sc.workload.publish_window_s)
        if node.role == "malformed":
            for data in items:
                self.publish(index, data)
                yield self.env.timeout(0.05)
        elif node.role == "spam":
            gap = 1.0 / self.sc.attack.spam_rate
            for wire in items:
                self.publish(index, encode_batch([wire]))
                yield self.env.timeout(gap)
        else:
            per = self.sc.attack.records_per_message  # 1: each record judged on its own
            for start in range(0, len(items), per):
                self.publish(index, encode_batch(items[start : start + per]))
                yield self.env.timeout(0.02)

    def heartbeat(self):
        period = self.sc.topology.heartbeat_s
        lazy = self.sc.topology.lazy_degree
        while True:
            yield self.env.timeout(period)
            for node in self.nodes:
                if not node.honest or not node.online:
                    continue
                node.scores.heartbeat(node.mesh)
                self._refill_mesh(node)
                # IHAVE to a few non-mesh peers; an honest receiver missing a message asks
                # for it (IWANT) and gets it one round trip later.
                recent = {m.id: m for batch in node.window for m in batch}
                if recent:
                    others = [p for p in node.peers if p not in node.mesh]
                    for p in self.rng.sample(others, min(lazy, len(others))):
                        peer = self.nodes[p]
                        if not peer.honest or not peer.online or node.scores.graylisted(p):
                            continue
                        rtt = 2 * self.latency(node.index, p)
                        for mid in recent.keys() - peer.seen:
                            self.send(recent[mid], node.index, p, extra_delay=rtt)
                node.window.append([])
                if len(node.window) > WINDOW_HEARTBEATS:
                    node.window.pop(0)
            attackers = [n.index for n in self.nodes if not n.honest]
            if attackers:
                sample = attackers[:200]
                total, count = 0.0, 0
                for a in sample:
                    for p in self.nodes[a].peers:
                        if self.nodes[p].honest:
                            total += self.nodes[p].scores.score(a)
                            count += 1
                self.attacker_scores.append((self.env.now, total / max(count, 1)))

    def churn(self):
        ch = self.sc.churn
        honest = [n for n in self.nodes if n.honest]
        leaving = self.rng.sample(honest[1:], int(ch.share * len(honest)))
        yield self.env.timeout(WARMUP_S + ch.leave_s)
        for node in leaving:
            node.online = False
        yield self.env.timeout(ch.rejoin_s - ch.leave_s)
        for node in leaving:
            node.online = True
            self.rejoined[node.index] = self.env.now
            self._sync(node)

    def _sync(self, node: SimNode) -> None:
        """Anti-entropy on rejoin: fetch what one online honest peer holds, validated."""
        peers = [p for p in node.peers if self.nodes[p].honest and self.nodes[p].online]
        if not peers:
            return
        peer = self.nodes[self.rng.choice(peers)]
        missing = [rid for rid in peer.stored if rid not in node.known]
        wires = [self._wire_of[rid] for rid in missing if rid in self._wire_of]
        for start in range(0, len(wires), 128):
            msg = Message(encode_batch(wires[start : start + 128]), peer.index, self.env.now)
            self.send(
                msg, peer.index, node.index, extra_delay=2 * self.latency(node.index, peer.index)
            )

    def feedback_rounds(self):
        """Agents use lessons and report verdicts; every honest node recomputes trust."""
        fb = self.sc.feedback
        records_by_id = {r.id: r for rs in self.wl.honest.values() for r in rs}
        records_by_id |= {r.id: r for r in attack_records(self.decode, self.wl)}
        yield self.env.timeout(WARMUP_S + fb.start_s)
        while True:
            started = time.perf_counter()
            online = [n.index for n in self.nodes if n.honest and n.online]
            servable = {i: self.servable(self.nodes[i]) for i in self.feedback.acting(online)}
            self.feedback.round(self.env.now - WARMUP_S, servable, records_by_id)
            self.feedback.rounds[-1]["wall_s"] = time.perf_counter() - started
            yield self.env.timeout(fb.round_s)

    # -- run ---------------------------------------------------------------------------------
    def run(self, progress: Callable[[float], None] | None = None) -> None:
        self._wire_of = {r.id: r.wire for rs in self.wl.honest.values() for r in rs}
        # Every record a node may store (the honest lessons and the attack records that
        # decode), scored up front in chunks: a node's check reads the score when it runs.
        records = [r for rs in self.wl.honest.values() for r in rs]
        records += attack_records(self.decode, self.wl)
        self.check_embeddings([r for r in records if r.experience.text in self.wl.text_vectors])

        for i in self.wl.honest:
            self.env.process(self.honest_publisher(i))
        for i in self.wl.attacks:
            self.env.process(self.attacker(i))
        self.env.process(self.heartbeat())
        if self.sc.churn.share > 0:
            self.env.process(self.churn())
        if self.feedback is not None:
            self.env.process(self.feedback_rounds())
        end = WARMUP_S + self.sc.duration_s
        step = end / 50
        t = 0.0
        with _cyclic_gc_paused():
            while t < end:
                t = min(end, t + step)
                self.env.run(until=t)
                if progress:
                    progress(t / end)


@contextlib.contextmanager
def _cyclic_gc_paused():
    """A run allocates millions of short-lived objects (events, heap entries) beside
    millions of long-lived ones (every node's seen set, store and scores), and the cyclic
    collector's passes over the long-lived ones took a third of a 1,000-node run while
    finding next to nothing to free (the engine's objects are freed by reference counts).
    At the end what the run made goes to the oldest generation without a pass over it
    (``freeze`` then ``unfreeze``, both O(1)): the first collection after the run would
    otherwise scan all of it as young objects (~2 s at 1,000 nodes)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if not gc.get_freeze_count():  # (a caller's frozen objects stay frozen)
            gc.freeze()
            gc.unfreeze()
        if enabled:
            gc.enable()


def run_scale(
    scenario: Scenario, encoder: Encoder, progress: Callable[[float], None] | None = None
) -> dict:
    """Run one scale-mode simulation; returns the raw outcome for ``metrics.summarise``."""
    from zoonode.experiences import now_ms
    from zoonode.sim.agents import agent_outcomes

    t0_ms = now_ms()
    workload = build_workload(scenario, encoder, t0_ms)
    policy = Policy(space=encoder.space)
    sim = ScaleSim(scenario, workload, policy, encoder.space_info)
    sim.t0_ms = t0_ms
    sim.run(progress)
    honest = [n for n in sim.nodes if n.honest]
    holdings = {n.index: n.stored for n in honest}
    queriers = [n.index for n in honest if n.online][: scenario.workload.query_nodes]
    servable = {i: sim.servable(sim.nodes[i]) for i in queriers}
    bad = attack_records(sim.decode, workload)
    records_by_id = {r.id: r for rs in workload.honest.values() for r in rs}
    records_by_id |= {r.id: r for r in bad}
    workload.fill_code_vectors(list(records_by_id.values()))  # what trusting nodes decode
    agents = agent_outcomes(
        workload,
        servable,
        records_by_id,
        scenario.workload.k,
        attack_records=bad,
        history=scenario.history,
        standing_of=({i: sim.feedback.standing_map(i) for i in queriers} if sim.feedback else None),
        vouched_of=({i: sim.feedback.vouched_set(i) for i in queriers} if sim.feedback else None),
        settings=sim.feedback.settings if sim.feedback else None,
    )
    return {
        "mode": "scale",
        "nodes": len(sim.nodes),
        "published": sim.published,
        "publisher_of": {r.id: i for i, rs in workload.honest.items() for r in rs},
        "holdings": holdings,
        "rejected": sum((n.rejected for n in honest), Counter()),
        "bytes_sent": [n.bytes_sent for n in honest],
        "excluded_at": sim.excluded_at,
        "graylisted_at": sim.graylisted_at,
        "attackers": [n.index for n in sim.nodes if not n.honest],
        "attacker_scores": sim.attacker_scores,
        "rejoined": sim.rejoined,
        "checked": {n.index: n.active for n in honest},
        "backlog_peak": max((n.backlog_peak for n in honest), default=0),
        "backlog_left": sum(len(n.author_of) for n in honest),
        "agents": agents,
        "forged_ids": workload.forged_ids,
        "warmup_s": WARMUP_S,
    } | (
        {
            "feedback": {
                "standing": scenario.feedback.standing,
                "rounds": sim.feedback.rounds,
                "votes": len(sim.feedback.votes),
            }
        }
        if sim.feedback
        else {}
    )


def attack_records(sim_decode: Callable, workload: Workload) -> list:
    """Every attack record that decodes (what a node without validation would keep)."""
    out = []
    for i, items in workload.attacks.items():
        if workload.roles[i] in ("malformed", "forger"):
            continue
        for wire in items:
            with contextlib.suppress(ValueError):
                out.append(sim_decode(wire))
    return out
