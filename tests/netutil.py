"""Helpers for network tests: real nodes with real libp2p hosts on 127.0.0.1, in one trio run.

Every wait is for an event or a condition, bounded by a timeout; nothing sleeps blindly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import trio

from zoonode.config import load_config
from zoonode.node import Node


def node_config(data_dir: Path, **sections):
    overrides = {
        "node": {"data_dir": str(data_dir)},
        "network": {"listen": ["/ip4/127.0.0.1/tcp/0"]},
        "api": {"listen": ""},  # several nodes per test: no fixed API port
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return load_config(env={}, overrides=overrides)


async def wait_until(
    condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition"
) -> None:
    with trio.move_on_after(timeout) as scope:
        while not condition():
            await trio.sleep(0.02)
    if scope.cancelled_caught:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def start_nodes(nursery, encoder, dirs: list[Path], **sections) -> list[Node]:
    nodes = [Node(node_config(d, **sections), encoder=encoder) for d in dirs]
    for node in nodes:
        await nursery.start(node.run)
    return nodes


async def wait_meshed(a: Node, b: Node, timeout: float = 20.0) -> None:
    await wait_until(
        lambda: b.peer_id in a.gossip.mesh_peers() and a.peer_id in b.gossip.mesh_peers(),
        timeout,
        "gossip mesh",
    )


def run_trio(main, timeout: float = 120.0) -> None:
    async def bounded():
        with trio.fail_after(timeout):
            await main()

    trio.run(bounded)
