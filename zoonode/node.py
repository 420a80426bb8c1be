"""The node process: identity, encoder, knowledge base and libp2p host under one trio nursery.

``zoonode start`` runs :func:`run_node`. Shutdown on SIGINT/SIGTERM is clean: the host is
closed (peers see us leave at once), the replica is snapshotted and the store closed.
Gossip, sync and federated query join this nursery as the network issue lands.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from zoonode.config import Config
from zoonode.identity import IDENTITY_FILE, load_or_create_identity
from zoonode.knowledge import KnowledgeBase
from zoonode.native.encoder import Encoder, EncoderSettings
from zoonode.protocol import public_key_bytes

log = logging.getLogger("zoonode.node")


def encoder_from_config(cfg: Config) -> Encoder:
    e = cfg.encoder
    return Encoder.from_settings(
        EncoderSettings(
            backbone=e.backbone,
            adapter=e.adapter or None,
            space_manifest=e.space_manifest or None,
            threads=e.threads or None,
            device=e.device,
            precision=e.precision,
            batch_size=e.batch_size,
        )
    )


def open_knowledge(cfg: Config, space: bytes, hidden: int) -> KnowledgeBase:
    s = cfg.store
    return KnowledgeBase(
        cfg.data_path,
        space,
        hidden,
        capacity=s.capacity,
        duplicate_cosine=s.duplicate_cosine,
        snapshot_every=s.snapshot_every,
        hnsw_m=s.hnsw_m,
        hnsw_ef_construction=s.hnsw_ef_construction,
        hnsw_ef_search=s.hnsw_ef_search,
    )


@dataclass
class NodeInfo:
    peer_id: str
    addrs: list[str]
    space: str
    data_dir: str
    counts: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


async def run_node(cfg: Config, *, announce: Callable[[NodeInfo], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM (or cancellation), then shut down cleanly."""
    key = load_or_create_identity(cfg.data_path / IDENTITY_FILE)
    encoder = encoder_from_config(cfg)
    kb = open_knowledge(cfg, encoder.space, encoder.space_info.hidden)
    from zoonode.net.host import make_host

    host = make_host(key, cfg.network.listen, cfg.network.bootstrap, cfg.network.mdns)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
            import multiaddr

            async with host.run(listen_addrs=[multiaddr.Multiaddr(a) for a in cfg.network.listen]):
                info = NodeInfo(
                    peer_id=host.get_id().to_string(),
                    addrs=[str(a) for a in host.get_addrs()],
                    space=encoder.space_info.hex,
                    data_dir=str(cfg.data_path),
                    counts=kb.store.counts(),
                )
                log.info(
                    "node started: peer %s, author %s", info.peer_id, public_key_bytes(key).hex()
                )
                (announce or _print_info)(info)
                await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await host.close()
        kb.close()
        log.info("node stopped")


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            scope.cancel()
            return


def _print_info(info: NodeInfo) -> None:
    print(f"zoonode node running  peer id {info.peer_id}", flush=True)
    for addr in info.addrs:
        print(f"  listening on {addr}", flush=True)
    print(
        f"  space {info.space}  data {info.data_dir}  experiences {info.counts['active']}",
        flush=True,
    )
    print(json.dumps({"event": "started", **info.as_dict()}), file=sys.stderr, flush=True)
