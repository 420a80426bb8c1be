"""Ingest through a real node's public paths, two-stage (this tree) side by side with the old
path (the embedding check before the store: ``--baseline-ref``, by default where this branch
left main), in one run.

    python benchmarks/ingest.py [--size 100000] [--records 20000] [--sync-size 100000]

Data: real texts (``--texts lessons``: 3,000 lesson-length texts of ~22 words, two cheat tips
or reference sentences joined; ``short``: every distinct eg/cheat/reference text, ~12 words),
encoded once (cached). Honest records sign those texts with their own codes, 64 authors, so
the embedding check passes them all (a text recurs under several authors: the checker
re-encodes every record, nothing is cached). The receiving node's data dir first holds
``--size`` synthetic records (replica.py's synthetic vectors, real codes, real signatures),
already checked, so every rate below is "at 100k".

Runs, each a real `zoonode start` process (author rate and flood limits lifted on receivers:
64 authors at the default 20/s could not offer 1,000/s):
1. ``/v1/records``: the honest records POSTed 256 a request by two clients; the rate at which
   they are acknowledged (stored durably, pending). Then the backlog drains while one client
   queries (the eg queries, one at a time, keep-alive), then with no queries; queries at
   100k on the idle node before the ingest are the reference.
2. gossip: a sender process (benchmarks/ingest_peer.py) publishes the same records; the rate
   at which the receiver stores them, the validated messages and how long the gossip reader
   waited for room in the 10,000-record ingest queue.
3. sync: a node with an empty data dir joins a peer holding ``--sync-size`` honest records;
   the rate at which it stores them, then queries while its backlog drains, beside the same
   queries on the peer first (the same records, all checked; each text recurs ~33 times
   there, which makes any search of that data read deeper for distinct clusters).
The baseline node runs 1-3 for ``--baseline-s`` each (at ~58/s it would take hours), and
``/v1/records`` with ``--baseline-records``. Last, the encoder's own batch rate in this process
with every node stopped: what "the backlog drains at the encoder's rate" compares with.
"""

from __future__ import annotations

import argparse
import hashlib
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
import msgpack
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from replica import synthetic, wires_for

from zoonode.experiences import now_ms
from zoonode.knowledge import KnowledgeBase
from zoonode.native.codec import compress_many
from zoonode.native.encoder import Encoder
from zoonode.native.space import data_dir
from zoonode.protocol import Experience, Op, decode, public_key_bytes, sign
from zoonode.store import Incoming

from common import table, write_json
from datasets import CACHE, load

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ZOONODE = str(Path(sys.executable).with_name("zoonode"))
API_RE = re.compile(r"HTTP API (\S+)")
ADDR_RE = re.compile(r"listening on (\S+)")
PEER_RE = re.compile(r"peer id (\S+)")
LIFTED = {
    "ZOONODE_NETWORK__AUTHOR_RATE": "1e9",
    "ZOONODE_NETWORK__AUTHOR_BURST": "1e9",
    "ZOONODE_NETWORK__FLOOD_RATE": "1e9",
    "ZOONODE_NODE__LOG_LEVEL": "warning",
}


# -- data -------------------------------------------------------------------------------------
def texts_and_vectors(enc: Encoder, kind: str) -> tuple[list[str], np.ndarray]:
    """``short``: every distinct real text (eg examples, cheat tips, reference corpus; ~12
    words). ``lessons``: 3,000 lesson-length texts (~22 words), two cheat tips or reference
    sentences joined, as the ~32-word lessons agents share. Encoded once, cached."""
    data = load()
    reference = (data_dir() / "reference_corpus.txt").read_text().splitlines()
    if kind == "short":
        texts = list(dict.fromkeys(t for t in data.queries + data.corpus + reference if t.strip()))
    else:
        pool = [t for t in data.corpus + reference if t.strip()]
        rng = np.random.default_rng(5)
        pairs = rng.integers(0, len(pool), size=(3000, 2))
        texts = list(dict.fromkeys(f"{pool[a].rstrip('.')}. {pool[b]}" for a, b in pairs))
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = CACHE / f"ingest-vectors-{digest}.npy"
    if path.exists():
        return texts, np.load(path)
    vectors = enc.encode_compact(texts, batch_size=64)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return texts, vectors


