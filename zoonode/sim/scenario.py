"""Scenario files (TOML): who runs, over which network, doing what, for how long.

Typed like the node's config: unknown keys and wrong types are errors that name the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoonode.config import ConfigError, SelectionConfig, build_dataclass

ROLES = (
    "poison",  # PoisonedRAG-style: valid, signed, near the target queries, wrong advice
    "sybil",  # like poison, one fresh identity per record, near-duplicates of one text
    "forger",  # records with broken signatures
    "replay",  # old records (beyond the horizon) and re-sent known ones
    "wrong_space",  # records signed for another space
    "malformed",  # oversize and malformed gossip messages
    "spam",  # one author publishing far over the normal rate
    "hijack",  # a popular query's vector attached to unrelated text
    "eclipse",  # connect only to one victim, forward nothing
)


@dataclass(frozen=True)
class Nodes:
    honest: int = 10
    adversarial: int = 0
    roles: list[str] = field(default_factory=lambda: ["poison"])  # split evenly


@dataclass(frozen=True)
class Topology:
    degree: int = 6  # GossipSub mesh degree D
    degree_high: int = 12  # D_hi: a mesh grown past this by GRAFTs is pruned back to D
    connections: int = 12  # peers each honest node dials at random
    attacker_connections: int = 12  # honest peers each adversary dials
    latency_ms: float = 20.0  # median one-way link latency (scale mode)
    jitter: float = 0.5  # lognormal sigma of link latency
    bandwidth_mbps: float = 100.0  # per-node uplink (scale mode)
    heartbeat_s: float = 1.0
    lazy_degree: int = 6  # peers sent IHAVE per heartbeat


@dataclass(frozen=True)
class Workload:
    lessons_per_node: int = 2  # honest experiences each honest node publishes
    publish_window_s: float = 10.0  # spread over this window after warm-up
    targets: int = 10  # target queries (from the shipped list)
    query_nodes: int = 10  # honest nodes whose agents ask every target query
    k: int = 5


@dataclass(frozen=True)
class Attack:
    poison_per_target: int = 5  # crafted texts per target (poison and sybil)
    records_per_attacker: int = 5  # bad records each forger/replay/wrong_space/hijack sends
    spam_records: int = 400  # records the spammer publishes
    spam_rate: float = 200.0  # per second
    eclipse_victim: int = 0  # index of the honest node eclipse attackers surround
    # poison and sybil records per gossip message (1: each judged on its own); more keeps a
    # large run's message count (and wall time) down
    records_per_message: int = 1


@dataclass(frozen=True)
class Churn:
    share: float = 0.0  # honest nodes that leave ...
    leave_s: float = 5.0  # ... at this time (after warm-up) ...
    rejoin_s: float = 20.0  # ... and come back, then sync


@dataclass(frozen=True)
class Ingest:
    """Two-stage ingest (scale mode): a record that passes the cheap checks is stored pending
    at once and forwarded; each node re-encodes pending texts at ``check_rate`` records/s, in
    batches of ``check_batch``, and only then promotes, or rejects and bans. The default rate
    is what one node's encoder checks on 2 cores (benchmarks/ingest.py)."""

    check_rate: float = 50.0
    check_batch: int = 16
    max_pending: int = 100_000
    max_pending_per_author: int = 10_000


@dataclass(frozen=True)
class History:
    """How long, when the run starts, the honest nodes have known each other's authors and the
    attacking identities: what a node's standing (selection.maturity_days) is measured from."""

    honest_age_days: float = 7.0  # an established network: honest authors at standing 1
    attacker_age_days: float = 0.0  # fresh identities; >= the maturity makes them sleepers


@dataclass(frozen=True)
class Feedback:
    """The loop from use to trust (scale mode only; docs/trust.md). Every ``round_s`` the
    agents of every online honest node run ``tasks_per_round`` target queries through the
    node's selection and report verdicts signed by the node: helpful on the relevant lesson
    when it was given, harmful on every poison lesson given. Adversarial ``poison`` identities
    vote helpful on one lesson of each other (a ring, ``ring``) and harmful on one lesson of
    each of ``harmful_per_attacker`` honest authors. After the agents' round every honest node
    recomputes its personalised trust (``zoonode.trust.compute_trust``, its own identity as
    root) from the verdicts cast so far, and its selection's standing is
    ``author_standing_from(trust, time known)`` as a node's (``standing = "trust"``), or time
    known alone (``"time"``: the node before issue 24). ``compare_time_only`` adds a run with
    ``"time"``."""

    enabled: bool = False
    standing: str = "trust"  # trust | time
    compare_time_only: bool = False
    start_s: float = 5.0  # first round, after warm-up
    round_s: float = 5.0
    tasks_per_round: int = 1
    # share of the online honest nodes (besides the watched query nodes) whose agents run
    # tasks in a round, drawn every round (scale mode; 1: all)
    agents_share: float = 1.0
    ring: bool = True
    harmful_per_attacker: int = 100
    # trust.vouched_alone: where no established author answers, authors a node's trust
    # vouches for answer too (the node's default; false: as before it existed)
    vouched_alone: bool = True
    vouched_standing: float = 0.2  # trust.vouched_standing
    # Honest newcomers: the last ``newcomers`` honest nodes (at most 2) are offline until
    # ``newcomer_join_s`` after warm-up, then sync, publish one lesson on a topic nobody
    # covers (their own target query, asked by agents from then on) and take part. The
    # first newcomer is in ``selection.trusted_authors`` of ``introducers`` honest nodes (an
    # operator vouching for a partner); the others are introduced by nobody.
    # Real mode: the nodes' trust.recompute_s (a node's default is 30 s)
    recompute_s: float = 30.0
    newcomers: int = 0
    newcomer_join_s: float = 20.0
    introducers: int = 0


