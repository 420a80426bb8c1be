"""zoonode against a plain vector store (Chroma) when nobody attacks: quality, latency, ingest.

    cd benchmarks && python versus_chroma.py [--sizes 20000 100000] [--window 1536] [--modes own 64]

Needs the benchmark extra: ``pip install -e '.[bench]'`` (chromadb). Both systems run as
their own server processes and are used over HTTP with keep-alive, as an agent would use
them: Chroma's server (``chroma run``, persistent, default HNSW, fed the same MiniLM vectors
by the client, which encodes the texts with zoonode's own encoder) and a real ``zoonode
start`` process per author layout:

- ``own``: one author, the node's own identity; lessons shared through
  ``POST /v1/experiences/batch`` (the node encodes and signs them);
- ``64``: 64 authors, records signed beforehand (corpus.signed) and imported through
  ``POST /v1/records`` (the node checks each code against its own encoding of the text).

Lessons: benchmarks/corpus.py (the 1,334 cheat tips among real filler text: docstring
paragraphs, benchmarks/filler.py), 20k and 100k; queries: the 443 eg examples, relevant = the
tips of the same command. Encoded vectors are cached in .bench-cache/.

Ingest through the API, the text's encoding included on both sides, is timed over windows of
``--window`` lessons (1,536: six API batches of 256) from lesson 1,536 and just below each
size (e.g. 18,464-20,000 and 98,464-100,000). Between windows each store is filled to the next
window with the cached vectors: Chroma through its client, zoonode in process with
KnowledgeBase.ingest while the node is stopped (what publish and import store, minus the
encoder and HTTP). ``/v1/records`` stores a record at once as pending and checks its embedding
in the background (issue 23): after each window the benchmark waits until the backlog is
empty, reports the rate with that wait included too, and so never measures queries beside a
draining backlog. Queries: k = 10 (Chroma ``n_results=10``), the query's encoding included on
both sides (Chroma: the client encodes, then queries), two passes after 10 warm-up queries,
each query asked of every system in turn (who goes first rotating query by query); quality
from the first pass.
RSS: the server processes after the queries (Chroma's client also holds the
encoder; it is not counted); disk: the data directories.
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

from zoonode.identity import IDENTITY_FILE, load_or_create_identity
from zoonode.native.encoder import Encoder

from common import table, write_json
from corpus import DOMAIN, author_keys, fill, load, signed

ZOONODE = str(Path(sys.executable).with_name("zoonode"))
CHROMA = str(Path(sys.executable).with_name("chroma"))
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")  # offline: no telemetry attempts
API_RE = re.compile(r"HTTP API (\S+)")
K = 10
BATCH = 256  # lessons per API request (zoonode's MAX_BATCH)


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory in MB from /proc: ``VmRSS`` (all of it), ``RssAnon`` (its
    own heap) or ``RssFile`` (file pages it maps: a memory-mapped database's pages count
    here, though the kernel's page cache holds them either way and may drop them)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def disk_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ZooNode:
    """A real ``zoonode start`` process on a data dir, restarted around in-process fills."""

    def __init__(self, data: Path, mode: str, enc: Encoder) -> None:
        self.data, self.mode, self.enc = data, mode, enc
        self.name = f"zoonode ({'1 author' if mode == 'own' else '64 authors'})"
        self.proc: subprocess.Popen | None = None
        self.http: httpx.Client | None = None
        self.size = 0
        self.timings: list[dict[str, float]] = []  # Server-Timing of each query, ms
        load_or_create_identity(data / IDENTITY_FILE)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [ZOONODE, "start", "--data-dir", str(self.data), "--api", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        url = next(m.group(1) for line in self.proc.stdout if (m := API_RE.search(line)))
        token = (self.data / "api.token").read_text().strip()
        self.http = httpx.Client(
            base_url=url, timeout=600, headers={"authorization": f"Bearer {token}"}
        )

    def stop(self) -> None:
        if self.http:
            self.http.close()
            self.http = None
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=120)
            self.proc = None

    def bulk(self, corpus, end: int) -> float:
        """Fill to ``end`` lessons in process (the node stopped)."""
        running = self.proc is not None
        if running:
            self.stop()
        seconds = fill(self.data, self.enc, corpus.texts, corpus.vectors, self.size, end, self.mode)
        self.size = end
        if running:
            self.start()
        return seconds

    def prepare(self, corpus, start: int, end: int) -> None:
        """The 64 authors' records for lessons start..end, signed beforehand (not timed)."""
        self.wires: dict[int, str] = {}
        if self.mode == "64":
            records = signed(
                self.enc, author_keys(), corpus.texts[start:end], corpus.vectors[start:end], start
            )
            self.wires = {start + i: r.wire.hex() for i, r in enumerate(records)}

    def ingest(self, corpus, a: int, b: int) -> float:
        """Lessons a..b through the API, the node encoding them; returns seconds."""
        assert self.http is not None
        t0 = time.perf_counter()
        if self.mode == "own":
            body = {
                "experiences": [
                    {"text": t, "domain": DOMAIN, "confidence": 0.7} for t in corpus.texts[a:b]
                ]
            }
            r = self.http.post("/v1/experiences/batch", json=body)
        else:
            r = self.http.post("/v1/records", json={"wires": [self.wires[i] for i in range(a, b)]})
        r.raise_for_status()
        seconds = time.perf_counter() - t0
        bad = [x for x in r.json()["results"] if x.get("outcome") != "accepted"]
        if len(bad) > 2:  # two cheat tips repeat word for word: duplicates there
            raise RuntimeError(f"{self.name}: {bad[:3]}")
        self.size = b
        return seconds

    def drain(self, timeout: float = 3600.0) -> float:
        """Seconds until no record waits for the embedding check (``/v1/status``)."""
        assert self.http is not None
        t0 = time.perf_counter()
        while self.http.get("/v1/status").json()["backlog"]["pending"]:
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"{self.name}: backlog not drained in {timeout:.0f} s")
            time.sleep(0.2)
        return time.perf_counter() - t0

    def query(self, text: str) -> tuple[list[str], list[float], tuple[int, int] | None]:
        """Texts, relevances, and how many candidates cleared the query's floor, with how
        many of those were near-copies of an answer withheld by the Sybil rule (another
        author's copy of a lesson already in the answer; selection.py)."""
        assert self.http is not None
        r = self.http.post("/v1/query", json={"text": text, "k": K})
        r.raise_for_status()
        body = r.json()
        sel = body["selected"]
        self.timings.append(
            {
                name.strip(): float(dur)
                for name, dur in (
                    part.split(";dur=") for part in r.headers["server-timing"].split(",")
                )
            }
        )
        reasons = body["down_weighted"]
        clear = body["considered"] - reasons.get("below_similarity_floor", 0)
        copies = reasons.get("near_duplicate_in_answer", 0)
        return [s["text"] for s in sel], [s["relevance"] for s in sel], (clear, copies)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def disk(self) -> float:
        return disk_mb(self.data)