def honest_records(
    enc, texts, codes, keys, n: int, tag: str, start_ms: int, step_ms: int
) -> list[tuple[bytes, int]]:
    """``n`` honest records (wire, text index): text i % T by author i % 64 (distinct pairs
    up to lcm(T, 64), then another domain), created ``start_ms + i * step_ms``."""
    pairs = len(texts) * len(keys) // int(np.gcd(len(texts), len(keys)))
    authors = [public_key_bytes(k) for k in keys]
    out = []
    for i in range(n):
        t = i % len(texts)
        exp = Experience(
            op=Op.ADD,
            author=authors[i % len(keys)],
            space=enc.space,
            created_at=start_ms + i * step_ms,
            text=texts[t],
            domain=f"bench.{tag}.v{i // pairs}",
            confidence=0.5 + (i % 5) / 10,
            code=codes[t],
        )
        out.append((sign(exp, keys[i % len(keys)]).wire, t))
    return out


def fill(path: Path, enc: Encoder, items: list[tuple[bytes, np.ndarray]]) -> None:
    kb = KnowledgeBase(path, enc.space, enc.space_info.hidden, capacity=10**7, snapshot_every=10**7)
    for start in range(0, len(items), 512):
        kb.ingest([Incoming(decode(w), v) for w, v in items[start : start + 512]])
    kb.close()


def base_dir(enc: Encoder, vectors: np.ndarray, size: int) -> Path:
    """``size`` synthetic checked records (cached across runs)."""
    path = CACHE / f"ingest-base-{size}"
    if (path / "done").exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    extra = synthetic(vectors, size, np.random.default_rng(11))
    keys = [Ed25519PrivateKey.generate() for _ in range(64)]
    wires = wires_for(extra, enc.space_info, keys)
    fill(path, enc, list(zip(wires, extra, strict=True)))
    (path / "done").write_text("ok")
    return path


def peer_dir(enc, texts, vectors, codes, size: int, kind: str) -> Path:
    """``size`` honest checked records created over the last 20 days (sync lists ids per
    hour of creation: ~200 a bucket). Cached across runs."""
    path = CACHE / f"ingest-peer-{size}-{kind}"
    if (path / "done").exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    keys = [Ed25519PrivateKey.generate() for _ in range(64)]
    span = 20 * 86_400_000
    made = honest_records(enc, texts, codes, keys, size, "sync", now_ms() - span, span // size)
    fill(path, enc, [(w, vectors[t]) for w, t in made])
    (path / "done").write_text("ok")
    return path


# -- node processes ---------------------------------------------------------------------------
class NodeProc:
    def __init__(self, binary: str, data: Path, *, api: bool = True, **env: str) -> None:
        args = [binary, "start", "--data-dir", str(data), "--api", "127.0.0.1:0" if api else ""]
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **LIFTED, **env},
        )
        self.url = self.addr = self.peer = None
        for line in self.proc.stdout:
            if m := PEER_RE.search(line):
                self.peer = m.group(1)
            if (m := ADDR_RE.search(line)) and self.addr is None:
                self.addr = m.group(1)
            if m := API_RE.search(line):
                self.url = m.group(1)
                break
        assert self.url, f"node exited: {self.proc.wait()}"
        if "/p2p/" not in self.addr:
            self.addr += f"/p2p/{self.peer}"
        self.token = (data / "api.token").read_text().strip()
        self.http = httpx.Client(base_url=self.url, timeout=600)
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def status(self) -> dict:
        return self.http.get("/v1/status").json()

    def stored(self) -> int:
        return self.status()["counts"]["total"]

    def metric(self, name: str, labels: str = "") -> float:
        for line in self.http.get("/metrics").text.splitlines():
            if (line.startswith(name + " ") or line.startswith(name + "{")) and labels in line:
                return float(line.rsplit(" ", 1)[1])
        # A counter with no sample for these labels was never incremented: 0. A gauge: unknown.
        return 0.0 if name.endswith("_total") else float("nan")

    def on_demand(self) -> float:
        """Records checked on demand so far (from /metrics: no table scan, unlike status)."""
        text = self.http.get("/metrics").text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("zoonode_embedding_checks_total{") and 'path="on_demand"' in line
        )

    def stop(self) -> None:
        self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def copy_of(src: Path, work: Path, name: str) -> Path:
    dst = work / name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("done", "identity*", "api.*"))
    return dst


def post_all(node: NodeProc, wires: list[bytes], clients: int = 2) -> float:
    chunks = [wires[i : i + 256] for i in range(0, len(wires), 256)]
    errors: list[str] = []

    def work(part: list[list[bytes]]) -> None:
        with httpx.Client(base_url=node.url, timeout=600) as http:
            for chunk in part:
                r = http.post(
                    "/v1/records",
                    json={"wires": [w.hex() for w in chunk]},
                    headers={"authorization": f"Bearer {node.token}"},
                )
                results = r.json()["results"]
                errors.extend(x["error"]["code"] for x in results if "error" in x)

    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(chunks[i::clients],)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    return time.perf_counter() - started


