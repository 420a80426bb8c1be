"""A gossip sender for benchmarks/ingest.py (not a user tool): a real node that publishes
signed wires to whoever meshes with it, as fast as GossipSub's backpressure allows.

argv: data_dir wires_file. Prints "addr <multiaddr>", then, once a peer is in its mesh and
every wire is published, "published <n> <seconds>". It neither stores nor checks what it
receives (its own messages come back through its subscription) and does not sync (the
receiver holds the ``--size`` records of the run: fetching them took both nodes' CPU and the
receiver's knowledge-base thread during the measurement), so its CPU goes to sending.
Exits on SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import time

import msgpack
import trio

from zoonode.config import load_config
from zoonode.node import Node


async def main(data_dir: str, wires_file: str) -> None:
    cfg = load_config(
        env={},
        overrides={
            "node": {"data_dir": data_dir, "log_level": "warning"},
            "network": {
                "listen": ["/ip4/127.0.0.1/tcp/0"],
                "author_rate": 1e9,
                "author_burst": 1e9,
                "flood_rate": 1e9,
            },
            "api": {"listen": ""},
        },
    )
    node = Node(cfg)

    async def drop(accepted, forwarder) -> None:
        return None

    async def idle() -> None:
        await trio.sleep_forever()

    for channel in node.gossip.channels.values():  # the channel holds the callback
        channel.on_records = drop
    node.antientropy.run = idle  # a sender, not a replica
    wires = msgpack.unpackb(open(wires_file, "rb").read())  # noqa: SIM115 (read once)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            info = await nursery.start(node.run)
            print("addr", f"{info.addrs[0]}", "peer", node.peer_id, flush=True)
            with trio.fail_after(120):
                while not node.gossip.mesh_peers():
                    await trio.sleep(0.05)
            await trio.sleep(1.0)
            started = time.monotonic()
            await node.gossip.publish(wires)
            while node.gossip.stats.records_out < len(wires):
                await trio.sleep(0.01)
            print("published", len(wires), time.monotonic() - started, flush=True)
            async for _ in signals:
                break
            node.stop()


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:3])
