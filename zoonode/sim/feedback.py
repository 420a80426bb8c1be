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

import random
from dataclasses import dataclass, field

import numpy as np

from zoonode.config import TrustConfig
from zoonode.selection import select
from zoonode.sim.agents import candidates_for, settings_for, standings
from zoonode.sim.scenario import Scenario
from zoonode.sim.workload import Workload
from zoonode.trust import TrustResult, TrustSettings, VoteTable, author_standing_from, compute_trust

TRUST = TrustConfig()  # what a node runs with unless its operator changes it


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

    def __post_init__(self) -> None:
        wl = self.workload
        self.settings = settings_for(self.scenario.history, self.scenario.workload.k)
        self.time_standing = standings(wl, self.scenario.history)
        self.honest_authors = sorted({r.experience.author for rs in wl.honest.values() for r in rs})
        self.bad = wl.adversarial_authors
        self.authors = self.honest_authors + sorted(self.bad)
        self.trust_settings = TrustSettings(
            damping=TRUST.damping, established_mass=TRUST.established_mass
        )
        self.use_trust = self.scenario.feedback.standing == "trust"

    # -- standing ----------------------------------------------------------------------------
    def standing_map(self, node: int) -> dict[bytes, float]:
        """author -> the standing node ``node``'s selection receives (``Feedback.standing``)."""
        if not self.use_trust:
            return self.time_standing
        me = self.workload.identities[node].author
        result = self.trust.get(node)
        out = {}
        if result is None:  # no recomputation yet: trust 0, not ready
            out = dict(self.time_standing)
        else:
            ready = result.root_endorsements >= TRUST.min_endorsements
            values = result.standings()
            for a in self.authors:
                i = result.index.get(a)
                out[a] = author_standing_from(
                    float(values[i]) if i is not None else 0.0,
                    self.time_standing.get(a, 0.0),
                    ready=ready,
                    unendorsed_cap=TRUST.unendorsed_cap,
                )
        out[me] = 1.0  # a root
        return out

    # -- one round ---------------------------------------------------------------------------
    def round(self, now: float, servable: dict[int, list], records_by_id: dict) -> None:
        """The agents of every node in ``servable`` (node -> what it may return) run their
        tasks and vote; then every node recomputes trust (trust mode)."""
        wl, fb, k = self.workload, self.scenario.feedback, self.scenario.workload.k
        if not self.attackers_voted:
            self._attacker_votes()
        shares, hits = [], []
        for node, ids in servable.items():
            voter = wl.identities[node].author
            standing = self.standing_map(node)
            held = [records_by_id[i] for i in ids if i in records_by_id]
            for _ in range(fb.tasks_per_round):
                q = self.rng.randrange(len(wl.queries))
                cands = candidates_for(wl.query_vectors[q], held, wl, standing=standing)
                chosen = [
                    s.candidate for s in select(wl.query_vectors[q], cands, self.settings).selected
                ]
                shares.append(sum(c.author in self.bad for c in chosen) / k)
                hit = False
                for c in chosen:
                    if c.author == voter:
                        continue  # a vote on one's own lesson counts for nothing
                    if c.author in self.bad:
                        self.votes[(voter, c.id)] = (voter, c.author, -1)
                    elif records_by_id[c.id].experience.text == wl.relevant[q]:
                        self.votes[(voter, c.id)] = (voter, c.author, 1)
                        hit = True
                hits.append(float(hit))
        if self.use_trust:
            self._recompute(list(servable))
        self.rounds.append(self._snapshot(now, shares, hits, list(servable)))

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
        for node in nodes:
            root = self.workload.identities[node].author
            self.trust[node] = compute_trust(table, [root], self.trust_settings)

    def _snapshot(self, now: float, shares: list, hits: list, nodes: list[int]) -> dict:
        """Mean standing of honest and adversarial authors as the first query nodes see them."""
        watch = nodes[: self.scenario.workload.query_nodes]
        honest, bad, ready = [], [], []
        for node in watch:
            m = self.standing_map(node)
            me = self.workload.identities[node].author
            honest.append(np.mean([m.get(a, 0.0) for a in self.honest_authors if a != me]))
            bad.append(np.mean([m.get(a, 0.0) for a in self.bad]) if self.bad else 0.0)
            t = self.trust.get(node)
            ready.append(float(t is not None and t.root_endorsements >= TRUST.min_endorsements))
        return {
            "t": now,
            "tasks": len(shares),
            "attack_success": float(np.mean(shares)) if shares else 0.0,
            "relevant_hit_rate": float(np.mean(hits)) if hits else 0.0,
            "votes": len(self.votes),
            "standing_honest": float(np.mean(honest)) if honest else 0.0,
            "standing_adversarial": float(np.mean(bad)) if bad else 0.0,
            "trust_ready_share": float(np.mean(ready)) if ready else 0.0,
        }


def _record_id(wire: bytes) -> bytes:
    from zoonode.protocol import decode

    return decode(wire).id
