"""Real mode: every node a real process (``zoonode.sim.peer``) with libp2p on 127.0.0.1.

The controller builds the same workload as scale mode, starts the processes (honest nodes
dial up to 3 earlier honest nodes; attackers dial ``attacker_connections`` honest nodes, an
eclipse attacker only its victim), waits until all are ready, sends everyone the same start
time, and collects what each wrote. Bounded: every process is killed at the deadline.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from zoonode.config import SelectionConfig
from zoonode.native.encoder import Encoder
from zoonode.net.scoring import RULES
from zoonode.protocol import decode
from zoonode.sim.agents import agent_outcomes
from zoonode.sim.scenario import Scenario
from zoonode.sim.workload import build_workload

WARMUP_S = 3.0  # after "go": meshes form (heartbeat 1 s) before anyone publishes
SETTLE_S = 60.0  # at most this long past the duration for the honest records to arrive
READY_TIMEOUT_S = 180.0


def run_real(scenario: Scenario, encoder: Encoder, workdir: Path, progress=None) -> dict[str, Any]:
    from zoonode.experiences import now_ms
    from zoonode.sim.scale import attack_records

    rng = random.Random(scenario.seed)
    workload = build_workload(scenario, encoder, now_ms())
    n_h, n = scenario.nodes.honest, scenario.nodes.honest + scenario.nodes.adversarial
    if workdir.exists():
        shutil.rmtree(workdir)  # a node must not start with an earlier run's store
    workdir.mkdir(parents=True)
    procs: list[subprocess.Popen] = []
    addrs: list[str] = []
    peer_ids: list[str] = []
    queriers = set(range(min(scenario.workload.query_nodes, n_h)))
    victim = scenario.attack.eclipse_victim % n_h
    selection = history_overrides(scenario, workload)
    expected_ids = sorted(r.id.hex() for rs in workload.honest.values() for r in rs)
    try:
        for i in range(n):
            role = workload.roles.get(i)
            if role is None:
                bootstrap = rng.sample(addrs, min(3, len(addrs)))
                records = workload.honest[i]
                wires = [r.wire.hex() for r in records]
            else:
                honest_addrs = addrs[:n_h]
                if role == "eclipse":
                    bootstrap = [honest_addrs[victim]]
                else:
                    k = min(scenario.topology.attacker_connections, n_h)
                    bootstrap = rng.sample(honest_addrs, k)
                records = []
                wires = [w.hex() for w in workload.attacks.get(i, [])]
            spec = {
                "data_dir": str(workdir / f"node{i}"),
                "bootstrap": bootstrap,
                "role": role,
                "wires": wires,
                "ids": [r.id.hex() for r in records],
                "publish_at": WARMUP_S
                + rng.random() * min(scenario.workload.publish_window_s, scenario.duration_s / 2),
                "duration_s": WARMUP_S + scenario.duration_s,
                # Honest nodes wait up to SETTLE_S more for these ids: on a loaded machine
                # the processes lag, and delivery (not the clock) is what is measured.
                "expect": expected_ids if role is None else [],
                "settle_s": SETTLE_S,
                "rate": scenario.attack.spam_rate if role == "spam" else 50.0,
                "queries": workload.queries if i in queriers else [],
                "k": scenario.workload.k,
                "out": str(workdir / f"node{i}.json"),
                "selection": selection,
            }
            spec_path = workdir / f"node{i}.spec.json"
            spec_path.write_text(json.dumps(spec))
            proc = subprocess.Popen(
                [sys.executable, "-m", "zoonode.sim.peer", str(spec_path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=open(workdir / f"node{i}.log", "w"),  # noqa: SIM115 - closed with proc
                text=True,
                cwd=workdir,
            )
            procs.append(proc)
            ready = _ready_line(proc)
            addrs.append(ready["addr"])
            peer_ids.append(ready["peer_id"])
            if progress:
                progress(0.5 * (i + 1) / n)
        t0 = time.time() + 1.0
        for proc in procs:
            proc.stdin.write(f"go {t0}\n")
            proc.stdin.flush()
        deadline = t0 + WARMUP_S + scenario.duration_s + SETTLE_S + 120
        for i, proc in enumerate(procs):
            proc.wait(timeout=max(1.0, deadline - time.time()))
            if progress:
                progress(0.5 + 0.5 * (i + 1) / n)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    results = [json.loads((workdir / f"node{i}.json").read_text()) for i in range(n)]
    return _raw(scenario, workload, results, peer_ids, attack_records(decode, workload))


def history_overrides(scenario: Scenario, workload) -> dict[str, Any]:
    """Real processes start with no history, so an age of at least the maturity is given to
    them as what it amounts to: those authors trusted (standing 1) and, once the node knows
    its peers that long, no newcomer answering alone. ``parse_scenario`` refuses ages between."""
    defaults = SelectionConfig()
    trusted: list[str] = []
    overrides: dict[str, Any] = {}
    if scenario.history.honest_age_days >= defaults.maturity_days:
        trusted += sorted(
            {r.experience.author.hex() for rs in workload.honest.values() for r in rs}
        )
        if defaults.newcomers_alone == "bootstrap":
            overrides["newcomers_alone"] = "never"
    if scenario.history.attacker_age_days >= defaults.maturity_days:
        trusted += sorted(a.hex() for a in workload.adversarial_authors)
    if trusted:
        overrides["trusted_authors"] = trusted
    return overrides


def _ready_line(proc: subprocess.Popen) -> dict:
    start = time.monotonic()
    for line in proc.stdout:
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "ready":
                return event
        if time.monotonic() - start > READY_TIMEOUT_S:
            break
    raise RuntimeError(f"a simulated node did not start (exit {proc.poll()}); see its log")


def _raw(scenario, workload, results, peer_ids, bad_records) -> dict[str, Any]:
    n_h = scenario.nodes.honest
    honest = range(n_h)
    published, publisher_of = {}, {}
    for i in honest:
        for rid, t in results[i]["published"].items():
            published[bytes.fromhex(rid)] = t
            publisher_of[bytes.fromhex(rid)] = i
    holdings = {i: {bytes.fromhex(rid): t for rid, t in results[i]["held"].items()} for i in honest}
    rejected: Counter = Counter()
    for i in honest:
        for name, count in results[i]["verdicts"].items():
            verdict, _, reason = name.partition(":")
            if verdict != "accept":
                rejected[reason] += count
        for name, count in results[i]["counters"].items():
            if name.startswith("reject:"):
                rejected[name.split(":", 1)[1]] += count
    attackers = list(range(n_h, len(results)))
    attacker_ids = {peer_ids[a]: a for a in attackers}
    excluded_at: dict[int, float] = {}
    graylisted_at: dict[int, float] = {}
    series: dict[float, list[float]] = {}
    for i in honest:
        for t, scores in results[i]["scores"]:
            for pid, score in scores.items():
                if pid in attacker_ids and score is not None:
                    series.setdefault(round(t), []).append(score)
                    # The node reports the combined score (P6 included); the library's
                    # publish gate reads the topic score, which our flood rule moves with P6.
                    a = attacker_ids[pid]
                    if score < RULES.publish_threshold:  # its messages now dropped unread
                        excluded_at[a] = min(excluded_at.get(a, t), t)
                    if score < RULES.graylist_threshold:
                        graylisted_at[a] = min(graylisted_at.get(a, t), t)
    # Agents: the real nodes' own answers (Node.query) for the defended side; the same
    # undefended baseline as scale mode.
    bad_authors = {a.hex() for a in workload.adversarial_authors}
    slots, hits = [], []
    for i in honest:
        for answer, relevant in zip(results[i]["answers"], workload.relevant, strict=False):
            k = scenario.workload.k
            slots.append(sum(author in bad_authors for _, author in answer) / k)
            hits.append(float(_any_copy(workload, relevant, {rid for rid, _ in answer})))
    records_by_id = {r.id: r for rs in workload.honest.values() for r in rs}
    records_by_id |= {r.id: r for r in bad_records}
    queriers = {i: list(holdings[i]) for i in honest if results[i]["answers"]}
    baseline = agent_outcomes(
        workload, queriers, records_by_id, scenario.workload.k, attack_records=bad_records
    )
    agents = {
        "defended": sum(slots) / len(slots) if slots else 0.0,
        "hit_defended": sum(hits) / len(hits) if hits else 0.0,
        "undefended": baseline["undefended"],
        "hit_undefended": baseline["hit_undefended"],
        "queries": len(slots),
        "query_nodes": len(queriers),
    }
    return {
        "mode": "real",
        "nodes": len(results),
        "published": published,
        "publisher_of": publisher_of,
        "holdings": holdings,
        "rejected": rejected,
        "bytes_sent": [],  # not measured per node in real mode (benchmarks/network.py does)
        "excluded_at": excluded_at,
        "graylisted_at": graylisted_at,
        "attackers": attackers,
        "attacker_scores": sorted((t, sum(v) / len(v)) for t, v in series.items()),
        "rejoined": {},
        "agents": agents,
        "forged_ids": workload.forged_ids,
        "warmup_s": WARMUP_S,
    }


def _any_copy(workload, relevant_text: str, chosen: set[str]) -> bool:
    """The relevant lesson may be held in several honest copies (one per publisher)."""
    return any(
        r.id.hex() in chosen
        for rs in workload.honest.values()
        for r in rs
        if r.experience.text == relevant_text
    )
