"""Paired HTTP query latency of two zoonode builds on the same data: is one query path cheaper?

    python benchmarks/query_ab.py --base /path/to/main/.venv/bin/zoonode --data DATA_DIR

Two real ``zoonode start`` processes, the base build (``--base``, e.g. main's checkout) on a
copy of ``DATA_DIR`` and this build on another copy, answer the 443 eg queries (k = 10) over
HTTP keep-alive, each query asked of both in turn (who goes first alternating), two passes.
Prints both p50s, the median of the per-query ratio new / base, how many first-pass
answers are the same lessons in the same order, and how many report the same counts
(considered, groups, authors, down-weighting reasons). Encoder threads 1, as versus_chroma.py.
A data dir: e.g. one filled by versus_chroma.py's ``fill`` (benchmarks/corpus.py) at 20k.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from common import write_json
from datasets import load as load_set

API_RE = re.compile(r"HTTP API (\S+)")


def start(executable: str, data: Path) -> tuple[subprocess.Popen, httpx.Client]:
    proc = subprocess.Popen(
        [executable, "start", "--data-dir", str(data), "--api", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    url = next(m.group(1) for line in proc.stdout if (m := API_RE.search(line)))
    return proc, httpx.Client(base_url=url, timeout=600)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True, help="the base build's zoonode executable")
    parser.add_argument("--data", required=True, type=Path, help="a node data dir (copied)")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument(
        "--runtime", default="onnx", choices=["onnx", "torch"], help="encoder runtime of both"
    )
    args = parser.parse_args()
    os.environ["ZOONODE_ENCODER__THREADS"] = "1"
    os.environ["ZOONODE_ENCODER__RUNTIME"] = args.runtime  # as versus_chroma.py: ONNX
    queries = load_set().queries
    work = Path(tempfile.mkdtemp(prefix="zoo-query-ab-"))
    builds = {"base": args.base, "new": str(Path(sys.executable).with_name("zoonode"))}
    nodes = {}
    try:
        for name, exe in builds.items():
            shutil.copytree(args.data, work / name, ignore=shutil.ignore_patterns("*.lock"))
            nodes[name] = start(exe, work / name)
        for _, http in nodes.values():
            for q in queries[:10]:
                http.post("/v1/query", json={"text": q, "k": 10})
        latency: dict[str, list[float]] = {name: [] for name in nodes}
        answers: dict[str, list[list[str]]] = {name: [] for name in nodes}
        counts: dict[str, list[list]] = {name: [] for name in nodes}
        load = [os.getloadavg()[0]]
        j = 0
        for p in range(args.passes):
            for q in queries:
                order = list(nodes) if j % 2 == 0 else list(nodes)[::-1]
                j += 1
                for name in order:
                    t = time.perf_counter()
                    r = nodes[name][1].post("/v1/query", json={"text": q, "k": 10})
                    r.raise_for_status()
                    latency[name].append((time.perf_counter() - t) * 1000)
                    if p == 0:
                        body = r.json()
                        answers[name].append([s["id"] for s in body["selected"]])
                        counts[name].append(
                            [body[key] for key in ("considered", "groups", "authors")]
                            + [sorted(body["down_weighted"].items())]
                        )
            load.append(os.getloadavg()[0])
    finally:
        for proc, http in nodes.values():
            http.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        shutil.rmtree(work, ignore_errors=True)
    base, new = np.array(latency["base"]), np.array(latency["new"])
    same = sum(1 for a, b in zip(answers["base"], answers["new"], strict=True) if a == b)
    same_counts = sum(1 for a, b in zip(counts["base"], counts["new"], strict=True) if a == b)
    out = {
        "base p50 ms": float(np.median(base)),
        "new p50 ms": float(np.median(new)),
        "paired median new / base": float(np.median(new / base)),
        "paired median new - base ms": float(np.median(new - base)),
        "same answers": f"{same}/{len(answers['new'])}",
        # considered, groups, authors and the down-weighting reasons' counts
        "same counts": f"{same_counts}/{len(counts['new'])}",
        "encoder runtime": args.runtime,
        "load average (1 min)": [round(x, 2) for x in load],
    }
    for key, value in out.items():
        print(f"{key}: {value}")
    print(f"wrote {write_json('query-ab', out)}")


if __name__ == "__main__":
    main()
