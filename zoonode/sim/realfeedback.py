"""Real mode with the loop from use to trust (issue 24): real ``zoonode start`` processes
whose agents use lessons through the HTTP API and report verdicts through
``POST /v1/experiences/{id}/feedback``; trust forms from the verdicts the nodes gossip and sync.

- **Honest nodes** are ``zoonode start`` processes (libp2p on 127.0.0.1, HTTP API on a free
  port, ``trust.recompute_s`` from the scenario), each with the workload identity of its node
  written as its ``identity.pem``, so that its lessons and its agents' verdicts share one key,
  as on a real node. They ingest their pre-signed lessons through ``POST /v1/records``.
- **History** (``[history]``): real processes start with no past, so the controller writes
  it where a node keeps it, its ``authors`` table (when the node first accepted each author's
  lesson), before the node starts: honest authors and attackers aged by ``honest_age_days``
  and ``attacker_age_days``. Sleepers are then aged exactly as a node that has known them for
  a week sees them (no ``trusted_authors``: those would be trust roots).
- **Sleepers** (role ``poison``) are ``zoonode.sim.peer`` processes: they publish their
  query-worded poison straight onto the topic, forward nothing they did not make, and publish
  their verdicts, signed by their own keys, on the feedback topic: a helpful ring (one poison
  lesson of every other colluder) and harmful on ``harmful_per_attacker`` honest authors.
- **Agents**: every ``round_s`` the agents of every honest node run ``tasks_per_round`` target
  queries through ``POST /v1/query`` and report, through the API, helpful on the relevant
  lesson when they were given it and harmful on every poison lesson given (never on their own
  node's lesson). The per-round table gives attack success and relevant hits of those tasks.
  After each round the controller reads each watched node's feedback table (read-only) and
  computes, with the node's own pure code, the trust that node holds (its identity as root):
  standing and trust of honest authors and sleepers over time.

The time-only comparison runs the same network with ``trust.min_endorsements`` out of reach:
trust is never ready, so standing is time known alone (zoonode before issue 24).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization

from zoonode.client import Client, ClientError
from zoonode.config import TrustConfig
from zoonode.identity import IDENTITY_FILE
from zoonode.knowledge import DB_FILE
from zoonode.native.encoder import Encoder
from zoonode.net.scoring import RULES
from zoonode.protocol import Feedback as FeedbackBody
from zoonode.protocol import FeedbackVerdict, decode, sign_feedback
from zoonode.sim.agents import agent_outcomes
from zoonode.sim.scenario import Scenario
from zoonode.sim.workload import Workload, build_workload
from zoonode.store import Store
from zoonode.trust import TrustSettings, VoteTable, author_standing_from, compute_trust

WARMUP_S = 3.0
READY_TIMEOUT_S = 240.0
DELIVERY_TIMEOUT_S = 120.0  # at most this long for every honest node to hold every record
WAVE = 4  # node processes started at once (each loads the encoder)
DAY_MS = 86_400_000
NEVER_READY = 1_000_000  # trust.min_endorsements of the time-only comparison


def zoonode_command() -> list[str]:
    """The ``zoonode`` console script next to this interpreter, else the module's app."""
    script = Path(sys.executable).with_name("zoonode")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from zoonode.cli import app; app()"]


