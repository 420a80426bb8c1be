"""The loop from use to trust in scale mode: agents' verdicts -> per-node personalised trust ->
standing -> what the next agent is given (issue 24, docs/trust.md).

Real here: the trust rule (``zoonode.trust.compute_trust`` seeded at the node's own identity,
the node's ``[trust]`` defaults), the standing a node's selection receives
(``author_standing_from``, as ``node/feedback.py``), and the selection an agent's task runs
(``agents.candidates_for`` + ``select``). Modelled: verdict records do not travel as gossip
messages here; a verdict cast in one round reaches every honest node by the next
recomputation (the real node gossips it on its own topic and recomputes every
``trust.recompute_s`` = 30 s), and each node's trust is computed from its own roots. The
verdict rule of an honest agent: helpful on the relevant lesson of its task when it was given,
harmful on every poison lesson given, nothing on other lessons. Adversarial identities vote a
helpful ring among themselves and harmful on honest authors, all at the first round.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

import numpy as np

from zoonode.config import TrustConfig
from zoonode.selection import select
from zoonode.sim.agents import candidates_for, settings_for, standings
from zoonode.sim.scenario import Scenario
from zoonode.sim.workload import Workload
from zoonode.trust import (
    TrustResult,
    TrustSettings,
    VoteTable,
    compute_trust_many,
)

TRUST = TrustConfig()  # what a node runs with unless its operator changes it
HELD_CACHE = 8  # distinct record sets whose stacked vectors are kept


@dataclass
class _Votes(VoteTable):
    """A vote table built once per round and shared by every node's computation: its arrays
    are made once (every identity numbered beforehand, so ``compute_trust`` adds none)."""

    _cached: tuple | None = None

    def arrays(self):
        if self._cached is None:
            self._cached = super().arrays()
        return self._cached


@dataclass
class FeedbackLoop:
    scenario: Scenario
    workload: Workload
    rng: random.Random
    # (voter, record id) -> (voter, author, verdict): one standing verdict per voter and target
    votes: dict[tuple[bytes, bytes], tuple[bytes, bytes, int]] = field(default_factory=dict)
    trust: dict[int, TrustResult] = field(default_factory=dict)  # honest node -> its trust
    rounds: list[dict] = field(default_factory=list)
    attackers_voted: bool = False
    joined_at: dict[int, float] = field(default_factory=dict)  # newcomer node -> join time
    _held_cache: dict[int, tuple] = field(default_factory=dict)

    def __post_init__(self) -> None:
        wl = self.workload
        self.settings = dataclasses.replace(
            settings_for(self.scenario.history, self.scenario.workload.k),
            vouched_alone=self.scenario.feedback.vouched_alone,
        )
        self.time_standing = standings(wl, self.scenario.history)
        self.newcomer_authors = [wl.identities[i].author for i in wl.newcomers]
        everyone = sorted({r.experience.author for rs in wl.honest.values() for r in rs})
        self.honest_authors = [a for a in everyone if a not in self.newcomer_authors]
        self.bad = wl.adversarial_authors
        self.authors = everyone + sorted(self.bad)
        # A newcomer's lessons are first accepted when it joins: time known ~0 for the run.
        self.time_standing = self.time_standing | {a: 0.0 for a in self.newcomer_authors}
        self._time_array = np.array([self.time_standing.get(a, 0.0) for a in self.authors])
        # The first newcomer is an operator-trusted author (a root) at the introducers:
        # honest nodes drawn at random, never the watched query nodes nor a newcomer.
        n_h, fb = self.scenario.nodes.honest, self.scenario.feedback
        pool = range(self.scenario.workload.query_nodes, n_h - len(wl.newcomers))
        self.introducers: set[int] = set()
        if wl.newcomers and fb.introducers:
            draw = random.Random(self.scenario.seed + 3)
            self.introducers = set(draw.sample(pool, min(fb.introducers, len(pool))))
        self.trust_settings = TrustSettings(
            damping=TRUST.damping,
            established_mass=TRUST.established_mass,
            established_voters=TRUST.established_voters,
            voters_min_standing=TRUST.voters_min_standing,
        )
        self.use_trust = self.scenario.feedback.standing == "trust"

    # -- standing ----------------------------------------------------------------------------
    def standing_map(self, node: int) -> dict[bytes, float]:
        """author -> the standing node ``node``'s selection receives (``Feedback.standing``):
        ``author_standing_from(trust, time known)`` per author, over arrays."""
        roots = self.roots_of(node)
        result = self.trust.get(node) if self.use_trust else None
        if result is None:  # time known alone, or no recomputation yet (trust 0, not ready)
            if len(roots) == 1:
                return self.time_standing
            out = dict(self.time_standing)
        else:
            # ``_recompute`` numbers self.authors first, in order, in every round's table.
            n = len(self.authors)
            assert result.identities[n - 1] == self.authors[-1]
            ready = result.root_endorsements >= TRUST.min_endorsements
            trust = result.standings()[:n]
            time = self._time_array
            values = np.maximum(trust, TRUST.unendorsed_cap * time if ready else time)
            out = dict(zip(self.authors, values.tolist(), strict=True))
        for root in roots:
            out[root] = 1.0  # its own identity and its operator's trusted authors
        return out

    def roots_of(self, node: int) -> list[bytes]:
        """The node's trust roots: its own identity, and the first newcomer at introducers."""
        roots = [self.workload.identities[node].author]
        if node in self.introducers:
            roots.append(self.newcomer_authors[0])
        return roots

    def acting(self, online: list[int]) -> list[int]:
        """The nodes whose agents run tasks this round: the watched query nodes (the first
        ``query_nodes`` online honest nodes) and ``agents_share`` of the others, drawn anew
        every round (1: every node)."""
        watch = online[: self.scenario.workload.query_nodes]
        others = online[len(watch) :]
        share = self.scenario.feedback.agents_share
        if share < 1.0:
            others = sorted(self.rng.sample(others, round(share * len(others))))
        return watch + others

    def joined(self, node: int, now: float) -> None:
        """A newcomer came online: its agents' task now exists."""
        self.joined_at[node] = now

    def vouched_set(self, node: int) -> set[bytes]:
        """Authors node ``node``'s trust vouches for (``TrustResult.vouched``), itself
        included."""
        roots = set(self.roots_of(node))
        result = self.trust.get(node) if self.use_trust else None
        if result is None:
            return roots
        mask = result.vouched_mask(self.scenario.feedback.vouched_standing)
        return {a for a, v in zip(result.identities, mask, strict=True) if v} | roots

    # -- one round ---------------------------------------------------------------------------
    def round(self, now: float, servable: dict[int, list], records_by_id: dict) -> None:
        """The agents of every node in ``servable`` (node -> what it may return; the watched
        query nodes first) run their tasks and vote, each node with the trust it holds from
        every verdict cast so far (trust mode); the watched nodes' trust after the round goes
        into the round's row."""
        wl, fb, k = self.workload, self.scenario.feedback, self.scenario.workload.k
        if not self.attackers_voted:
            self._attacker_votes()
        if self.use_trust:
            self._recompute(list(servable))
        # Tasks: the targets, and each newcomer's topic once it has joined.
        queries = list(zip(wl.query_vectors, wl.relevant, strict=True))
        topics = [
            (wl.newcomer_query_vectors[j], text)
            for j, (i, text) in enumerate(zip(wl.newcomers, wl.newcomer_relevant, strict=True))
            if i in self.joined_at
        ]
        shares, hits, topic_hits = [], [], []
        for node, ids in servable.items():
            voter = wl.identities[node].author
            standing = self.standing_map(node)
            vouched = self.vouched_set(node)
            held, vectors = self._held(node, ids, records_by_id)
            for _ in range(fb.tasks_per_round):
                q = self.rng.randrange(len(queries) + len(topics))
                vector, relevant = (queries + topics)[q]
                cands = candidates_for(
                    vector, held, wl, standing=standing, vouched=vouched, vectors=vectors
                )
                chosen = [s.candidate for s in select(vector, cands, self.settings).selected]
                hit = False
                for c in chosen:
                    if c.author == voter:
                        continue  # a vote on one's own lesson counts for nothing
                    if c.author in self.bad:
                        self.votes[(voter, c.id)] = (voter, c.author, -1)
                    elif records_by_id[c.id].experience.text == relevant:
                        self.votes[(voter, c.id)] = (voter, c.author, 1)
                        hit = True
                if q < len(queries):
                    shares.append(sum(c.author in self.bad for c in chosen) / k)
                    hits.append(float(hit))
                elif voter not in self.newcomer_authors:
                    topic_hits.append(float(hit))
        if self.use_trust:
            self._recompute(list(servable)[: self.scenario.workload.query_nodes])
        snapshot = self._snapshot(now, shares, hits, list(servable))
        snapshot["newcomer_topic_hit_rate"] = float(np.mean(topic_hits)) if topic_hits else None
        self.rounds.append(snapshot)

    def _held(self, node: int, ids: list, records_by_id: dict) -> tuple[list, np.ndarray | None]:
        """The node's servable records and their vectors; nodes that hold the same records
        (most, once gossip has settled) share one stacked copy (a few kept)."""
        key = hash(tuple(ids))
        cached = self._held_cache.get(key)
        if cached is None:
            held = [records_by_id[i] for i in ids if i in records_by_id]
            vectors = np.stack([self.workload.vector_of(r) for r in held]) if held else None
            cached = self._held_cache[key] = (held, vectors)
            while len(self._held_cache) > HELD_CACHE:
                del self._held_cache[next(iter(self._held_cache))]
        return cached

    def _attacker_votes(self) -> None:
        """Colluders: a helpful ring (one lesson of every other colluder) and harmful verdicts
        on one lesson of ``harmful_per_attacker`` honest authors each."""
        fb, wl = self.scenario.feedback, self.workload
        first: dict[bytes, bytes] = {}  # author -> one of its record ids
        for rs in wl.honest.values():
            for r in rs:
                first.setdefault(r.experience.author, r.id)
        for i, role in wl.roles.items():
            if role == "poison" and i in wl.attacks and wl.attacks[i]:
                first[wl.identities[i].author] = _record_id(wl.attacks[i][0])
        colluders = [wl.identities[i].author for i, role in wl.roles.items() if role == "poison"]
        for voter in colluders:
            if fb.ring:
                for other in colluders:
                    if other != voter:
                        self.votes[(voter, first[other])] = (voter, other, 1)
            n = min(fb.harmful_per_attacker, len(self.honest_authors))
            for author in self.rng.sample(self.honest_authors, n):
                self.votes[(voter, first[author])] = (voter, author, -1)
        self.attackers_voted = True

    def _recompute(self, nodes: list[int]) -> None:
        table = _Votes()
        for a in self.authors:
            table.number(a)
        for node in nodes:
            table.number(self.workload.identities[node].author)
        table.add(self.votes.values())
        results = compute_trust_many(
            table, [self.roots_of(node) for node in nodes], self.trust_settings
        )
        self.trust.update(zip(nodes, results, strict=True))

    def _snapshot(self, now: float, shares: list, hits: list, nodes: list[int]) -> dict:
        """Mean standing of honest and adversarial authors as the first query nodes see them."""
        watch = nodes[: self.scenario.workload.query_nodes]
        honest, bad, ready = [], [], []
        t_honest, t_bad = [], []
        newcomer: list[list[float]] = [[] for _ in self.newcomer_authors]
        t_newcomer: list[list[float]] = [[] for _ in self.newcomer_authors]
        for node in watch:
            m = self.standing_map(node)
            me = self.workload.identities[node].author
            others = [a for a in self.honest_authors if a != me]
            honest.append(np.mean([m.get(a, 0.0) for a in others]))
            bad.append(np.mean([m.get(a, 0.0) for a in self.bad]) if self.bad else 0.0)
            t = self.trust.get(node)
            ready.append(float(t is not None and t.root_endorsements >= TRUST.min_endorsements))
            for j, a in enumerate(self.newcomer_authors):
                newcomer[j].append(m.get(a, 0.0))
            if t is not None:  # trust alone: min(1, T / reference), before time counts
                t_honest.append(np.mean([t.standing(a) for a in others]))
                t_bad.append(np.mean([t.standing(a) for a in self.bad]) if self.bad else 0.0)
                for j, a in enumerate(self.newcomer_authors):
                    t_newcomer[j].append(t.standing(a))

        def mean(values: list) -> float | None:
            return float(np.mean(values)) if values else None

        out = {
            "t": now,
            "tasks": len(shares),
            "attack_success": float(np.mean(shares)) if shares else 0.0,
            "relevant_hit_rate": float(np.mean(hits)) if hits else 0.0,
            "votes": len(self.votes),
            "standing_honest": float(np.mean(honest)) if honest else 0.0,
            "standing_adversarial": float(np.mean(bad)) if bad else 0.0,
            "trust_ready_share": float(np.mean(ready)) if ready else 0.0,
            "trust_honest": mean(t_honest),
            "trust_adversarial": mean(t_bad),
        }
        for j, node in enumerate(self.workload.newcomers):
            joined = node in self.joined_at
            out[f"standing_newcomer_{j}"] = mean(newcomer[j]) if joined else None
            out[f"trust_newcomer_{j}"] = mean(t_newcomer[j]) if joined else None
        return out


def _record_id(wire: bytes) -> bytes:
    from zoonode.protocol import decode

    return decode(wire).id