@dataclass(frozen=True)
class Scenario:
    name: str = "scenario"
    description: str = ""
    mode: str = "scale"  # scale | real | both
    seed: int = 1
    duration_s: float = 30.0  # simulated (scale) or wall-clock (real) seconds after warm-up
    nodes: Nodes = field(default_factory=Nodes)
    topology: Topology = field(default_factory=Topology)
    workload: Workload = field(default_factory=Workload)
    attack: Attack = field(default_factory=Attack)
    churn: Churn = field(default_factory=Churn)
    ingest: Ingest = field(default_factory=Ingest)
    history: History = field(default_factory=History)
    feedback: Feedback = field(default_factory=Feedback)
    sweep_adversarial: list[int] = field(default_factory=list)  # extra runs (scale mode)

    def to_dict(self) -> dict[str, Any]:
        import dataclasses

        return dataclasses.asdict(self)


def parse_scenario(text: str, source: str = "scenario") -> Scenario:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    scenario = build_dataclass(Scenario, raw, "")
    if scenario.mode not in ("scale", "real", "both"):
        raise ConfigError(f"{source}: mode must be scale, real or both, got {scenario.mode!r}")
    unknown = set(scenario.nodes.roles) - set(ROLES)
    if unknown:
        raise ConfigError(f"{source}: unknown roles {sorted(unknown)}; known: {list(ROLES)}")
    if scenario.nodes.honest < 2:
        raise ConfigError(f"{source}: nodes.honest must be at least 2")
    if scenario.nodes.adversarial and not scenario.nodes.roles:
        raise ConfigError(f"{source}: adversarial nodes need at least one role")
    if scenario.ingest.check_rate <= 0 or scenario.ingest.check_batch < 1:
        raise ConfigError(f"{source}: ingest.check_rate must be > 0 and check_batch >= 1")
    if scenario.history.honest_age_days < 0 or scenario.history.attacker_age_days < 0:
        raise ConfigError(f"{source}: history ages must not be negative")
    fb = scenario.feedback
    if fb.standing not in ("trust", "time"):
        raise ConfigError(f"{source}: feedback.standing must be trust or time, got {fb.standing!r}")
    if (
        fb.round_s <= 0
        or fb.start_s < 0
        or fb.tasks_per_round < 1
        or fb.harmful_per_attacker < 0
        or fb.recompute_s <= 0
        or not 0.0 < fb.agents_share <= 1.0
    ):
        raise ConfigError(
            f"{source}: feedback.round_s and recompute_s must be > 0, start_s >= 0, "
            "tasks_per_round >= 1, harmful_per_attacker >= 0 and agents_share in (0, 1]"
        )
    if not 0 <= fb.newcomers <= 2 or fb.introducers < 0 or fb.newcomer_join_s < 0:
        raise ConfigError(
            f"{source}: feedback.newcomers must be 0, 1 or 2, introducers and newcomer_join_s >= 0"
        )
    if fb.newcomers + fb.introducers >= scenario.nodes.honest:
        raise ConfigError(f"{source}: feedback.newcomers + introducers must be < nodes.honest")
    if scenario.attack.records_per_message < 1:
        raise ConfigError(f"{source}: attack.records_per_message must be at least 1")
    if fb.enabled and scenario.mode == "both":
        raise ConfigError(f"{source}: feedback.enabled runs in scale or real mode, not both")
    if fb.enabled and scenario.mode == "real" and (fb.newcomers or fb.introducers):
        raise ConfigError(f"{source}: feedback.newcomers run in scale mode only")
    if scenario.mode in ("real", "both"):
        maturity = SelectionConfig().maturity_days
        for key in ("honest_age_days", "attacker_age_days"):
            age = getattr(scenario.history, key)
            if 0 < age < maturity:
                raise ConfigError(
                    f"{source}: history.{key} = {age}: real mode runs on real clocks and can "
                    f"model only 0 or at least the maturity ({maturity} days)"
                )
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read scenario {path}: {exc}") from exc
    return parse_scenario(text, str(path))
