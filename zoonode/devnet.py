"""``zoonode devnet``: N real nodes in one process on 127.0.0.1, wired in a line, seeded with
the shipped lessons, each with its own HTTP API. The first thing a newcomer runs."""

from __future__ import annotations

import json
import signal
from importlib import resources
from pathlib import Path

import trio

from zoonode.config import load_config
from zoonode.node import Node, encoder_from_config


def shipped_lessons() -> list[dict]:
    text = (resources.files("zoonode") / "data" / "lessons.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def start_devnet(nursery, count: int, base: Path) -> list[Node]:
    encoder = encoder_from_config(load_config())
    nodes = []
    for i in range(count):
        cfg = load_config(
            overrides={
                "node": {"data_dir": str(base / f"node{i}")},
                "network": {"listen": ["/ip4/127.0.0.1/tcp/0"]},
                "api": {"listen": "127.0.0.1:0"},
            }
        )
        node = Node(cfg, encoder=encoder)
        await nursery.start(node.run)
        if nodes:
            await node.connect(nodes[-1].info().addrs[0])
        nodes.append(node)
    lessons = shipped_lessons()
    for i, node in enumerate(nodes):  # each node shares its part of the lessons
        await node.publish(lessons[i::count])
    return nodes


async def run_devnet(count: int, base: Path) -> None:
    async with trio.open_nursery() as nursery:
        nodes = await start_devnet(nursery, count, base)
        print(f"zoonode devnet: {count} nodes on 127.0.0.1, data in {base}\n")
        for i, node in enumerate(nodes):
            print(f"  node{i}  peer {node.peer_id}\n         api  {node.api_url}")
        last = base / f"node{count - 1}"
        print(
            f"""
Each node shared part of {len(shipped_lessons())} lessons; gossip spreads them to all.
Try, in another terminal:

  zoonode query "how do I avoid SQL injection" --data-dir {last}
  zoonode publish "Check the units before adding measured values" --domain physics.units \\
      --data-dir {base / "node0"}
  zoonode peers --data-dir {base / "node0"}
  curl -s {nodes[0].api_url}/v1/status

Ctrl-C stops every node.""",
            flush=True,
        )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()
