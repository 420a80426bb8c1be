"""Outcome metrics of a run, the same for both engines (pure: raw outcome in, numbers out)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw``: published {id: t}, holdings {node: {id: t}}, rejected Counter, bytes_sent,
    excluded_at {attacker: t}, graylisted_at {attacker: t}, attackers, rejoined {node: t},
    agents, forged_ids."""
    published: dict[bytes, float] = raw["published"]
    holdings: dict[int, dict[bytes, float]] = raw["holdings"]
    latencies, delivered, expected = [], 0, 0
    for node, held in holdings.items():
        for rid, t_pub in published.items():
            if raw.get("publisher_of", {}).get(rid) == node:
                continue
            expected += 1
            if rid in held:
                delivered += 1
                latencies.append(max(0.0, held[rid] - t_pub))
    forged = set(raw.get("forged_ids", ()))
    forged_delivered = sum(len(forged & set(held)) for held in holdings.values())
    warmup = raw.get("warmup_s", 0.0)
    exclude_times = sorted(t - warmup for t in raw["excluded_at"].values())
    graylist_times = sorted(t - warmup for t in raw.get("graylisted_at", {}).values())
    convergence = []
    for node, t_back in raw.get("rejoined", {}).items():
        held = holdings.get(node, {})
        missing = [rid for rid, t in published.items() if t <= t_back and rid not in held]
        if missing:
            convergence.append(None)
            continue
        caught_up = [held[rid] for rid, t in published.items() if t <= t_back and rid in held]
        convergence.append(max(0.0, max(caught_up, default=t_back) - t_back))
    checked_latencies = []  # publish -> promoted after the embedding check (scale mode)
    for node, active in raw.get("checked", {}).items():
        for rid, t_pub in published.items():
            if rid in active and raw.get("publisher_of", {}).get(rid) != node:
                checked_latencies.append(max(0.0, active[rid] - t_pub))
    rejected = Counter({str(k): int(v) for k, v in raw["rejected"].items()})
    agents = raw["agents"]
    fb = raw.get("feedback")
    loop = {}
    if fb:
        rounds = fb["rounds"]
        last = rounds[-1] if rounds else {}
        loop = {
            "standing": fb["standing"],
            "feedback_rounds": len(rounds),
            "verdicts": fb["votes"],
            "attack_success_first_round": rounds[0]["attack_success"] if rounds else None,
            "attack_success_last_round": last.get("attack_success"),
            "standing_honest_final": last.get("standing_honest"),
            "standing_adversarial_final": last.get("standing_adversarial"),
            "trust_ready_share_final": last.get("trust_ready_share"),
        } | {key: fb[key] for key in ("setup_s", "delivered_at_s") if key in fb}
    return loop | {
        "mode": raw["mode"],
        "nodes": raw["nodes"],
        "honest_nodes": len(holdings),
        "attackers": len(raw["attackers"]),
        "honest_records": len(published),
        "delivery_rate": delivered / expected if expected else None,
        "latency_p50_s": _percentile(latencies, 50),
        "latency_p99_s": _percentile(latencies, 99),
        "checked_latency_p50_s": _percentile(checked_latencies, 50),
        "checked_latency_p99_s": _percentile(checked_latencies, 99),
        "backlog_peak": raw.get("backlog_peak"),
        "attack_success": agents["defended"],
        "attack_success_undefended": agents["undefended"],
        "relevant_hit_rate": agents["hit_defended"],
        "relevant_hit_rate_undefended": agents["hit_undefended"],
        "agent_queries": agents["queries"],
        "forged_delivered": forged_delivered,
        "rejected": dict(rejected.most_common()),
        "bytes_per_node": float(np.mean(raw["bytes_sent"])) if raw["bytes_sent"] else None,
        "attackers_excluded": len(exclude_times),  # under the publish threshold somewhere
        "time_to_exclude_p50_s": _percentile(exclude_times, 50),
        "attackers_graylisted": len(graylist_times),  # under −80: no GRAFT, no gossip
        "time_to_graylist_p50_s": _percentile(graylist_times, 50),
        "churn_rejoined": len(convergence),
        "churn_converged": sum(c is not None for c in convergence),
        "churn_convergence_p50_s": _percentile([c for c in convergence if c is not None], 50),
    }


def latency_samples(raw: dict[str, Any]) -> list[float]:
    out = []
    for node, held in raw["holdings"].items():
        for rid, t_pub in raw["published"].items():
            if rid in held and raw.get("publisher_of", {}).get(rid) != node:
                out.append(max(0.0, held[rid] - t_pub))
    return out
