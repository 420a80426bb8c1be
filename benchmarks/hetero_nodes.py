"""A real default node and a real node on another backbone exchange lessons at default
settings (the issue's end-to-end run): acceptance both ways, bans, and cross-backbone retrieval
of the 10 target lessons, local (after gossip) and federated (sync kept out of the way).

    python benchmarks/hetero_nodes.py [--other mpnet|l3] [--extra 200]

Twice (each backbone as the holder), two nodes in one trio run with real libp2p hosts on
127.0.0.1 (tests/netutil.py's way), each with its own encoder: l6 (the anchor, default) and
the other backbone with the head and reference vectors from benchmarks/hetero_vectors.py
(fitted on the 4,000 shipped anchors). The holder holds the 40 shipped lessons; the asker,
holding nothing of its own (its own lessons would outrank a just-met author's by standing,
which is selection's business, not the embedding check's), asks the 10 target queries by
federated query, then again locally after sync; then the holder gossips ``--extra / 2``
held-out cheat tips (texts no fit saw). Writes results/hetero-nodes-<other>.json.
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


async def one_way(tmp: Path, holder_enc: Encoder, asker_enc: Encoder, tips: list[str]) -> dict:
    """``holder`` holds the 40 shipped lessons (its own, imported unshared); ``asker`` on the
    other backbone asks the 10 target queries by federated query (sync kept out of the way),
    then receives the lessons by sync and asks again locally, then receives ``tips`` by
    gossip. Counts: targets found in the asker's selection, records accepted, bans."""
    lessons = [{**x, "confidence": 0.8} for x in _data("lessons.jsonl")]
    targets = _data("sim_targets.jsonl")
    out: dict = {}
    async with trio.open_nursery() as nursery:
        holder = Node(node_config(tmp / "holder"), encoder=holder_enc)
        asker = Node(node_config(tmp / "asker"), encoder=asker_enc)
        for node in (holder, asker):
            await nursery.start(node.run)
        results = await holder.ingest.import_records([r.wire for r in _sign(holder, lessons)])
        ids = [rid for rid, _ in results]
        await settled(holder, ids)  # imported records wait for the holder's own check
        for node, peer in ((holder, asker), (asker, holder)):
            node.antientropy.peers[peer.peer_id] = PeerSync("ok", float("inf"))
        await asker.connect(holder.info().addrs[0])
        await wait_meshed(holder, asker)

        async def found(federated: bool) -> int:
            hits = 0
            for t in targets:
                sel, _ = await asker.query(t["query"], federated=federated)
                hits += ids[t["lesson"]] in {s.candidate.id for s in sel.selected}
            return hits

        out["federated_found"] = await found(True)
        for node, peer in ((holder, asker), (asker, holder)):  # sync on again
            node.antientropy.peers[peer.peer_id] = PeerSync("ok", 0.0)
        t0 = time.perf_counter()
        await settled(asker, ids)
        published = await holder.publish(
            [{"text": t, "domain": "shell.tips", "confidence": 0.6} for t in tips]
        )
        sent = ids + [rid for rid, _ in published]
        await settled(asker, sent)
        out["exchange_s"] = time.perf_counter() - t0
        rows = await asker.in_kb(lambda: [asker.kb.get(i) for i in sent])
        ok = sum(r is not None and not r.pending for r in rows)
        out["not_accepted"] = [
            None if r is None else (r.status.name, r.pending)
            for r in rows
            if r is None or r.pending
        ][:5]
        out["records"] = {"sent": len(sent), "accepted": ok, "share": ok / len(sent)}
        out["banned"] = {"holder": len(holder.banned), "asker": len(asker.banned)}
        out["rejected"] = asker.checker.status()["rejected"]
        out["local_found"] = await found(False)
        nursery.cancel_scope.cancel()
    return out


TIMEOUT = 1200.0


async def settled(node: Node, ids: list[bytes], timeout: float = TIMEOUT) -> None:
    """Every id stored and through the embedding check (active, or removed as rejected)."""
    await wait_until(lambda: all(node.kb.store.has(i) for i in ids), timeout, "delivery")
    await drained(node, ids, timeout)


async def drained(node: Node, ids: list[bytes], timeout: float = TIMEOUT) -> None:
    """None of these ids waits for the embedding check any more."""

    def waiting() -> bool:
        return any((r := node.kb.get(i)) is not None and r.pending for i in ids)

    with trio.fail_after(timeout):
        while await node.in_kb(waiting):
            await trio.sleep(0.1)


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
    anchor, other = Encoder.default(), other_encoder(args.other)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, holder, asker, half in (
            ("l6 holds, other asks", anchor, other, extra[::2]),
            ("other holds, l6 asks", other, anchor, extra[1::2]),
        ):
            (Path(tmp) / name).mkdir()
            out[name] = trio.run(one_way, Path(tmp) / name, holder, asker, half)
    print(json.dumps(out, indent=2))
    path = write_json(
        f"hetero-nodes-{args.other}", {"other": args.other, "extra": len(extra), **out}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