def queries_for(node: NodeProc, queries: list[str], seconds: float) -> dict:
    """Queries one at a time for ``seconds``: latency percentiles (all, and split by whether
    the query had to check pending records on demand, read from the status counter after
    each query, outside the timing) and the backlog's drain meanwhile."""
    before = node.status()["backlog"]
    t0 = time.perf_counter()
    lat, plain, checking = [], [], []
    last = node.on_demand()
    i = busy = 0.0
    while time.perf_counter() - t0 < seconds + busy:
        t = time.perf_counter()
        node.http.post(
            "/v1/query", json={"text": queries[int(i) % len(queries)]}
        ).raise_for_status()
        ms = (time.perf_counter() - t) * 1000
        lat.append(ms)
        t = time.perf_counter()
        now = node.on_demand()
        busy += time.perf_counter() - t  # these reads do not eat the query window
        (checking if now > last else plain).append(ms)
        last = now
        i += 1

    def pct(values: list[float], q: float) -> float | None:
        return float(np.percentile(values, q)) if values else None

    elapsed = time.perf_counter() - t0
    after = node.status()["backlog"]
    return {
        "queries": len(lat),
        "query p50 ms": pct(lat, 50),
        "query p99 ms": pct(lat, 99),
        "queries with no check": len(plain),
        "no-check p50 ms": pct(plain, 50),
        "no-check p99 ms": pct(plain, 99),
        "checking p50 ms": pct(checking, 50),
        "checking p99 ms": pct(checking, 99),
        "drain /s": (after["checked"] - before["checked"]) / elapsed,
        "on-demand checks": after["on_demand"] - before["on_demand"],
        "picks left to the background": after.get("deferred", 0) - before.get("deferred", 0),
        "pending at end": after["pending"],
    }


def drain_for(node: NodeProc, seconds: float) -> float:
    before = node.status()["backlog"]["checked"]
    time.sleep(seconds)
    return (node.status()["backlog"]["checked"] - before) / seconds


def wait_stored(
    node: NodeProc, target: int, timeout: float, idle_s: float = 10.0
) -> tuple[float, int, float]:
    """Seconds from the first new record to the last one stored, and the count: until
    ``target`` are stored, nothing new came for ``idle_s``, or ``timeout`` after the first."""
    base = node.stored()
    first = last = None
    count = 0
    deadline = time.perf_counter() + 120  # for the first record
    while True:
        now = time.perf_counter()
        new = node.stored() - base
        if new > count:
            count, last = new, now
            if first is None:
                first, deadline = now, now + timeout
        if count >= target or now >= deadline or (last and now - last >= idle_s):
            return (last - first) if first else 0.0, count, now
        time.sleep(0.25)


# -- runs -------------------------------------------------------------------------------------
def run_records(binary, base, work, name, wires, queries, args, new: bool) -> dict:
    node = NodeProc(binary, copy_of(base, work, f"records-{name}"))
    try:
        row: dict = {"run": f"/v1/records, {name}"}
        if new:
            queries_for(node, queries, 3)  # warm-up
            idle = queries_for(node, queries, args.query_s / 2)
            row["idle query p50 ms"] = idle["query p50 ms"]
            row["idle query p99 ms"] = idle["query p99 ms"]
        seconds = post_all(node, wires)
        row |= {"records": len(wires), "seconds": seconds, "stored /s": len(wires) / seconds}
        if new:
            q = queries_for(node, queries, args.query_s)
            row |= {f"draining {k}": v for k, v in q.items()}
            row["drain /s, no queries"] = drain_for(node, args.drain_s)
        return row
    finally:
        node.stop()


