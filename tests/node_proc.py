"""A node in its own process for test_network's restart test: connect, publish, print, wait.

argv: data_dir peer_addr text. Prints "peer <id>" then "published <id hex>"; exits on SIGTERM.
"""

import signal
import sys

import trio

sys.path.insert(0, __import__("os").path.dirname(__file__))
from zoonode.node import Node

from netutil import node_config, wait_until


async def main(data_dir: str, peer_addr: str, text: str) -> None:
    node = Node(node_config(__import__("pathlib").Path(data_dir)))
    # Open the receiver first: the test sends SIGTERM as soon as it reads "published".
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            print("peer", node.peer_id, flush=True)
            await node.connect(peer_addr)
            peer = peer_addr.rsplit("/p2p/", 1)[1]
            await wait_until(lambda: peer in node.gossip.mesh_peers(), what="mesh")
            [(record_id, _)] = await node.publish(
                [{"text": text, "domain": "net.restart", "confidence": 0.7}]
            )
            print("published", record_id.hex(), flush=True)
            async for _ in signals:
                break
            node.stop()


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:4])
