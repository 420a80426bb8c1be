"""Peer-scoring rules: one set of numbers for the real GossipSub router and the simulator.

``ScoreRules`` holds the weights and thresholds; ``gossip.score_params`` hands them to
py-libp2p's scorer, and ``PeerScores`` applies the same formula (py-libp2p 0.8.1's: linear,
capped counters, multiplicative decay per heartbeat, P6 times its weight) so that the scale
simulation graylists a peer after the same number of invalid messages as a real node.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ScoreRules:
    p1_weight: float = 0.01  # time in mesh (heartbeats), capped
    p1_cap: float = 10.0
    p1_decay: float = 0.99
    p2_weight: float = 0.1  # first deliveries of valid messages, capped
    p2_cap: float = 20.0
    p2_decay: float = 0.95
    p4_weight: float = 10.0  # invalid messages: 8 take a fresh peer under the graylist
    p4_cap: float = 100.0
    p4_decay: float = 0.999
    p6_weight: float = 10.0  # application score: minus the flood excess (msgs/s over rate)
    publish_threshold: float = -50.0
    gossip_threshold: float = -20.0
    graylist_threshold: float = -80.0


RULES = ScoreRules()


@dataclass
class PeerScores:
    """One node's scores of its peers (pure state; the caller drives heartbeats)."""

    rules: ScoreRules = RULES
    mesh_time: dict = field(default_factory=lambda: defaultdict(float))
    first: dict = field(default_factory=lambda: defaultdict(float))
    invalid: dict = field(default_factory=lambda: defaultdict(float))
    app: dict = field(default_factory=lambda: defaultdict(float))

    def first_delivery(self, peer: object) -> None:
        self.first[peer] += 1

    def invalid_message(self, peer: object) -> None:
        self.invalid[peer] += 1

    def set_flood_excess(self, peer: object, excess: float) -> None:
        self.app[peer] = -max(0.0, excess)

    def heartbeat(self, mesh: set) -> None:
        r = self.rules
        for peer in mesh:
            self.mesh_time[peer] += 1
        for counters, decay in (
            (self.mesh_time, r.p1_decay),
            (self.first, r.p2_decay),
            (self.invalid, r.p4_decay),
        ):
            for peer in counters:
                counters[peer] *= decay

    def topic_score(self, peer: object) -> float:
        r = self.rules
        return (
            r.p1_weight * min(self.mesh_time.get(peer, 0.0), r.p1_cap)
            + r.p2_weight * min(self.first.get(peer, 0.0), r.p2_cap)
            - r.p4_weight * min(self.invalid.get(peer, 0.0), r.p4_cap)
        )

    def score(self, peer: object) -> float:
        return self.topic_score(peer) + self.rules.p6_weight * self.app.get(peer, 0.0)

    def graylisted(self, peer: object) -> bool:
        """Under the graylist: pruned from the mesh, no GRAFT, no gossip to it."""
        return self.score(peer) < self.rules.graylist_threshold

    def excluded(self, peer: object) -> bool:
        """Under the publish threshold: py-libp2p drops the peer's messages unread (before
        validation). Its single-topic gate reads the topic score only (P1, P2, P4: not P6),
        and a graylisted peer's messages are still read, so this, not the graylist, is where
        an attacker is cut off."""
        return self.topic_score(peer) < self.rules.publish_threshold