def run_gossip(binary, base, work, name, wires, args, new: bool) -> dict:
    pub_dir = work / f"pub-{name}"
    pub_dir.mkdir()
    wires_file = pub_dir / "wires.msgpack"
    wires_file.write_bytes(msgpack.packb(wires))
    pub = subprocess.Popen(
        [sys.executable, str(HERE / "ingest_peer.py"), str(pub_dir), str(wires_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = pub.stdout.readline().split()
    addr = f"{line[1]}/p2p/{line[3]}" if "/p2p/" not in line[1] else line[1]
    node = NodeProc(binary, copy_of(base, work, f"recv-{name}"), ZOONODE_NETWORK__BOOTSTRAP=addr)
    try:
        timeout = 600 if new else args.baseline_s
        # What the validator ignored (queue full) never arrives: stop when nothing new comes.
        seconds, count, _ = wait_stored(node, len(wires), timeout, idle_s=5.0 if new else 1e9)
        messages = node.metric("zoonode_gossip_messages_in_total")
        row = {
            "run": f"gossip, {name}",
            "records": count,
            "seconds": seconds,
            "stored /s": count / seconds if seconds else 0.0,
            "messages validated": messages,
            "messages sent": -(-len(wires) // 128),
        }
        row["accepted by the validator"] = node.metric(
            "zoonode_gossip_records_total", 'reason="ok",verdict="accept"'
        )
        if new:
            row["ignored: backlog"] = node.metric(
                "zoonode_gossip_records_total", 'reason="backlog",verdict="ignore"'
            )
            row["reader wait s"] = node.metric("zoonode_gossip_reader_wait_seconds_total")
            row["pending at end"] = node.status()["backlog"]["pending"]
        return row
    finally:
        node.stop()
        pub.send_signal(signal.SIGTERM)
        pub.wait(timeout=60)


def run_sync(binary, peer_base, work, name, size, queries, args, new: bool) -> dict:
    peer = NodeProc(ZOONODE, copy_of(peer_base, work, f"peer-{name}"))
    reference = {}
    if new:  # the same data, all checked, alone on the machine: the query reference
        queries_for(peer, queries, 3)
        reference = queries_for(peer, queries, args.query_s / 2)
    fresh = work / f"join-{name}"
    node = NodeProc(binary, fresh, ZOONODE_NETWORK__BOOTSTRAP=peer.addr)
    try:
        timeout = 1800 if new else args.baseline_s
        seconds, count, _ = wait_stored(node, size, timeout, idle_s=40.0 if new else 1e9)
        row = {
            "run": f"sync from a peer of {size:,}, {name}",
            "records": count,
            "seconds": seconds,
            "stored /s": count / seconds if seconds else 0.0,
        }
        if new:
            queries_for(node, queries, 3)  # warm-up
            q = queries_for(node, queries, args.query_s)
            row |= {f"draining {k}": v for k, v in q.items()}
            row["peer (all checked) query p50 ms"] = reference["query p50 ms"]
            row["peer (all checked) query p99 ms"] = reference["query p99 ms"]
        return row
    finally:
        node.stop()
        peer.stop()


def baseline_binary(ref: str, work: Path) -> str:
    tree = work / "baseline"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), ref], check=True
    )
    subprocess.run([sys.executable, "-m", "venv", str(tree / ".venv")], check=True)
    site = next((tree / ".venv" / "lib").glob("python3*")) / "site-packages"
    base_site = next(Path(p) for p in sys.path if p.endswith("site-packages") and "main" in p)
    (site / "zz_base.pth").write_text(str(base_site) + "\n")
    subprocess.run(
        [
            str(tree / ".venv/bin/python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "-e",
            str(tree),
        ],
        check=True,
        capture_output=True,
    )
    return str(tree / ".venv/bin/zoonode")


def encoder_rate(
    enc: Encoder, texts: list[str], threads: int, n: int = 640, batch: int = 32
) -> float:
    """Texts/s in batches of ``batch`` (sorted by length inside each, as the node does)."""
    sample = [texts[i % len(texts)] for i in range(0, n * 7, 7)]
    enc.encode_compact(sample[:batch], batch, False, threads)
    t = time.perf_counter()
    for start in range(0, len(sample), batch):
        enc.encode_compact(sample[start : start + batch], batch, False, threads)
    return len(sample) / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = parser.add_argument
    add("--size", type=int, default=100_000, help="checked lessons the node holds first")
    add("--records", type=int, default=20_000, help="new records fed by /v1/records and gossip")
    add("--sync-size", type=int, default=100_000, help="records the peer holds for sync catch-up")
    add("--baseline-ref", default="", help="git ref of the one-stage node to compare with")
    add("--baseline-records", type=int, default=2048, help="records fed to the baseline node")
    add("--baseline-s", type=float, default=60.0, help="most seconds for the baseline run")
    add("--query-s", type=float, default=60.0, help="seconds of queries while the backlog drains")
    add("--drain-s", type=float, default=30.0, help="seconds to watch the backlog drain")
    add("--skip", nargs="*", default=[], help="parts to leave out: records gossip sync baseline")
    add("--texts", choices=["lessons", "short"], default="lessons", help="which real texts to sign")
    parser.add_argument("--name", default="ingest", help="results/NAME.json")
    parser.add_argument("--threads", type=int, default=0, help="encoder.threads of every node")
    args = parser.parse_args()
    if args.threads:
        LIFTED["ZOONODE_ENCODER__THREADS"] = str(args.threads)
    ref = (
        args.baseline_ref
        or subprocess.run(
            ["git", "-C", str(ROOT), "merge-base", "HEAD", "main"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    enc = Encoder.default()
    texts, vectors = texts_and_vectors(enc, args.texts)
    queries = load().queries
    t0 = time.perf_counter()
    codes = compress_many(enc.lift(vectors), enc.space_info.v_ref)
    base = base_dir(enc, vectors, args.size)
    keys = [Ed25519PrivateKey.generate() for _ in range(64)]
    # Created over the last hour, newest last: fresh lessons, as gossip brings them.
    made = honest_records(
        enc,
        texts,
        codes,
        keys,
        args.records,
        "ingest",
        now_ms() - 3_600_000,
        3_600_000 // args.records,
    )
    wires = [w for w, _ in made]
    peer = (
        peer_dir(enc, texts, vectors, codes, args.sync_size, args.texts)
        if "sync" not in args.skip
        else None
    )
    print(f"data ready in {time.perf_counter() - t0:.0f} s", flush=True)
    work = Path(tempfile.mkdtemp(prefix="zoo-ingest-"))
    rows: list[dict] = []
    load_start = os.getloadavg()
    try:
        old = baseline_binary(ref, work) if "baseline" not in args.skip else None
        plan = []
        if "records" not in args.skip:
            plan.append(
                lambda: run_records(ZOONODE, base, work, "two-stage", wires, queries, args, True)
            )
            if old:
                plan.append(
                    lambda: run_records(
                        old,
                        base,
                        work,
                        "baseline",
                        wires[: args.baseline_records],
                        queries,
                        args,
                        False,
                    )
                )
        if "gossip" not in args.skip:
            plan.append(lambda: run_gossip(ZOONODE, base, work, "two-stage", wires, args, True))
            if old:
                plan.append(lambda: run_gossip(old, base, work, "baseline", wires, args, False))
        if peer is not None:
            plan.append(
                lambda: run_sync(
                    ZOONODE, peer, work, "two-stage", args.sync_size, queries, args, True
                )
            )
            if old:
                plan.append(
                    lambda: run_sync(
                        old, peer, work, "baseline", args.sync_size, queries, args, False
                    )
                )
        for step in plan:
            row = step()
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if (work / "baseline").exists():
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / "baseline")]
            )
        shutil.rmtree(work, ignore_errors=True)
    rate = encoder_rate(enc, texts, 1)
    rate_default = encoder_rate(enc, texts, enc.threads)
    # The nodes' runtime (``encoder.runtime = "onnx"``, the default) in the checker's batches
    # of 16 on one thread: the gauge "the backlog drains at the encoder's rate" compares with.
    onnx = Encoder.default(runtime="onnx")
    rate_onnx = encoder_rate(onnx, texts, 1, batch=16)
    columns = ["run", "records", "seconds", "stored /s"]
    print(
        f"\nIngest at {args.size:,} records (baseline: {ref[:10]}); encoder alone, batches "
        f"of 32 (torch): {rate:.0f}/s on 1 thread, {rate_default:.0f}/s on {enc.threads}; "
        f"the nodes' runtime (onnx), batches of 16 on 1 thread (the checker's): {rate_onnx:.0f}/s"
    )
    print(table(rows, columns))
    for row in rows:
        extra = {k: v for k, v in row.items() if k not in columns}
        if extra:
            print(row["run"], json.dumps(extra))
    path = write_json(
        args.name,
        {
            "rows": rows,
            "encoder batch-32 rate /s, 1 thread": rate,
            "onnx encoder batch-16 rate /s, 1 thread (the checker's)": rate_onnx,
            f"encoder batch-32 rate /s, {enc.threads} threads": rate_default,
            "baseline ref": ref,
            "code": subprocess.run(
                ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                capture_output=True,
                text=True,
            ).stdout.strip(),
            "load average start/end": [load_start, os.getloadavg()],
            "settings": vars(args)
            | {
                "authors": 64,
                "distinct texts": len(texts),
                "mean words": float(np.mean([len(t.split()) for t in texts])),
            },
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
