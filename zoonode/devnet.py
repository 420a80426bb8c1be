"""``zoonode devnet``: N real nodes in one process on 127.0.0.1, wired in a line, seeded with
the shipped lessons, each with its own HTTP API. The first thing a newcomer runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from importlib import resources
from pathlib import Path

import trio

from zoonode.config import load_config
from zoonode.node import Node, encoder_from_config

SPREAD_WAIT_S = 20.0  # at most this long for gossip to spread the seed lessons to every node


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
    with trio.move_on_after(SPREAD_WAIT_S):  # ready when gossip has brought every node all
        for node in nodes:
            while (await node.current_info()).counts["active"] < len(lessons):
                await trio.sleep(0.2)
    return nodes


def command_name() -> str:
    """How to type ``zoonode`` again in this shell: the bare name when it is on PATH and is
    this program, else the path this program was started by (e.g. ``.venv/bin/zoonode``)."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "zoonode"
    found = shutil.which("zoonode")
    try:
        if found and os.path.samefile(found, argv0):
            return "zoonode"
    except OSError:
        pass
    if Path(argv0).name != "zoonode":
        return "zoonode"  # not started as the script (a test, python -m): the usual name
    path = Path(argv0).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


async def run_devnet(count: int, base: Path) -> None:
    """Run the devnet until SIGINT or SIGTERM; print each node's addresses and what to try."""
    zoonode = command_name()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nodes = await start_devnet(nursery, count, base)
            print(f"zoonode devnet: {count} nodes on 127.0.0.1, data in {base}\n")
            for i, node in enumerate(nodes):
                info = node.info()
                print(f"  node{i}  api  {node.api_url}")
                for addr in info.addrs:
                    print(f"         addr {addr}")
            last = base / f"node{count - 1}"
            print(
                f"""
Each node shared part of {len(shipped_lessons())} lessons; gossip spreads them to all.
Try, in another terminal:

  {zoonode} query "how do I avoid SQL injection" --data-dir {last}
  {zoonode} publish "Check the units before adding measured values" --domain physics.units \\
      --data-dir {base / "node0"}
  {zoonode} status --data-dir {base / "node0"}

A node of your own joins with: {zoonode} start --data-dir DIR --api 127.0.0.1:0 \\
      --bootstrap {nodes[0].info().addrs[0]}
Ctrl-C stops every node.""",
                flush=True,
            )
            async for signum in signals:
                print(f"\n{signal.Signals(signum).name}: stopping {count} nodes", flush=True)
                break
            nursery.cancel_scope.cancel()
