"""Encoder runtimes side by side: torch vs ONNX Runtime on the same weights (issue 23).

    python benchmarks/encoder_runtime.py [--filler 1000] [--singles 200] [--batches 24]
                                         [--node-queries 200] [--out encoder-runtime]

One run, one process, both encoders loaded (``encoder.runtime = "torch"`` and ``"onnx"``,
native/onnxrt.py; the ONNX graph is exported once into .bench-cache/encoder/):

1. **Exactness** over real texts: the 443 eg queries, the 1,334 cheat tips
   (benchmarks/datasets.py) and ``--filler`` docstring paragraphs (benchmarks/filler.py,
   8-60 words, lesson-like): both runtimes encode every text in batches of 32, and the query
   texts also one at a time (the query path). Max |diff| and min cosine of the compact
   (384-d) and the canonical 7680-d vectors; the space id of both encoders.
2. **Speed in process**, each measurement paired (the same text or batch through torch and
   ONNX back to back, which one goes first alternating), through ``Encoder.encode_compact``
   as the node calls it: a single query text with 1 and 2 threads (the query path: 1 while
   a backlog is checked, else ``encoder.threads``), batches of 16 (``ingest.check_batch``) and
   32 of lesson-like texts with 1 thread (the background checker, ``CHECK_THREADS``), and a
   single query text (1 thread) while another thread encodes checker batches (1 thread):
   the node during catch-up. Medians, p90, and the median of the per-pair ratios.
3. **A real node**: two ``zoonode start`` processes serve copies of one data dir (the 1,334
   tips), one per runtime, default settings otherwise; the eg queries go to ``/v1/query``
   over HTTP, alternating between the two nodes query by query.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from zoonode.native.encoder import Encoder
from zoonode.native.onnxrt import onnx_file

from common import table, write_json
from datasets import CACHE
from datasets import load as load_retrieval_set
from filler import load as load_filler

ZOONODE = str(Path(sys.executable).with_name("zoonode"))
API_RE = re.compile(r"HTTP API (\S+)")
CHECK_BATCH = 16  # ingest.check_batch
CHECK_THREADS = 1  # zoonode/node/checker.py


def exactness(torch_enc: Encoder, onnx_enc: Encoder, texts: list[str], queries: list[str]):
    rows = []
    for label, batch, items in (("batches of 32", 32, texts), ("single texts", 1, queries)):
        a = torch_enc.encode_compact(items, batch_size=batch, show_progress=False)
        b = onnx_enc.encode_compact(items, batch_size=batch, show_progress=False)
        big_a, big_b = torch_enc.lift(a), onnx_enc.lift(b)
        rows.append(
            {
                "texts": f"{len(items)} ({label})",
                "compact max |diff|": float(np.abs(a - b).max()),
                "compact min cos": float((a * b).sum(1).min()),
                "7680-d max |diff|": float(np.abs(big_a - big_b).max()),
                "7680-d min cos": float((big_a * big_b).sum(1).min()),
                "7680-d mean cos": float((big_a * big_b).sum(1).mean()),
                "same top-1 tip (443 queries)": None,
            }
        )
    return rows


def paired(fns: dict[str, callable], items: list, block: int) -> dict[str, list[float]]:
    """Every item through every runtime, ms. In blocks of ``block`` items: one runtime runs
    the block, then the other the same block, which goes first alternating block by block,
    after a 0.1 s pause (torch's OpenMP threads spin a while after a multi-threaded call and
    would slow whatever runs next; a block keeps that to its first item)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for b, start in enumerate(range(0, len(items), block)):
        for name in names if b % 2 == 0 else names[::-1]:
            time.sleep(0.1)
            for item in items[start : start + block]:
                t = time.perf_counter()
                fns[name](item)
                times[name].append((time.perf_counter() - t) * 1000)
    return times


