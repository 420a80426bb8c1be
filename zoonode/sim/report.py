"""A run's results folder: metrics.json, plots (matplotlib, headless) and report.md."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from zoonode.net.scoring import RULES
from zoonode.sim.metrics import latency_samples


def _plots(out: Path, runs: list[dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    made = []
    main = runs[0]

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for run in runs:
        samples = sorted(latency_samples(run["raw"]))
        if samples:
            ax.plot(samples, np.linspace(0, 1, len(samples)), label=run["label"])
    ax.set_xlabel("propagation latency to an honest node (s)")
    ax.set_ylabel("CDF")
    ax.set_title("Delivery latency")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "latency_cdf.png", dpi=110)
    plt.close(fig)
    made.append("latency_cdf.png")

    rejected = main["metrics"]["rejected"]
    if rejected:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.barh(list(rejected), list(rejected.values()))
        ax.set_xscale("log")
        ax.set_xlabel("records/messages rejected or ignored (all honest nodes)")
        ax.set_title("Rejections by reason")
        fig.tight_layout()
        fig.savefig(out / "rejected_by_reason.png", dpi=110)
        plt.close(fig)
        made.append("rejected_by_reason.png")

    scores = main["raw"].get("attacker_scores") or []
    if scores:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([t for t, _ in scores], [s for _, s in scores])
        ax.axhline(
            RULES.publish_threshold, color="orange", linestyle="--", label="publish threshold"
        )
        ax.axhline(RULES.graylist_threshold, color="red", linestyle="--", label="graylist")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("mean score of attackers at honest peers")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "attacker_score.png", dpi=110)
        plt.close(fig)
        made.append("attacker_score.png")

    looped = [r for r in runs if r["raw"].get("feedback")]
    if looped:
        made.append(_trust_plot(out, looped, plt))

    scale = [r for r in runs if r["metrics"]["mode"] == "scale"] or runs
    points = sorted(((r["metrics"]["attackers"], r["metrics"]) for r in scale), key=lambda x: x[0])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [m["attackers"] / max(1, m["attackers"] + m["honest_nodes"]) * 100 for _, m in points]
    ax.plot(xs, [m["attack_success"] * 100 for _, m in points], "o-", label="zoonode")
    ax.plot(
        xs,
        [m["attack_success_undefended"] * 100 for _, m in points],
        "s--",
        label="undefended (no checks, plain top-k)",
    )
    ax.set_xlabel("adversarial nodes (%)")
    ax.set_ylabel("attack success: adversarial share of top-5 (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "attack_success.png", dpi=110)
    plt.close(fig)
    made.append("attack_success.png")
    return made


def _trust_plot(out: Path, looped: list[dict[str, Any]], plt) -> str:
    """Per feedback round: attack success and relevant hits in the agents' tasks; mean
    standing (what selection receives) and trust alone (min(1, T / reference)) of honest
    authors, sleepers and each newcomer, as the first query nodes see them."""
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(13.5, 3.8))
    styles = {"honest": "o-", "adversarial": "s--"}
    names = {"honest": "honest", "adversarial": "sleepers"}
    for run in looped:
        rounds = run["raw"]["feedback"]["rounds"]
        ts = [r["t"] for r in rounds]
        label = run["label"]
        left.plot(ts, [r["attack_success"] * 100 for r in rounds], "s--", label=f"attack, {label}")
        left.plot(ts, [r["relevant_hit_rate"] * 100 for r in rounds], "o-", label=f"hit, {label}")
        for key, axis in (("standing", middle), ("trust", right)):
            groups = list(styles) + sorted(
                {k.split(f"{key}_", 1)[1] for r in rounds for k in r if k.startswith(f"{key}_newc")}
            )
            for group in groups:
                points = [
                    (r["t"], r.get(f"{key}_{group}"))
                    for r in rounds
                    if r.get(f"{key}_{group}") is not None
                ]
                if points:
                    axis.plot(
                        [p[0] for p in points],
                        [p[1] for p in points],
                        styles.get(group, "^-"),
                        label=f"{names.get(group, group.replace('_', ' '))}, {label}",
                    )
    left.set_ylabel("agents' tasks (%)")
    middle.set_ylabel("mean standing at query nodes")
    right.set_ylabel("mean trust standing min(1, T/ref)")
    for axis in (left, middle, right):
        axis.set_xlabel("time after warm-up (s)")
        axis.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "trust_over_time.png", dpi=110)
    plt.close(fig)
    return "trust_over_time.png"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if value is None:
        return "-"
    return str(value)


def write_results(out: Path, scenario, runs: list[dict[str, Any]], seconds: float) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(
        json.dumps(
            {
                "scenario": scenario.to_dict(),
                "runs": [{"label": r["label"], "metrics": r["metrics"]} for r in runs],
                "wall_seconds": seconds,
                "machine": {"python": platform.python_version(), "cpu": platform.processor()},
            },
            indent=2,
        )
    )
    plots = _plots(out, runs)
    keys = [k for k in runs[0]["metrics"] if k != "rejected"]
    lines = [
        f"# Simulation report: {scenario.name}",
        "",
        scenario.description or "",
        "",
        f"Mode(s): {', '.join(r['label'] for r in runs)}; seed {scenario.seed}; "
        f"{scenario.duration_s:g} s after warm-up; wall time {seconds:.0f} s.",
        "",
        "| metric | " + " | ".join(r["label"] for r in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(_fmt(r["metrics"][key]) for r in runs) + " |")
    for run in runs:
        rounds = (run["raw"].get("feedback") or {}).get("rounds")
        if not rounds:
            continue
        extra = [k for k in rounds[-1] if k.startswith(("standing_newcomer", "newcomer_topic"))]
        lines += [
            "",
            f"Feedback rounds, {run['label']} (standing {run['raw']['feedback']['standing']}):",
            "",
            "| t (s) | tasks | attack success | relevant hit | verdicts | standing honest "
            "| standing adversarial | trust ready |"
            + "".join(f" {k.replace('_', ' ')} |" for k in extra),
            "|---|---|---|---|---|---|---|---|" + "---|" * len(extra),
        ]
        for r in rounds:
            lines.append(
                f"| {r['t']:.0f} | {r['tasks']} | {r['attack_success']:.3f} | "
                f"{r['relevant_hit_rate']:.3f} | {r['votes']} | {r['standing_honest']:.3f} | "
                f"{r['standing_adversarial']:.3f} | {r['trust_ready_share']:.2f} |"
                + "".join(f" {_fmt(r.get(k))} |" for k in extra)
            )
    lines += ["", "Rejected or ignored, by reason (first run):", ""]
    for reason, count in runs[0]["metrics"]["rejected"].items():
        lines.append(f"- {reason}: {count}")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "## Scenario", "", "```toml", _toml(scenario.to_dict()), "```", ""]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def _toml(d: dict, prefix: str = "") -> str:
    scalars = [f"{k} = {json.dumps(v)}" for k, v in d.items() if not isinstance(v, dict)]
    tables = [
        f"\n[{prefix}{k}]\n" + _toml(v, f"{prefix}{k}.")
        for k, v in d.items()
        if isinstance(v, dict)
    ]
    return "\n".join(scalars) + "".join(tables)
