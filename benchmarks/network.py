"""Gossip on real processes over loopback: throughput, propagation, bytes, CPU.

    python benchmarks/network.py [--records 2000] [--nodes 20]

Each node is its own `zoonode` process (benchmarks/netnode.py: a real Node with real libp2p,
delivery logged at gossip validation; the embedding check and the store are skipped there, so
these are the network's numbers; the store side is bounded by the encoder, see encoder.py).
Records are real signed experiences (reference corpus + cheat tips, re-worded by index).
1. Throughput: 1 publisher -> 4 subscribers, all records as fast as backpressure allows;
   batches of 128 records per message vs one record per message.
2. Propagation: N nodes, each dialling 2 earlier ones; 200 records in batches of 8, paced
   at 50 ms; latency from publish to delivery at every node, p50/p99.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zoonode.experiences import create_experiences
from zoonode.native.encoder import Encoder
from zoonode.native.space import data_dir
from zoonode.net.validation import encode_batch

from common import table, write_json
from datasets import CACHE, load

HERE = Path(__file__).resolve().parent


def wires(n: int) -> list[bytes]:
    path = CACHE / f"net-wires-{n}.msgpack"
    if path.exists():
        return msgpack.unpackb(path.read_bytes())
    texts = load().corpus + (data_dir() / "reference_corpus.txt").read_text().splitlines()
    texts = [f"{texts[i % len(texts)]} (note {i})" for i in range(n)]
    key = Ed25519PrivateKey.generate()
    records = create_experiences(
        Encoder.default(),
        key,
        [{"text": t, "domain": "bench.network", "confidence": 0.5} for t in texts],
    )
    out = [r.wire for r in records]
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgpack.packb(out))
    return out


def start(base: Path, role: str, batch: int, bootstrap: list[str]) -> tuple:
    base.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "netnode.py"), str(base), role, str(batch), *bootstrap],
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("addr "):
            return proc, line.split()[1]
    raise RuntimeError(f"node {base} exited with {proc.wait()}")


def stop_all(procs: list) -> list[dict]:
    for proc, _ in procs:
        proc.send_signal(signal.SIGTERM)
    out = []
    for proc, base in procs:
        proc.wait(timeout=60)
        out.append(json.loads((base / "stats.json").read_text()))
    return out


def throughput(all_wires: list[bytes], batch: int, work: Path) -> dict:
    pub_dir = work / f"pub-{batch}"
    pub_dir.mkdir(parents=True)
    (pub_dir / "wires.msgpack").write_bytes(msgpack.packb(all_wires))
    (pub_dir / "settle").write_text("3")
    (pub_dir / "pace").write_text("0")
    subs = [start(work / f"sub{batch}-{i}", "sub", batch, []) for i in range(4)]
    pub, _ = start(pub_dir, "pub", batch, [addr for _, addr in subs])
    for line in pub.stdout:
        if line.startswith("published"):
            break
    time.sleep(5 + len(all_wires) / 300)
    stats = stop_all(
        [(pub, pub_dir)] + [(p, work / f"sub{batch}-{i}") for i, (p, _) in enumerate(subs)]
    )
    first = min(stats[0]["published"].values())
    rates, delivered = [], []
    for s in stats[1:]:
        times = sorted(s["seen"].values())
        delivered.append(len(times))
        rates.append(len(times) / max(times[-1] - first, 1e-6) if times else 0.0)
    return {
        "records per message": batch,
        "records": len(all_wires),
        "delivered per subscriber": delivered,
        "records/s per subscriber (median)": statistics.median(rates),
        "payload bytes/record": len(encode_batch(all_wires[:batch])) / batch,
    }


def propagation(all_wires: list[bytes], nodes: int, work: Path) -> dict:
    rng = random.Random(5)
    pub_dir = work / "prop-0"
    pub_dir.mkdir(parents=True)
    (pub_dir / "wires.msgpack").write_bytes(msgpack.packb(all_wires))
    (pub_dir / "settle").write_text("8")
    (pub_dir / "pace").write_text("0.05")
    procs, addrs = [], []
    for i in range(1, nodes):
        peers = rng.sample(addrs, min(2, len(addrs)))
        proc, addr = start(work / f"prop-{i}", "sub", 8, peers)
        procs.append((proc, work / f"prop-{i}"))
        addrs.append(addr)
    pub, _ = start(pub_dir, "pub", 8, rng.sample(addrs, 2))
    for line in pub.stdout:
        if line.startswith("published"):
            break
    time.sleep(10)
    stats = stop_all([(pub, pub_dir), *procs])
    published = stats[0]["published"]
    per_delivery, to_all, missing = [], [], 0
    for record_id, t0 in published.items():
        lat = [s["seen"][record_id] - t0 for s in stats[1:] if record_id in s["seen"]]
        missing += (nodes - 1) - len(lat)
        per_delivery += lat
        if len(lat) == nodes - 1:
            to_all.append(max(lat))
    relays = stats[1:]
    cpu = [
        (s["cpu_s"] - s["cpu_at_first"]) / max(len(s["seen"]), 1) * 1000
        for s in relays
        if s["cpu_at_first"] is not None
    ]
    return {
        "nodes": nodes,
        "records": len(published),
        "deliveries missing": missing,
        "p50 ms (one node)": float(np.percentile(per_delivery, 50) * 1000),
        "p99 ms (one node)": float(np.percentile(per_delivery, 99) * 1000),
        "p50 ms (all nodes)": float(np.percentile(to_all, 50) * 1000) if to_all else None,
        "p99 ms (all nodes)": float(np.percentile(to_all, 99) * 1000) if to_all else None,
        "CPU ms per relayed record (median)": statistics.median(cpu) if cpu else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--nodes", type=int, default=20)
    args = parser.parse_args()
    all_wires = wires(args.records)
    work = Path(tempfile.mkdtemp(prefix="zoo-netbench-"))
    rows = [throughput(all_wires, 128, work), throughput(all_wires[:300], 1, work)]
    print("\n1 publisher -> 4 subscribers (real processes, loopback)")
    print(table(rows, list(rows[0])))
    prop = propagation(all_wires[:200], args.nodes, work)
    print(f"\nPropagation across {args.nodes} processes")
    print(table([prop], list(prop)))
    path = write_json("network", {"throughput": rows, "propagation": prop})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
