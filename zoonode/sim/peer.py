"""One real-mode node: ``python -m zoonode.sim.peer SPEC.json`` (started by ``sim.real``).

A real ``Node`` (libp2p on 127.0.0.1, store, encoder; HTTP API off). It prints one JSON line
``{"event": "ready", "addr": ...}``, waits for ``go <unix time>`` on stdin, then plays its
part: an honest node ingests its pre-signed lessons through the node's import path (checks,
store, gossip); an attacker publishes its crafted bytes straight onto the topic and, like a
Sybil, forwards nothing it did not make. At the end honest nodes run the agents' target
queries through ``Node.query`` and everything is written to the spec's ``out`` file.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import trio

from zoonode.config import load_config
from zoonode.net.validation import encode_batch
from zoonode.node import Node


async def _sample_scores(node: Node, samples: list, t0: float) -> None:
    while True:
        samples.append([time.time() - t0, node.gossip.peer_scores()])
        await trio.sleep(1.0)


async def play(spec: dict) -> None:
    cfg = load_config(
        env={},
        overrides={
            "node": {"data_dir": spec["data_dir"], "log_level": "warning"},
            "network": {"listen": ["/ip4/127.0.0.1/tcp/0"], "bootstrap": spec["bootstrap"]},
            "api": {"listen": ""},
            "selection": spec.get("selection", {}),
        },
    )
    node = Node(cfg)
    honest = spec["role"] is None
    async with trio.open_nursery() as nursery:
        info = await nursery.start(node.run)
        if not honest:
            own = node.host.get_id()
            # Forward nothing made by others; let our own crafted bytes out unchecked.
            node.gossip.pubsub.set_topic_validator(
                node.gossip.topic, lambda forwarder, msg: forwarder == own, False
            )
        print(json.dumps({"event": "ready", "addr": info.addrs[0], "peer_id": info.peer_id}))
        sys.stdout.flush()
        line = await trio.to_thread.run_sync(sys.stdin.readline)
        t0 = float(line.split()[1])
        scores: list = []
        nursery.start_soon(_sample_scores, node, scores, t0)
        await trio.sleep(max(0.0, t0 + spec["publish_at"] - time.time()))
        published = {}
        wires = [bytes.fromhex(w) for w in spec["wires"]]
        if honest and wires:
            stamp = time.time()
            await node.import_records(wires)
            published = {r: stamp for r in spec["ids"]}
        elif spec.get("import"):  # a patient sleeper: its own lessons, as its node shares them
            await node.import_records(wires)
            if spec.get("feedback"):  # its verdicts, signed beforehand, on their topic
                await trio.sleep(2.0)
                await node.gossip.publish_feedback([bytes.fromhex(w) for w in spec["feedback"]])
        elif spec["role"] == "malformed":
            for data in wires:
                await node.gossip.pubsub.publish(node.gossip.topic, data)
        elif wires:
            gap = 1.0 / spec["rate"]
            # A persistent attacker publishes again (``repeat`` times, ``repeat_s`` apart): a
            # message published before its peers' subscriptions arrived reaches nobody.
            for attempt in range(1 + spec.get("repeat", 0)):
                if attempt:
                    await trio.sleep(spec.get("repeat_s", 10.0))
                for wire in wires:
                    await node.gossip.pubsub.publish(node.gossip.topic, encode_batch([wire]))
                    await trio.sleep(gap)
                if spec.get("feedback"):  # its verdicts, signed beforehand, on their topic
                    await trio.sleep(2.0)
                    verdicts = [bytes.fromhex(w) for w in spec["feedback"]]
                    await node.gossip.publish_feedback(verdicts)
        await trio.sleep(max(0.0, t0 + spec["duration_s"] - time.time()))
        expect = {bytes.fromhex(rid) for rid in spec.get("expect", [])}
        settle_until = t0 + spec["duration_s"] + spec.get("settle_s", 0.0)
        while expect and time.time() < settle_until:
            held_now = {rid for (rid,) in node.kb.store.db.execute("SELECT id FROM records")}
            if expect <= held_now:
                break
            await trio.sleep(0.25)
        answers = []
        if honest and spec["queries"]:
            for text in spec["queries"]:
                selection, records = await node.query(text=text, k=spec["k"])
                answers.append(
                    [
                        [s.candidate.id.hex(), records[s.candidate.id].experience.author.hex()]
                        for s in selection.selected
                    ]
                )
        held = {
            rid.hex(): at / 1000 - t0
            for rid, at in node.kb.store.db.execute("SELECT id, accepted_at FROM records")
        }
        result = {
            "peer_id": info.peer_id,
            "held": held,
            "published": {k: v - t0 for k, v in published.items()},
            "verdicts": dict(node.gossip.stats.verdicts),
            "counters": dict(node.counters),
            "scores": scores,
            "answers": answers,
            "bytes_out": node.gossip.stats.records_out,
        }
        Path(spec["out"]).write_text(json.dumps(result))
        node.stop()
        nursery.cancel_scope.cancel()


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    trio.run(play, spec)


if __name__ == "__main__":
    main()
