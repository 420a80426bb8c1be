"""A real default node and a real node on another backbone exchange lessons at default
settings (the issue's end-to-end run): acceptance both ways, bans, and cross-backbone retrieval
of the 10 target lessons, local (after gossip) and federated (sync kept out of the way).

    python benchmarks/hetero_nodes.py [--other mpnet|l3] [--extra 200]

Two nodes in one trio run with real libp2p hosts on 127.0.0.1 (tests/netutil.py's way), each
with its own encoder: l6 (the anchor, default) and the other backbone with the head and
reference vectors from benchmarks/hetero_vectors.py (fitted on the 4,000 shipped anchors).
Published: the 40 shipped lessons split by parity, plus ``--extra`` held-out cheat tips per
side (texts no fit saw). Writes results/hetero-nodes-<other>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
import trio
from hetero_vectors import backbone, vectors

from zoonode.native.encoder import Encoder
from zoonode.native.space import load_space
from zoonode.node import Node
from zoonode.node.antientropy import PeerSync

from common import write_json
from datasets import load

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from netutil import node_config, wait_meshed, wait_until


def _data(name: str) -> list[dict]:
    text = (resources.files("zoonode") / "data" / name).read_text()
    return [json.loads(line) for line in text.splitlines()]


def other_encoder(name: str) -> Encoder:
    v = vectors(name)
    b = backbone(name)
    refs = np.concatenate([v["reference"], v["anchors"]])
    return Encoder(b, load_space(), v["adapter"], refs)


async def exchange(tmp: Path, other: Encoder, extra: list[str]) -> dict:
    lessons = [{**x, "confidence": 0.8} for x in _data("lessons.jsonl")]
    targets = _data("sim_targets.jsonl")
    tips = [{"text": t, "domain": "shell.tips", "confidence": 0.6} for t in extra]
    out: dict = {}
    async with trio.open_nursery() as nursery:
        a = Node(node_config(tmp / "a"), encoder=Encoder.default())
        b = Node(node_config(tmp / "b"), encoder=other)
        for node in (a, b):
            await nursery.start(node.run)
        # Federated first: each holds its half of the targets, unshared (no gossip, no sync).
        ids: dict[str, bytes] = {}
        for node, parity in ((a, 0), (b, 1)):
            items = [lessons[t["lesson"]] for t in targets if t["lesson"] % 2 == parity]
            results = await node.ingest.import_records([r.wire for r in _sign(node, items)])
            ids |= {i["text"]: rid for i, (rid, _) in zip(items, results, strict=True)}
        for node, peer in ((a, b), (b, a)):
            node.antientropy.peers[peer.peer_id] = PeerSync("ok", float("inf"))
        await b.connect(a.info().addrs[0])
        await wait_meshed(a, b)
        fed = {"l6 asks other": 0, "other asks l6": 0}
        for t in targets:
            asker, key = (b, "other asks l6") if t["lesson"] % 2 == 0 else (a, "l6 asks other")
            sel, _ = await asker.query(t["query"], federated=True)
            chosen = {s.candidate.id for s in sel.selected}
            fed[key] += ids[lessons[t["lesson"]]["text"]] in chosen
        out["federated_found"] = fed
        # Gossip: the 30 other lessons by parity plus the extra held-out tips.
        held = {0: [], 1: []}
        for i, item in enumerate(lessons):
            if item["text"] not in ids:
                held[i % 2].append(item)
        half = len(tips) // 2
        sent: dict[str, list[bytes]] = {}
        t0 = time.perf_counter()
        for node, name, items in (
            (a, "l6", held[0] + tips[:half]),
            (b, "other", held[1] + tips[half:]),
        ):
            published = await node.publish(items)
            sent[name] = [rid for rid, _ in published]
        for node, name in ((b, "l6"), (a, "other")):
            await wait_until(
                lambda n=node, s=sent[name]: all(n.kb.store.has(i) for i in s), 600, "delivery"
            )
            await wait_until(lambda n=node: n.kb.backlog.total == 0, 1200, "the check")
        out["exchange_s"] = time.perf_counter() - t0
        for node, name, receiver in ((b, "l6", "other"), (a, "other", "l6")):
            rows = [node.kb.get(i) for i in sent[name]]
            ok = sum(r is not None and not r.pending for r in rows)
            out[f"{name} -> {receiver}"] = {
                "sent": len(rows),
                "accepted": ok,
                "share": ok / len(rows),
            }
        out["banned_on_l6"] = len(a.banned)
        out["banned_on_other"] = len(b.banned)
        out["rejected"] = {
            "l6": a.checker.status()["rejected"],
            "other": b.checker.status()["rejected"],
        }
        # Local retrieval: the target lessons now travel by sync between the two (restore it).
        for node, peer in ((a, b), (b, a)):
            node.antientropy.peers[peer.peer_id] = PeerSync("ok", 0.0)
        for node in (a, b):
            await wait_until(
                lambda n=node: all(n.kb.store.has(i) for i in ids.values()), 600, "sync"
            )
            await wait_until(lambda n=node: n.kb.backlog.total == 0, 600, "the check")
        local = {"l6 asks": 0, "other asks": 0}
        for t in targets:
            asker, key = (b, "other asks") if t["lesson"] % 2 == 0 else (a, "l6 asks")
            sel, _ = await asker.query(t["query"])
            local[key] += ids[lessons[t["lesson"]]["text"]] in {
                s.candidate.id for s in sel.selected
            }
        out["local_found"] = local
        nursery.cancel_scope.cancel()
    return out


async def settled(node: Node, ids: list[bytes], timeout: float = 1200.0) -> None:
    """Every id stored (pending at first) and nothing left waiting for the check."""
    await wait_until(lambda: all(node.kb.store.has(i) for i in ids), timeout, "delivery")
    await wait_until(lambda: node.kb.backlog.total == 0, timeout, "the embedding check")


def _sign(node: Node, items: list[dict]):
    from zoonode.experiences import create_experiences

    return create_experiences(node.encoder, node.key, items)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--other", default="mpnet", choices=["mpnet", "l3"])
    parser.add_argument("--extra", type=int, default=200)
    args = parser.parse_args()
    data = load()
    extra = data.corpus[:: max(1, len(data.corpus) // args.extra)][: args.extra]
    with tempfile.TemporaryDirectory() as tmp:
        out = trio.run(exchange, Path(tmp), other_encoder(args.other), extra)
    print(json.dumps(out, indent=2))
    path = write_json(
        f"hetero-nodes-{args.other}", {"other": args.other, "extra": len(extra), **out}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
