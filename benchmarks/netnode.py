"""One node process for benchmarks/network.py (not a user tool).

argv: data_dir role batch [bootstrap ...]; role is "pub" (publishes the wires in
data_dir/wires.msgpack once it has a mesh, then idles) or "sub". Prints "addr <multiaddr>".
On SIGTERM writes data_dir/stats.json: first-seen time of every record id (at gossip
validation, i.e. delivery; the embedding check and the store are skipped so that the numbers
are the network's, not the encoder's), publish times, CPU seconds and message counts.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
import time
from pathlib import Path

import msgpack
import trio

from zoonode.config import load_config
from zoonode.net import gossip as gossip_module
from zoonode.node import Node


class BenchNode(Node):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: dict[str, float] = {}
        self.cpu_at_first: float | None = None

    async def _on_gossip(self, accepted, forwarder) -> None:
        now = time.time()
        if self.cpu_at_first is None:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            self.cpu_at_first = usage.ru_utime + usage.ru_stime
        for checked in accepted:
            self.seen.setdefault(checked.record.id_hex, now)


async def main(data_dir: str, role: str, batch: str, *bootstrap: str) -> None:
    gossip_module.BATCH_RECORDS = int(batch)
    base = Path(data_dir)
    cfg = load_config(
        env={},
        overrides={
            "node": {"data_dir": data_dir, "log_level": "warning"},
            "network": {
                "listen": ["/ip4/127.0.0.1/tcp/0"],
                "bootstrap": list(bootstrap),
                "author_rate": 1e9,
                "author_burst": 1e9,
                "flood_rate": 1e9,
            },
            "api": {"listen": ""},
        },
    )
    node = BenchNode(cfg)
    published: dict[str, float] = {}
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            info = await nursery.start(node.run)
            print("addr", info.addrs[0], flush=True)
            if role == "pub":
                wires = msgpack.unpackb((base / "wires.msgpack").read_bytes())
                with trio.move_on_after(60):
                    while not node.gossip.mesh_peers():
                        await trio.sleep(0.05)
                await trio.sleep(float((base / "settle").read_text()))
                from zoonode.protocol import decode

                ids = [decode(w).id_hex for w in wires]
                pace = float((base / "pace").read_text())
                for i in range(0, len(wires), int(batch)):
                    now = time.time()
                    for record_id in ids[i : i + int(batch)]:
                        published[record_id] = now
                    await node.gossip.publish(wires[i : i + int(batch)])
                    if pace:
                        await trio.sleep(pace)
                print("published", len(wires), flush=True)
            async for _ in signals:
                break
            usage = resource.getrusage(resource.RUSAGE_SELF)
            (base / "stats.json").write_text(
                json.dumps(
                    {
                        "seen": node.seen,
                        "published": published,
                        "cpu_s": usage.ru_utime + usage.ru_stime,
                        "cpu_at_first": node.cpu_at_first,
                        "messages_in": node.gossip.stats.messages_in,
                        "messages_out": node.gossip.stats.messages_out,
                        "records_out": node.gossip.stats.records_out,
                    }
                )
            )
            node.stop()


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:])