def write_identity(data_dir: Path, key) -> None:
    """The node's identity file (0600), holding the workload identity's key."""
    data_dir.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(data_dir / IDENTITY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def write_history(data_dir: Path, space: bytes, first_seen: dict[bytes, int]) -> None:
    """When the node first accepted each author's lesson (its ``authors`` table, what time
    known is measured from), written before the node starts."""
    store = Store(data_dir / DB_FILE, space)
    try:
        store.db.executemany(
            "INSERT OR IGNORE INTO authors VALUES (?, ?)", sorted(first_seen.items())
        )
    finally:
        store.close()


def history_of(scenario: Scenario, workload: Workload, now_ms: int) -> dict[bytes, int]:
    """author -> first acceptance (ms), for every author whose age is not 0."""
    h = scenario.history
    out: dict[bytes, int] = {}
    if h.honest_age_days > 0:
        for rs in workload.honest.values():
            for r in rs:
                out[r.experience.author] = now_ms - int(h.honest_age_days * DAY_MS)
    if h.attacker_age_days > 0:
        for a in workload.adversarial_authors:
            out[a] = now_ms - int(h.attacker_age_days * DAY_MS)
    return out


def node_config(
    data_dir: Path, bootstrap: list[str], recompute_s: float, min_endorsements: int
) -> str:
    return "\n".join(
        [
            "[node]",
            f"data_dir = {json.dumps(str(data_dir))}",
            'log_level = "warning"',
            "[network]",
            'listen = ["/ip4/127.0.0.1/tcp/0"]',
            f"bootstrap = {json.dumps(bootstrap)}",
            "[api]",
            'listen = "127.0.0.1:0"',
            "mcp = false",
            "[trust]",
            f"recompute_s = {recompute_s}",
            f"min_endorsements = {min_endorsements}",
            "",
        ]
    )


def _started(out_path: Path, proc: subprocess.Popen) -> tuple[str, str]:
    """(p2p address, API url) from what ``zoonode start`` prints."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        addr = url = None
        for line in out_path.read_text().splitlines():
            line = line.strip()
            if line.startswith("listening on "):
                addr = line.split()[-1]
            elif line.startswith("HTTP API "):
                url = line.split()[2]
        if addr and url:
            return addr, url
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"a zoonode start process did not come up (exit {proc.poll()}); see its log")


def attacker_votes(scenario: Scenario, workload: Workload, space: bytes, stamp: int) -> dict:
    """adversarial node -> its signed verdicts (hex wires): a helpful ring on one poison
    lesson of every other colluder, harmful on one lesson of each of harmful_per_attacker
    honest authors."""
    fb = scenario.feedback
    rng = random.Random(scenario.seed + 7)
    first: dict[bytes, bytes] = {}
    for rs in workload.honest.values():
        for r in rs:
            first.setdefault(r.experience.author, r.id)
    honest = sorted(first)
    colluders = [
        i for i, role in workload.roles.items() if role == "poison" and workload.attacks[i]
    ]
    for i in colluders:
        first[workload.identities[i].author] = decode(workload.attacks[i][0]).id
    out: dict[int, list[str]] = {}
    for i in colluders:
        me = workload.identities[i]
        rows = []
        if fb.ring:
            rows += [
                (first[workload.identities[j].author], FeedbackVerdict.HELPFUL)
                for j in colluders
                if j != i
            ]
        for author in rng.sample(honest, min(fb.harmful_per_attacker, len(honest))):
            rows.append((first[author], FeedbackVerdict.HARMFUL))
        out[i] = [
            sign_feedback(
                FeedbackBody(me.author, space, stamp, target, verdict, None), me.key
            ).wire.hex()
            for target, verdict in rows
        ]
    return out


def gossip_refusals(metrics: str) -> Counter:
    """Records (experiences and verdicts) a node's gossip validator did not accept, by
    reason, and the node's reject events, from its ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Counter = Counter()
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            labels = sample.labels
            if family.name in ("zoonode_gossip_records", "zoonode_gossip_feedback_records"):
                if sample.name.endswith("_total") and labels.get("verdict") != "accept":
                    prefix = "feedback " if "feedback" in family.name else ""
                    out[prefix + labels.get("reason", "")] += int(sample.value)
            elif family.name == "zoonode_events" and labels.get("kind") == "reject":
                out[labels.get("reason", "")] += int(sample.value)
    return out


def node_trust(db_path: Path, root: bytes, authors: dict[str, list[bytes]]) -> dict[str, Any]:
    """The trust a node holds, from its own feedback table (read-only) and the node's pure
    code: mean trust standing and standing (time known 1: everyone aged) per group."""
    cfg = TrustConfig()
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        rows = con.execute(
            "SELECT f.voter, r.author, f.verdict FROM feedback f "
            "JOIN records r ON r.id = f.target WHERE f.verdict != 0"
        ).fetchall()
    finally:
        con.close()
    table = VoteTable()
    table.add(rows)
    settings = TrustSettings(
        damping=cfg.damping,
        established_mass=cfg.established_mass,
        established_voters=cfg.established_voters,
        voters_min_standing=cfg.voters_min_standing,
    )
    result = compute_trust(table, [root], settings)
    ready = result.root_endorsements >= cfg.min_endorsements
    out: dict[str, Any] = {"ready": ready, "votes": result.votes}
    for group, keys in authors.items():
        keys = [k for k in keys if k != root]
        trust = [result.standing(k) for k in keys]
        out[f"trust_{group}"] = float(np.mean(trust)) if trust else None
        out[f"standing_{group}"] = (
            float(
                np.mean(
                    [
                        author_standing_from(t, 1.0, ready=ready, unendorsed_cap=cfg.unendorsed_cap)
                        for t in trust
                    ]
                )
            )
            if trust
            else None
        )
    return out


def run_real_feedback(
    scenario: Scenario, encoder: Encoder, workdir: Path, progress=None
) -> dict[str, Any]:
    """One real-mode run with the feedback loop; returns the raw outcome for ``summarise``."""
    from zoonode.experiences import now_ms
    from zoonode.sim.scale import attack_records

    fb = scenario.feedback
    rng = random.Random(scenario.seed)
    agents_rng = random.Random(scenario.seed + 1)
    start_ms = now_ms()
    workload = build_workload(scenario, encoder, start_ms)
    n_h, n = scenario.nodes.honest, scenario.nodes.honest + scenario.nodes.adversarial
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    history = history_of(scenario, workload, start_ms)
    min_endorsements = TrustConfig().min_endorsements if fb.standing == "trust" else NEVER_READY
    recompute_s = fb.recompute_s
    procs: dict[int, subprocess.Popen] = {}
    addrs: dict[int, str] = {}
    clients: dict[int, Client] = {}
    bad = workload.adversarial_authors
    honest_authors = sorted({r.experience.author for rs in workload.honest.values() for r in rs})
    groups = {"honest": honest_authors, "adversarial": sorted(bad)}
    t_start = time.monotonic()
    try:
        # Honest nodes: zoonode start, in waves (each loads the encoder).
        order = list(range(n_h))
        waves = [order[:1]] + [order[i : i + WAVE] for i in range(1, n_h, WAVE)]
        for wave in waves:
            earlier = list(addrs.values())
            started = []
            for i in wave:
                data_dir = workdir / f"node{i}"
                write_identity(data_dir, workload.identities[i].key)
                write_history(data_dir, encoder.space, history)
                cfg_path = workdir / f"node{i}.toml"
                bootstrap = rng.sample(earlier, min(3, len(earlier)))
                cfg_path.write_text(node_config(data_dir, bootstrap, recompute_s, min_endorsements))
                out_path = workdir / f"node{i}.out"
                proc = subprocess.Popen(
                    [*zoonode_command(), "start", "--config", str(cfg_path)],
                    stdout=open(out_path, "w"),  # noqa: SIM115 - closed with the process
                    stderr=open(workdir / f"node{i}.log", "w"),  # noqa: SIM115
                    stdin=subprocess.DEVNULL,
                    cwd=workdir,
                )
                procs[i] = proc
                started.append((i, out_path, proc))
            for i, out_path, proc in started:
                addrs[i], url = _started(out_path, proc)
                token = (workdir / f"node{i}" / "api.token").read_text().strip()
                clients[i] = Client(url, token, timeout=120.0)
            if progress:
                progress(0.3 * len(addrs) / n)
        # Sleepers: sim.peer processes with the workload's keys.
        stamp = now_ms()
        votes = attacker_votes(scenario, workload, encoder.space, stamp)
        honest_addrs = [addrs[i] for i in range(n_h)]
        attackers: dict[int, subprocess.Popen] = {}
        for i in range(n_h, n):
            data_dir = workdir / f"node{i}"
            write_identity(data_dir, workload.identities[i].key)
            k = min(scenario.topology.attacker_connections, n_h)
            spec = {
                "data_dir": str(data_dir),
                "bootstrap": rng.sample(honest_addrs, k),
                "role": workload.roles.get(i),
                "wires": [w.hex() for w in workload.attacks.get(i, [])],
                "ids": [],
                "publish_at": WARMUP_S + rng.random() * scenario.workload.publish_window_s,
                "feedback": votes.get(i, []),
                "import": True,
                "duration_s": 24 * 3600.0,  # until the controller stops it
                "expect": [],
                "rate": 50.0,
                "queries": [],
                "k": scenario.workload.k,
                "out": str(workdir / f"node{i}.json"),
            }
            spec_path = workdir / f"node{i}.spec.json"
            spec_path.write_text(json.dumps(spec))
            attackers[i] = subprocess.Popen(
                [sys.executable, "-m", "zoonode.sim.peer", str(spec_path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=open(workdir / f"node{i}.log", "w"),  # noqa: SIM115
                text=True,
                cwd=workdir,
            )
            procs[i] = attackers[i]
        from zoonode.sim.real import _ready_line

        attacker_peer: dict[str, int] = {}
        for i, proc in attackers.items():
            attacker_peer[_ready_line(proc)["peer_id"]] = i
            if progress:
                progress(0.3 * (i + 1) / n)
        t0 = time.time() + 1.0
        setup_s = time.monotonic() - t_start
        for proc in attackers.values():
            proc.stdin.write(f"go {t0}\n")
            proc.stdin.flush()

        # Honest lessons through the API, each node at its time in the publish window.
        published: dict[bytes, float] = {}
        plan = sorted(
            (WARMUP_S + rng.random() * scenario.workload.publish_window_s, i) for i in range(n_h)
        )
        for at, i in plan:
            time.sleep(max(0.0, t0 + at - time.time()))
            stamp_s = time.time() - t0
            clients[i].import_records([r.wire.hex() for r in workload.honest[i]])
            for r in workload.honest[i]:
                published[r.id] = stamp_s
        # Every honest node holds every record (honest and poison) or the timeout passes.
        expected = sum(len(rs) for rs in workload.honest.values()) + sum(
            len(workload.attacks.get(i, [])) for i in range(n_h, n)
        )
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while time.monotonic() < deadline:
            counts = [clients[i].status()["counts"] for i in range(n_h)]
            if all(c["active"] + c["pending"] >= expected for c in counts):
                break
            time.sleep(1.0)
        delivered_at = time.time() - t0
        # Which attackers' poison every honest node holds, and how the honest nodes score them
        # (under the publish threshold their messages are dropped unread).
        excluded_at: dict[int, float] = {}
        scores: dict[int, list[float]] = {}
        for i in range(n_h):
            for peer in clients[i].peers():
                a = attacker_peer.get(peer["peer_id"])
                if a is not None and peer["score"] is not None:
                    scores.setdefault(a, []).append(peer["score"])
                    if peer["score"] < RULES.publish_threshold:
                        excluded_at.setdefault(a, delivered_at)
        if progress:
            progress(0.45)

        # Rounds: agents use lessons and report verdicts through the API.
        relevant_ids = {
            q: {r.id.hex() for rs in workload.honest.values() for r in rs if r.experience.text == t}
            for q, t in enumerate(workload.relevant)
        }
        bad_hex = {a.hex() for a in bad}
        watch = list(range(min(scenario.workload.query_nodes, n_h)))
        rounds: list[dict] = []
        verdicts_sent = 0
        n_rounds = max(1, int(scenario.duration_s // fb.round_s))

        def agent(i: int, tasks: list[int]) -> tuple[list[float], list[float], int, int]:
            me = workload.identities[i].author.hex()
            shares, hits, sent, refused = [], [], 0, 0
            for q in tasks:
                answer = clients[i].query(workload.queries[q], k=scenario.workload.k)
                chosen = answer["selected"]
                shares.append(sum(c["author"] in bad_hex for c in chosen) / scenario.workload.k)
                hit = False
                for c in chosen:
                    if c["author"] == me:
                        continue  # a vote on one's own lesson counts for nothing
                    verdict = None
                    if c["author"] in bad_hex:
                        verdict = "harmful"
                    elif c["id"] in relevant_ids[q]:
                        verdict, hit = "helpful", True
                    if verdict:
                        try:
                            clients[i].feedback(c["id"], verdict)
                            sent += 1
                        except ClientError:
                            refused += 1
                hits.append(float(hit))
            return shares, hits, sent, refused

        first_round = time.time()
        with ThreadPoolExecutor(max_workers=n_h) as pool:
            for number in range(n_rounds):
                began = time.time()
                per = fb.tasks_per_round
                tasks = [
                    [agents_rng.randrange(len(workload.queries)) for _ in range(per)]
                    for _ in range(n_h)
                ]
                results = list(pool.map(agent, range(n_h), tasks))
                shares = [s for r in results for s in r[0]]
                hits = [h for r in results for h in r[1]]
                verdicts_sent += sum(r[2] for r in results)
                snapshot = {
                    "t": began - t0,
                    "tasks": len(shares),
                    "attack_success": float(np.mean(shares)) if shares else 0.0,
                    "relevant_hit_rate": float(np.mean(hits)) if hits else 0.0,
                    "votes": verdicts_sent,
                    "refused": sum(r[3] for r in results),
                    "round_s": time.time() - began,
                }
                views = [
                    node_trust(
                        workdir / f"node{i}" / DB_FILE, workload.identities[i].author, groups
                    )
                    for i in watch
                ]
                for key in ("standing_honest", "standing_adversarial"):
                    snapshot[key] = float(np.mean([v[key] for v in views]))
                for key in ("trust_honest", "trust_adversarial"):
                    snapshot[key] = float(np.mean([v[key] for v in views]))
                snapshot["trust_ready_share"] = float(np.mean([v["ready"] for v in views]))
                snapshot["stored_votes"] = float(np.mean([v["votes"] for v in views]))
                if fb.standing != "trust":  # the nodes run time known alone
                    snapshot["standing_honest"] = snapshot["standing_adversarial"] = 1.0
                    snapshot["trust_ready_share"] = 0.0
                rounds.append(snapshot)
                if progress:
                    progress(0.45 + 0.45 * (number + 1) / n_rounds)
                time.sleep(max(0.0, first_round + (number + 1) * fb.round_s - time.time()))

        # The agents' outcome at the end: every target at the query nodes.
        slots, hit_list = [], []
        for i in watch:
            for q, text in enumerate(workload.queries):
                chosen = clients[i].query(text, k=scenario.workload.k)["selected"]
                slots.append(sum(c["author"] in bad_hex for c in chosen) / scenario.workload.k)
                hit_list.append(float(any(c["id"] in relevant_ids[q] for c in chosen)))
        statuses = {i: clients[i].status() for i in watch}
        rejected = sum((gossip_refusals(clients[i].metrics()) for i in range(n_h)), Counter())
    finally:
        for client in clients.values():
            client.close()
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    holdings = {}
    for i in range(n_h):
        con = sqlite3.connect(f"file:{workdir / f'node{i}' / DB_FILE}?mode=ro", uri=True)
        try:
            holdings[i] = {
                rid: at / 1000 - t0
                for rid, at in con.execute("SELECT id, accepted_at FROM records WHERE op != 2")
            }
        finally:
            con.close()
    bad_records = attack_records(decode, workload)
    records_by_id = {r.id: r for rs in workload.honest.values() for r in rs}
    records_by_id |= {r.id: r for r in bad_records}
    baseline = agent_outcomes(
        workload,
        {i: list(holdings[i]) for i in watch},
        records_by_id,
        scenario.workload.k,
        attack_records=bad_records,
    )
    agents = {
        "defended": float(np.mean(slots)) if slots else 0.0,
        "hit_defended": float(np.mean(hit_list)) if hit_list else 0.0,
        "undefended": baseline["undefended"],
        "hit_undefended": baseline["hit_undefended"],
        "queries": len(slots),
        "query_nodes": len(watch),
    }
    return {
        "mode": "real",
        "nodes": n,
        "published": published,
        "publisher_of": {r.id: i for i, rs in workload.honest.items() for r in rs},
        "holdings": holdings,
        "rejected": rejected,
        "bytes_sent": [],
        "excluded_at": excluded_at,
        "graylisted_at": {},
        "attackers": list(range(n_h, n)),
        "attacker_scores": [],
        "rejoined": {},
        "agents": agents,
        "forged_ids": workload.forged_ids,
        "warmup_s": WARMUP_S,
        "feedback": {
            "standing": fb.standing,
            "rounds": rounds,
            "votes": verdicts_sent,
            "delivered_at_s": delivered_at,
            "attacker_scores_at_delivery": {str(a): v for a, v in sorted(scores.items())},
            "node_trust": {str(i): s["trust"] for i, s in statuses.items()},
            "setup_s": setup_s,
        },
    }
