"""The ingest tables of benchmarks/README.md, generated from the result JSON of ingest.py.

    python benchmarks/ingest_table.py [--result results/ingest.json]

Rewrites the part of benchmarks/README.md between the ``ingest`` markers: the rate at which a
real node stores records (two-stage, this tree, beside the old path in the same run), the
backlog's drain rate beside the encoder's own, and query latency while the backlog drains.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
START, END = "<!-- ingest:start -->", "<!-- ingest:end -->"
ONNX_RATE = "onnx encoder batch-16 rate /s, 1 thread (the checker's)"
PATHS = (
    ("/v1/records", "`POST /v1/records`"),
    ("gossip", "gossip from another process"),
    ("sync", "sync catch-up"),
)


def _num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def _count(v: float | None) -> float:
    """A counter read from /metrics: absent (NaN) until it first counts."""
    return 0.0 if v is None or v != v else v


def render(result: dict) -> str:
    rows = {r["run"]: r for r in result["rows"]}
    s = result["settings"]
    load = result.get("load average start/end", [[None], [None]])
    out = [
        f"Run {result['when']}"
        + (f" of `{result['code']}`" if "code" in result else "")
        + f", {result['machine']['cores']} cores "
        f"({result['machine']['cpu']}), load average {load[0][0]:.1f} at the start and "
        f"{load[1][0]:.1f} at the end (other helpers' work shares the machine). Receivers hold "
        f"{s['size']:,} checked records first; {s['authors']} authors, "
        f"{s['distinct texts']:,} distinct texts of {s['mean words']:.0f} words on average; "
        f"every node `encoder.threads = {s['threads']}`"
        + (" (the runtime's default)" if not s["threads"] else "")
        + ". Baseline: the old path (embedding "
        f"check before the store) at `{result['baseline ref'][:10]}`, run for "
        f"{s['baseline_s']:.0f} s per path.",
        "",
        "| path | records | two-stage stored /s | baseline stored /s | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label in PATHS:
        two = next((r for n, r in rows.items() if n.startswith(key) and "two-stage" in n), None)
        old = next((r for n, r in rows.items() if n.startswith(key) and "baseline" in n), None)
        if two is None:
            continue
        ratio = two["stored /s"] / old["stored /s"] if old else None
        out.append(
            f"| {label} | {two['records']:,} | {_num(two['stored /s'])} | "
            f"{_num(old['stored /s'] if old else None)} | "
            f"{_num(ratio, 1) + '×' if ratio else '–'} |"
        )
    out += [
        "",
        f"Encoder alone, this process with every node stopped: torch, batches of 32, "
        f"{result['encoder batch-32 rate /s, 1 thread']:.0f} texts/s on 1 thread"
        + (
            f"; the nodes' runtime (ONNX Runtime), the checker's batches of 16 on 1 thread, "
            f"{result[ONNX_RATE]:.0f} texts/s."
            if ONNX_RATE in result
            else " (the checker's)."
        ),
        "",
        "| while the backlog drains | queries | p50 ms | p99 ms | p50 / p99 ms, no check "
        "| p50 / p99 ms, checking picks | on-demand checks | picks left to the background "
        "| drain /s (with queries) | drain /s (no queries) | idle p50 / p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        if "draining queries" not in r:
            continue
        if "idle query p50 ms" in r:
            idle = f"{r['idle query p50 ms']:.0f} / {r['idle query p99 ms']:.0f}"
        elif "peer (all checked) query p50 ms" in r:
            idle = (
                f"{r['peer (all checked) query p50 ms']:.0f} / "
                f"{r['peer (all checked) query p99 ms']:.0f} (the peer, all checked)"
            )
        else:
            idle = "–"
        out.append(
            f"| {name} | {r['draining queries']:,} | {r['draining query p50 ms']:.0f} | "
            f"{r['draining query p99 ms']:.0f} | "
            f"{_num(r['draining no-check p50 ms'])} / {_num(r['draining no-check p99 ms'])} | "
            f"{_num(r['draining checking p50 ms'])} / {_num(r['draining checking p99 ms'])} | "
            f"{r['draining on-demand checks']:,} | "
            f"{_num(r.get('draining picks left to the background'))} | "
            f"{r['draining drain /s']:.0f} | {_num(r.get('drain /s, no queries'))} | {idle} |"
        )
    gossip = next((r for n, r in rows.items() if n.startswith("gossip, two")), None)
    if gossip:
        out += [
            "",
            f"Gossip, two-stage: {gossip['messages sent']} messages sent, "
            f"{gossip['accepted by the validator']:,.0f} records accepted by the validator, "
            f"{_num(_count(gossip.get('ignored: backlog')))} ignored (reason `backlog`: the ingest "
            f"queue had no room), the gossip reader waited {gossip['reader wait s']:.3f} s "
            "in all.",
        ]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--result", default=str(HERE / "results" / "ingest.json"))
    args = parser.parse_args()
    result = json.loads(Path(args.result).read_text())
    readme = HERE / "README.md"
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{render(result)}{END}{tail}")
    print(render(result))


if __name__ == "__main__":
    main()