def summarise(what: str, times: dict[str, list[float]], per: int = 1) -> dict:
    t, o = np.array(times["torch"]), np.array(times["onnx"])
    row = {
        "what": what,
        "pairs": len(t),
        "torch p50 ms": float(np.median(t)),
        "onnx p50 ms": float(np.median(o)),
        "torch p90 ms": float(np.percentile(t, 90)),
        "onnx p90 ms": float(np.percentile(o, 90)),
        "speed-up (median of torch/onnx)": float(np.median(t / o)),
        "onnx faster in": f"{int((o < t).sum())}/{len(t)}",
    }
    if per > 1:
        row["torch texts/s"] = per * 1000 / float(np.median(t))
        row["onnx texts/s"] = per * 1000 / float(np.median(o))
    return row


def speed(encs: dict[str, Encoder], queries: list[str], lessons: list[str], args) -> list[dict]:
    rows = []
    singles = queries[: args.singles]
    for threads in (1, 2):
        fns = {
            n: (lambda t, e=e, k=threads: e.encode_compact(t, threads=k)) for n, e in encs.items()
        }
        paired(fns, singles[:10], 10)  # warm-up: the first calls allocate
        rows.append(summarise(f"1 query text, {threads} thread(s)", paired(fns, singles, 20)))
        print(table(rows[-1:], list(rows[-1])), flush=True)
    for size in (CHECK_BATCH, 32):
        batches = [lessons[i : i + size] for i in range(0, size * args.batches, size)]
        fns = {
            n: (lambda b, e=e: e.encode_compact(b, len(b), False, CHECK_THREADS))
            for n, e in encs.items()
        }
        paired(fns, batches[:2], 2)
        times = paired(fns, batches, 4)
        rows.append(summarise(f"batch of {size}, {CHECK_THREADS} thread", times, size))
        print(table(rows[-1:], list(rows[-1])), flush=True)
    # The node during catch-up: the checker encodes batches of 16 on one thread while a
    # query encodes its text on one thread (zoonode/node/query.py while the backlog is not
    # empty). Runtimes in alternating blocks of 20 queries, each block with its own checker.
    times: dict[str, list[float]] = {"torch": [], "onnx": []}
    checked: dict[str, int] = {"torch": 0, "onnx": 0}
    busy: dict[str, float] = {"torch": 0.0, "onnx": 0.0}
    block = 20
    for start in range(0, len(singles), block):
        order = ["torch", "onnx"] if (start // block) % 2 == 0 else ["onnx", "torch"]
        for name in order:
            enc, stop = encs[name], threading.Event()

            def check(enc=enc, name=name, stop=stop) -> None:
                i = 0
                while not stop.is_set():
                    batch = lessons[(i * CHECK_BATCH) % len(lessons) :][:CHECK_BATCH]
                    enc.encode_compact(batch, len(batch), False, CHECK_THREADS)
                    checked[name] += len(batch)
                    i += 1

            worker = threading.Thread(target=check, daemon=True)
            worker.start()
            time.sleep(0.05)
            began = time.perf_counter()
            for text in singles[start : start + block]:
                t = time.perf_counter()
                enc.encode_compact(text, threads=CHECK_THREADS)
                times[name].append((time.perf_counter() - t) * 1000)
            busy[name] += time.perf_counter() - began
            stop.set()
            worker.join()
    row = summarise("1 query text, 1 thread, while checking", times)
    row["checker texts/s torch"] = checked["torch"] / busy["torch"]
    row["checker texts/s onnx"] = checked["onnx"] / busy["onnx"]
    rows.append(row)
    print(table(rows[-1:], list(rows[-1])), flush=True)
    return rows


def start_node(data: Path, runtime: str, cache: Path) -> tuple[subprocess.Popen, str]:
    env = {
        **os.environ,
        "ZOONODE_ENCODER__RUNTIME": runtime,
        "ZOONODE_ENCODER__CACHE_DIR": str(cache),  # the graph exported above: no export here
    }
    proc = subprocess.Popen(
        [ZOONODE, "start", "--data-dir", str(data), "--api", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    url = next(m.group(1) for line in proc.stdout if (m := API_RE.search(line)))
    return proc, url


def real_node(torch_enc: Encoder, cache: Path, corpus: list[str], queries: list[str]):
    """Median /v1/query latency of a torch node and an ONNX node, queries alternating."""
    from api import fill

    work = Path(tempfile.mkdtemp(prefix="zoo-runtime-"))
    procs = []
    try:
        vecs = torch_enc.encode_compact(corpus, batch_size=64, show_progress=False)
        fill(work / "torch", torch_enc, corpus, vecs, np.zeros((0, vecs.shape[1])), len(corpus))
        shutil.copytree(work / "torch", work / "onnx")
        urls, up, pids = {}, {}, {}
        for name in ("torch", "onnx"):
            t = time.perf_counter()
            proc, urls[name] = start_node(work / name, name, cache)
            procs.append(proc)
            pids[name] = proc.pid
            up[name] = time.perf_counter() - t
            print(f"{name} node up in {up[name]:.1f} s", flush=True)
        clients = {n: httpx.Client(base_url=u, timeout=60) for n, u in urls.items()}

        def ask(name: str):
            def go(text: str) -> None:
                clients[name].post("/v1/query", json={"text": text}).raise_for_status()

            return go

        fns = {n: ask(n) for n in clients}
        paired(fns, queries[:10], 10)
        row = summarise("POST /v1/query (real node, HTTP)", paired(fns, queries, 20))
        for name in ("torch", "onnx"):
            row[f"{name} node start s"] = up[name]
            row[f"{name} node RSS MB"] = _rss_mb(pids[name])
        for c in clients.values():
            c.close()
        return row
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def markdown(payload: dict) -> str:
    """The tables of benchmarks/README.md ("Encoder runtime") from a result JSON."""
    st, m = payload["settings"], payload["machine"]
    out = [
        f"Run {payload['when']} of `{st['commit']}`, {m['cores']} cores ({m['cpu']}), "
        f"torch {st['torch']}, onnxruntime {st['onnxruntime']}; load average "
        f"{st['load_average_start'][0]:.1f} at the start, {st['load_average_end'][0]:.1f} at "
        f"the end (other work shares the machine). Space {st['space']} on both.",
        "",
        "| texts | compact max abs diff | 7680-d max abs diff | 7680-d min cos | same top-1 tip |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in payload["exactness"]:
        out.append(
            f"| {r['texts']} | {r['compact max |diff|']:.1e} | {r['7680-d max |diff|']:.1e} | "
            f"{r['7680-d min cos']:.7f} | {r['same top-1 tip (443 queries)']:.0%} |"
        )
    out += [
        "",
        "| what (paired) | pairs | torch p50 ms | onnx p50 ms | torch p90 ms | onnx p90 ms "
        "| torch / onnx (median of pairs) | onnx faster in |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in payload["speed"]:
        what = r["what"]
        if "torch texts/s" in r:
            what += f" ({r['torch texts/s']:.0f} vs {r['onnx texts/s']:.0f} texts/s)"
        if "torch node RSS MB" in r:
            what += (
                f" (start {r['torch node start s']:.1f} vs {r['onnx node start s']:.1f} s, "
                f"resident {r['torch node RSS MB']:.0f} vs {r['onnx node RSS MB']:.0f} MB)"
            )
        if "checker texts/s torch" in r:
            what += (
                f" (checker {r['checker texts/s torch']:.0f} vs "
                f"{r['checker texts/s onnx']:.0f} texts/s)"
            )
        out.append(
            f"| {what} | {r['pairs']} | {r['torch p50 ms']:.1f} | {r['onnx p50 ms']:.1f} | "
            f"{r['torch p90 ms']:.1f} | {r['onnx p90 ms']:.1f} | "
            f"{r['speed-up (median of torch/onnx)']:.2f}× | {r['onnx faster in']} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--table", metavar="JSON", help="print the markdown tables of a result")
    parser.add_argument("--filler", type=int, default=1000, help="docstring paragraphs")
    parser.add_argument("--singles", type=int, default=200, help="query texts timed")
    parser.add_argument("--batches", type=int, default=24, help="batches timed per size")
    parser.add_argument("--node-queries", type=int, default=200, help="0: no real node")
    parser.add_argument("--out", default="encoder-runtime")
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())))
        return
    load1 = os.getloadavg()
    data = load_retrieval_set()
    filler, filler_info = load_filler(args.filler)
    texts = data.queries + data.corpus + filler

    t = time.perf_counter()
    torch_enc = Encoder.default()
    torch_load = time.perf_counter() - t
    cache = CACHE / "encoder"
    fresh = not onnx_file(cache, torch_enc.backbone.weights_sha256).exists()
    t = time.perf_counter()
    onnx_enc = Encoder.default(runtime="onnx", cache_dir=str(cache))
    onnx_load = time.perf_counter() - t
    print(
        f"torch encoder {torch_load:.1f} s; onnx encoder {onnx_load:.1f} s "
        f"({'export + ' if fresh else ''}load + probe; "
        f"probe diff {onnx_enc.backbone.probe_diff:.2g})"
    )
    assert onnx_enc.space == torch_enc.space, "the ONNX runtime changed the space"

    exact = exactness(torch_enc, onnx_enc, texts, data.queries)
    # retrieval agreement: top-1 tip of every query under each runtime's vectors
    qa = torch_enc.encode_compact(data.queries, show_progress=False)
    qb = onnx_enc.encode_compact(data.queries, show_progress=False)
    ca = torch_enc.encode_compact(data.corpus, show_progress=False)
    cb = onnx_enc.encode_compact(data.corpus, show_progress=False)
    same = float(np.mean((qa @ ca.T).argmax(1) == (qb @ cb.T).argmax(1)))
    for row in exact:
        row["same top-1 tip (443 queries)"] = same
    print(f"\nExactness, onnx vs torch, {len(texts)} real texts")
    shown = [{k: f"{v:.2e}" if "diff" in k else v for k, v in r.items()} for r in exact]
    for r in shown:
        r.update({k: f"{v:.8f}" for k, v in r.items() if "cos" in k})
    print(table(shown, list(shown[0])), flush=True)

    encs = {"torch": torch_enc, "onnx": onnx_enc}
    print("\nSpeed, paired (same input through both back to back)", flush=True)
    rows = speed(encs, data.queries, filler, args)
    if args.node_queries:
        node_row = real_node(torch_enc, cache, data.corpus, data.queries[: args.node_queries])
        rows.append(node_row)
    print(f"\nSpeed, onnx vs torch (load average at start {load1[0]:.2f})")
    columns = [c for c in rows[0] if c != "what"]
    print(table(rows, ["what", *columns, "torch texts/s", "onnx texts/s"]))
    load2 = os.getloadavg()
    import onnxruntime
    import torch

    path = write_json(
        args.out,
        {
            "exactness": exact,
            "speed": rows,
            "settings": {
                "texts": len(texts),
                "filler": filler_info,
                "singles": args.singles,
                "batches": args.batches,
                "check_batch": CHECK_BATCH,
                "check_threads": CHECK_THREADS,
                "node_queries": args.node_queries,
                "onnx_file": onnx_enc.backbone.path.name,
                "onnx_exported_this_run": fresh,
                "onnx_encoder_load_s": onnx_load,
                "torch_encoder_load_s": torch_load,
                "probe_diff": onnx_enc.backbone.probe_diff,
                "space": torch_enc.space.hex(),
                "onnx_space": onnx_enc.space.hex(),
                "commit": subprocess.run(
                    ["git", "describe", "--always", "--dirty"], capture_output=True, text=True
                ).stdout.strip(),
                "onnxruntime": onnxruntime.__version__,
                "torch": torch.__version__,
                "load_average_start": load1,
                "load_average_end": load2,
                "versus_chroma_running": bool(
                    subprocess.run(["pgrep", "-f", "versus_chroma"], capture_output=True).stdout
                ),
            },
        },
    )
    print(f"\nload average at end {load2[0]:.2f}; wrote {path}\n")
    print(markdown(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