class Chroma:
    """Chroma's server process (``chroma run``), used through chromadb.HttpClient."""

    name = "Chroma"

    def __init__(self, data: Path, enc: Encoder) -> None:
        self.data, self.enc = data, enc
        self.size = 0
        self.timings: list[dict[str, float]] = []  # no Server-Timing
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import chromadb

        port = free_port()
        self.proc = subprocess.Popen(
            [CHROMA, "run", "--path", str(self.data), "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 120
        while True:
            try:
                self.client = chromadb.HttpClient(host="127.0.0.1", port=port)
                self.client.heartbeat()
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        self.collection = self.client.get_or_create_collection("lessons")

    def stop(self) -> None:
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=120)
            self.proc = None

    def _add(self, corpus, a: int, b: int, vectors: np.ndarray) -> None:
        self.collection.add(
            ids=[str(i) for i in range(a, b)],
            embeddings=vectors,
            documents=corpus.texts[a:b],
            metadatas=[{"domain": DOMAIN, "confidence": 0.7} for _ in range(a, b)],
        )

    def bulk(self, corpus, end: int) -> float:
        t0 = time.perf_counter()
        for a in range(self.size, end, 1000):
            b = min(end, a + 1000)
            self._add(corpus, a, b, corpus.vectors[a:b])
        self.size = end
        return time.perf_counter() - t0

    def prepare(self, corpus, start: int, end: int) -> None:
        pass

    def ingest(self, corpus, a: int, b: int) -> float:
        """The client encodes the batch (as zoonode's node does), then adds it."""
        t0 = time.perf_counter()
        self._add(corpus, a, b, self.enc.encode_compact(corpus.texts[a:b]))
        self.size = b
        return time.perf_counter() - t0

    def drain(self) -> float:
        """Chroma stores what it is given: nothing is checked afterwards."""
        return 0.0

    def query(self, text: str) -> tuple[list[str], list[float], tuple[int, int] | None]:
        q = self.enc.encode_compact(text)
        r = self.collection.query(
            query_embeddings=q, n_results=K, include=["documents", "distances"]
        )
        # Default space "l2" returns squared distances; unit vectors: cos = 1 - d / 2.
        return list(r["documents"][0]), [1 - d / 2 for d in r["distances"][0]], None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def disk(self) -> float:
        return disk_mb(self.data)


def quality(answers: list[list[str]], relevant: list[set[str]]) -> dict[str, float]:
    recall, hit, mrr = [], [], []
    for got, rel in zip(answers, relevant, strict=True):
        if not rel:
            continue
        top5 = set(got[:5])
        recall.append(len(top5 & rel) / min(5, len(rel)))
        hit.append(float(bool(top5 & rel)))
        first = next((r for r, t in enumerate(got[:K]) if t in rel), None)
        mrr.append(0.0 if first is None else 1.0 / (first + 1))
    return {
        "Recall@5": float(np.mean(recall)),
        "Hit@5": float(np.mean(hit)),
        "MRR@10": float(np.mean(mrr)),
    }


def measure_queries(systems: list, corpus, size: int, passes: int = 2) -> dict[str, dict]:
    """Every query is asked of every system in turn (who goes first rotating query by query),
    so that a burst of load from other processes on this shared machine falls on all of them
    alike; ``passes`` passes, quality from the first. Besides each system's p50/p99, the
    median over queries of the per-query latency ratio to Chroma (paired, side by side)."""
    relevant = [{corpus.texts[i] for i in rel if i < size} for rel in corpus.relevant]
    out: dict[str, dict] = {
        s.name: {"latency": [], "answers": [], "scores": [], "clear": []} for s in systems
    }
    load = [os.getloadavg()[0]]
    for s in systems:
        for q in corpus.queries[:10]:
            s.query(q)
    for s in systems:
        s.timings = []
    j = 0
    for p in range(passes):
        for q in corpus.queries:
            turn = systems[j % len(systems) :] + systems[: j % len(systems)]
            j += 1
            for s in turn:
                t = time.perf_counter()
                texts, scores, clear = s.query(q)
                out[s.name]["latency"].append((time.perf_counter() - t) * 1000)
                if p == 0:
                    out[s.name]["answers"].append(texts)
                    out[s.name]["scores"].append(scores)
                    out[s.name]["clear"].append(clear)
        load.append(os.getloadavg()[0])
    chroma = out["Chroma"]
    rows = {}
    for s in systems:
        o = out[s.name]
        counts = [len(a) for a in o["answers"]]
        empty_with_relevant = sum(
            1
            for got, c_got, c_scores, rel in zip(
                o["answers"], chroma["answers"], chroma["scores"], relevant, strict=True
            )
            if not got
            and any(t in rel and sc >= 0.3 for t, sc in zip(c_got[:5], c_scores[:5], strict=True))
        )
        short = sum(
            1
            for n, clear in zip(counts, o["clear"], strict=True)
            if clear is not None and n < min(K, clear[0])
        )
        short_distinct = sum(
            1
            for n, clear in zip(counts, o["clear"], strict=True)
            if clear is not None and n < min(K, clear[0] - clear[1])
        )
        paired = np.array(o["latency"]) / np.array(chroma["latency"])
        rows[s.name] = {
            **quality(o["answers"], relevant),
            "results k=5": float(np.mean([min(5, c) for c in counts])),
            "results k=10": float(np.mean(counts)),
            "empty": sum(1 for c in counts if c == 0),
            "empty, Chroma top 5 relevant >= 0.3": empty_with_relevant,
            "short of k with k clearing the floor": short,
            "short of k, other authors' near-copies of answers not counted": short_distinct,
            "query p50 ms": float(np.percentile(o["latency"], 50)),
            "query p99 ms": float(np.percentile(o["latency"], 99)),
            "paired p50 ratio": float(np.median(paired)),
            # zoonode's Server-Timing: each stage's median, and what the client saw beyond the
            # handler (HTTP server, loopback, client), per query
            **(
                {
                    f"node {stage} p50 ms": float(np.median([t[stage] for t in s.timings]))
                    for stage in s.timings[0]
                }
                | {
                    "outside the handler p50 ms": float(
                        np.median(np.array(o["latency"]) - [t["app"] for t in s.timings])
                    )
                }
                if s.timings
                else {}
            ),
            "rss MB": rss_mb(s.pid),
            "rss anon MB": rss_mb(s.pid, "RssAnon"),
            "rss file MB": rss_mb(s.pid, "RssFile"),
            "disk MB": s.disk(),
            "load average (1 min) during queries": [round(x, 2) for x in load],
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[20_000, 100_000],
        help="store sizes at which queries are measured (lessons); 100k encodes ~100k texts "
        "once (cached in .bench-cache/)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=1536,
        help="lessons per timed ingest window (the first from this many lessons, the others "
        "just below each size)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["own", "64"],
        choices=["own", "64"],
        help="zoonode layouts: own (one author, /v1/experiences/batch), 64 (64 authors, "
        "records signed beforehand, /v1/records)",
    )
    parser.add_argument(
        "--name",
        default="versus-chroma",
        help="results/NAME.json (versus_chroma_table.py reads results/versus-chroma.json)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="encoder threads of both sides (the node's encoder.threads, this client's); "
        "1 by default: on a shared 2-core machine 2 threads stall (p50 74 ms vs 12 ms measured)",
    )
    parser.add_argument(
        "--runtime",
        default="onnx",
        choices=["onnx", "torch"],
        help="encoder runtime of both sides (the nodes' encoder.runtime and the Chroma "
        "client's): the same on both, so the comparison is of the stores, not the runtimes",
    )
    args = parser.parse_args()
    if min(args.sizes) < 2 * args.window:
        # The first window (from --window lessons) and the last one below each size would
        # overlap: the second would ingest lessons already stored (a review ran --sizes 2000).
        parser.error(
            f"every size must be at least twice --window ({2 * args.window}): "
            f"e.g. --sizes {min(args.sizes)} --window {min(args.sizes) // 2}"
        )
    os.environ["ZOONODE_ENCODER__THREADS"] = str(args.threads)  # the node processes
    os.environ["ZOONODE_ENCODER__RUNTIME"] = args.runtime
    import torch

    torch.set_num_threads(args.threads)
    t_start = time.time()
    enc = Encoder.default(runtime=args.runtime, threads=args.threads)
    sizes = sorted(args.sizes)
    corpus = load(sizes[-1], enc)
    work = Path(tempfile.mkdtemp(prefix="zoo-vs-chroma-"))
    chroma = Chroma(work / "chroma", enc)
    nodes = [ZooNode(work / f"zoonode-{m}", m, enc) for m in args.modes]
    systems = [chroma, *nodes]
    windows = sorted({args.window, *(s - args.window for s in sizes)})
    ingest: dict[str, list[dict]] = {s.name: [] for s in systems}
    bulk_s: dict[str, float] = {s.name: 0.0 for s in systems}
    results: dict[int, dict] = {}
    try:
        for s in systems:
            s.start()
        for start in windows:
            for s in systems:
                bulk_s[s.name] += s.bulk(corpus, start)
            # Side by side: batch by batch in turn (rotating who goes first), so that every
            # system meets the same load on this shared machine.
            end = start + args.window
            for s in systems:
                s.prepare(corpus, start, end)
            seconds = {s.name: 0.0 for s in systems}
            for j, a in enumerate(range(start, end, BATCH)):
                turn = systems[j % len(systems) :] + systems[: j % len(systems)]
                for s in turn:
                    seconds[s.name] += s.ingest(corpus, a, min(end, a + BATCH))
            for s in systems:
                # Records imported through /v1/records are stored pending and checked in the
                # background: wait until every one is checked (one system at a time, the
                # others idle), so queries never meet a draining backlog and the rate with
                # the embedding check is honest.
                drain = s.drain()
                rate = args.window / seconds[s.name]
                checked = args.window / (seconds[s.name] + drain)
                ingest[s.name].append(
                    {
                        "from": start,
                        "to": end,
                        "docs/s": rate,
                        "docs/s, embedding check included": checked,
                        "drain s after the window": drain,
                        "load": os.getloadavg()[0],
                    }
                )
                print(
                    f"ingest {s.name} {start}-{end}: {rate:.1f}/s stored, {checked:.1f}/s checked",
                    flush=True,
                )
            if start + args.window in sizes:
                size = start + args.window
                results[size] = measure_queries(systems, corpus, size)
                rows_now = [{"system": k, **v} for k, v in results[size].items()]
                print(table(rows_now, list(rows_now[0])), flush=True)
    finally:
        for s in systems:
            s.stop()
    rows = []
    base = {size: results[size][chroma.name] for size in results}
    for size in sorted(results):
        for name, r in results[size].items():
            first = ingest[name][0]["docs/s"]
            window = next(w for w in ingest[name] if w["to"] == size)
            at = window["docs/s"]
            row = {
                "lessons": size,
                "system": name,
                **r,
                "ingest docs/s": at,
                "ingest docs/s, check included": window["docs/s, embedding check included"],
                "ingest vs 1k": at / first,
            }
            for key in ("Recall@5", "Hit@5", "MRR@10", "query p50 ms", "ingest docs/s"):
                ref = base[size][key] if key != "ingest docs/s" else _at(ingest, "Chroma", size)
                row[f"{key} ratio"] = row[key] / ref if ref else float("nan")
            rows.append(row)
    columns = [
        "lessons",
        "system",
        "Recall@5",
        "Hit@5",
        "MRR@10",
        "results k=5",
        "results k=10",
        "empty",
        "empty, Chroma top 5 relevant >= 0.3",
        "short of k with k clearing the floor",
        "short of k, other authors' near-copies of answers not counted",
        "query p50 ms",
        "query p99 ms",
        "ingest docs/s",
        "ingest docs/s, check included",
        "ingest vs 1k",
        "rss MB",
        "disk MB",
    ]
    print(table(rows, columns))
    ratios = [
        "Recall@5 ratio",
        "Hit@5 ratio",
        "MRR@10 ratio",
        "query p50 ms ratio",
        "paired p50 ratio",
    ]
    print(table(rows, ["lessons", "system", *ratios, "ingest docs/s ratio"]))
    path = write_json(
        args.name,
        {
            "rows": rows,
            "ingest windows": ingest,
            "bulk fill s (cached vectors, not timed as ingest)": bulk_s,
            "settings": {
                "k": K,
                "window": args.window,
                "api batch": BATCH,
                "queries": len(corpus.queries),
                "chroma": _version("chromadb"),
                "zoonode": _version("zoonode"),
                "encoder threads (both sides)": args.threads,
                "encoder runtime (both sides)": args.runtime,
            },
            "filler": corpus.filler,
            "seconds": time.time() - t_start,
        },
    )
    shutil.rmtree(work, ignore_errors=True)
    print(f"\nwrote {path}")


def _at(ingest: dict, name: str, size: int) -> float:
    return next(w["docs/s"] for w in ingest[name] if w["to"] == size)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
