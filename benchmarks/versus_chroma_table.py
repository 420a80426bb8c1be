"""The zoonode-vs-Chroma tables of benchmarks/README.md, generated from the result JSON.

    python benchmarks/versus_chroma_table.py [--after results/versus-chroma.json]
                                             [--before results/versus-chroma-before.json]

Rewrites the part of benchmarks/README.md between the ``versus-chroma`` markers: one table per
store size, a column per system (and per code version when a "before" run is given), ratios
zoonode / Chroma of the after run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
START, END = "<!-- versus-chroma:start -->", "<!-- versus-chroma:end -->"
SYSTEMS = ("zoonode (1 author)", "zoonode (64 authors)")


def _fmt(key: str, v: float | None) -> str:
    if v is None:
        return "–"
    if key.startswith("short"):
        return f"{int(v)}"
    if key == "paired p50 ratio":
        return f"{v:.2f}"
    if key in ("Recall@5", "Hit@5", "MRR@10"):
        return f"{v:.3f}"
    if key.startswith("results"):
        return f"{v:.2f}"
    if key.startswith("empty"):
        return f"{int(v)}"
    if key == "ingest vs 1k":
        return f"{v:.2f}"
    if key.startswith("node") or key.startswith("outside"):
        return f"{v:.1f}"
    return f"{v:,.0f}" if v >= 10 else f"{v:.1f}"


ROWS = [
    ("Recall@5 / Hit@5 / MRR@10", ("Recall@5", "Hit@5", "MRR@10")),
    ("results per query, k = 5 / 10", ("results k=5", "results k=10")),
    ("queries answered with nothing", ("empty",)),
    (
        "… of them with a relevant lesson >= 0.3 in Chroma's top 5",
        ("empty, Chroma top 5 relevant >= 0.3",),
    ),
    (
        "answers shorter than k although k candidates clear the floor",
        ("short of k with k clearing the floor",),
    ),
    (
        "… not counting other authors' near-copies of an answer (withheld: Sybil rule)",
        ("short of k, other authors' near-copies of answers not counted",),
    ),
    ("query p50 / p99 ms (HTTP, encoding included)", ("query p50 ms", "query p99 ms")),
    ("median of per-query latency / Chroma's (paired)", ("paired p50 ratio",)),
    (
        "node's Server-Timing p50 ms: encode / search / select / records / handler",
        (
            "node encode p50 ms",
            "node search p50 ms",
            "node select p50 ms",
            "node records p50 ms",
            "node app p50 ms",
        ),
    ),
    ("… client-seen time beyond the handler, p50 ms", ("outside the handler p50 ms",)),
    (
        "API ingest docs/s at this size (stored; 64 authors: pending, checked after)",
        ("ingest docs/s",),
    ),
    (
        "… embedding included (64 authors: until every record is checked)",
        ("ingest docs/s, check included",),
    ),
    ("… over the rate at 1k", ("ingest vs 1k",)),
    ("RSS MB (server) / disk MB", ("rss MB", "disk MB")),
]
RATIO_KEYS = {
    "Recall@5 / Hit@5 / MRR@10": ("Recall@5", "Hit@5", "MRR@10"),
    "query p50 / p99 ms (HTTP, encoding included)": ("query p50 ms",),
    "… embedding included (64 authors: until every record is checked)": (
        "ingest docs/s, check included",
    ),
    "RSS MB (server) / disk MB": ("rss MB", "disk MB"),
}


def tables(after: dict, before: dict | None) -> str:
    out = []
    sizes = sorted({r["lessons"] for r in after["rows"]})
    for size in sizes:
        got = {r["system"]: r for r in after["rows"] if r["lessons"] == size}
        old = {r["system"]: r for r in before["rows"] if r["lessons"] == size} if before else {}
        columns: list[tuple[str, dict]] = []
        for name in SYSTEMS:
            if name in old:
                columns.append((f"{name}, before", old[name]))
            if name in got:
                columns.append((name, got[name]))
        columns.append(("Chroma", got["Chroma"]))
        ratio_of = [n for n in SYSTEMS if n in got]
        head = ["", *[c for c, _ in columns], *[f"ratio, {n.split('(')[1][:-1]}" for n in ratio_of]]
        out.append(f"**{size:,} lessons**\n")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for label, keys in ROWS:
            cells = [" / ".join(_fmt(k, row.get(k)) for k in keys) for _, row in columns]
            ratios = []
            for n in ratio_of:
                rk = RATIO_KEYS.get(label)
                if rk is None:
                    ratios.append("")
                    continue
                ratios.append(
                    " / ".join(
                        f"{got[n][k] / got['Chroma'][k]:.2f}" if got["Chroma"][k] else "n/a"
                        for k in rk
                    )
                )
            out.append(f"| {label} | " + " | ".join(cells + ratios) + " |")
        load = got["Chroma"].get("load average (1 min) during queries")
        if load:
            out.append("")
            out.append(f"Load average (1 min) on the 2-core machine during the queries: {load}.")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Rewrite the zoonode-vs-Chroma tables in benchmarks/README.md (between the "
        "versus-chroma markers) from result JSON."
    )
    parser.add_argument(
        "--after",
        type=Path,
        default=HERE / "results" / "versus-chroma.json",
        help="the run the tables and ratios show (default: results/versus-chroma.json)",
    )
    parser.add_argument(
        "--before",
        type=Path,
        default=HERE / "results" / "versus-chroma-before.json",
        help='an earlier run shown in "before" columns, where the file exists',
    )
    args = parser.parse_args()
    after = json.loads(args.after.read_text())
    before = json.loads(args.before.read_text()) if args.before.exists() else None
    text = tables(after, before)
    readme = HERE / "README.md"
    current = readme.read_text()
    start, end = current.index(START) + len(START), current.index(END)
    readme.write_text(current[:start] + "\n" + text + "\n" + current[end:])
    print(text)


if __name__ == "__main__":
    main()
