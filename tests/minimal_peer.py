"""A minimal DSO peer written from protocol/SPEC.md and protocol/NETWORK.md alone.

It imports nothing from ``zoonode.net`` or ``zoonode.node`` (test_conformance checks this): its
constants come from the network vectors (topic, protocol ids) or the spec text (framing), its
transport is py-libp2p's public API, its messages are msgpack built here. ``zoonode.protocol``
is used only for what the spec calls the record format (building and signing records), and
``zoonode.native`` only as this peer's encoder (another implementation brings its own).
"""

from __future__ import annotations

import hashlib
import json
import struct
from importlib import resources
from typing import Any

import msgpack
import trio

VECTORS = json.loads(
    (resources.files("zoonode.protocol") / "vectors" / "network-v1.json").read_text()
)
TOPIC = VECTORS["topic"]  # NETWORK.md §4.1
PROTOCOLS = VECTORS["protocols"]  # NETWORK.md §2, §6, §7
FRAME_LIMIT = 4 * 1024 * 1024  # NETWORK.md §5: 4 MiB
REQUEST_TIMEOUT = 10.0  # NETWORK.md §5


def message_id(msg) -> bytes:
    """NETWORK.md §4.3: SHA-256 of the message data."""
    return hashlib.sha256(msg.data).digest()


def batch(wires: list[bytes]) -> bytes:
    """NETWORK.md §4.2: a msgpack array of bin record wires."""
    return msgpack.packb(list(wires), use_bin_type=True)


class MinimalPeer:
    """TCP + Noise + yamux, GossipSub with StrictSign and content message ids, and a client
    for the sync and query protocols. Serves nothing (no sync, no query)."""

    def __init__(self, seed: bytes, *, muxer: str = "yamux") -> None:
        import multiaddr
        from libp2p import new_host
        from libp2p.crypto.ed25519 import create_new_key_pair
        from libp2p.crypto.x25519 import create_new_key_pair as create_x25519
        from libp2p.pubsub.gossipsub import GossipSub
        from libp2p.pubsub.pubsub import Pubsub
        from libp2p.security.noise.transport import Transport as NoiseTransport
        from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
        from libp2p.stream_muxer.yamux.yamux import Yamux

        muxers = {"yamux": (PROTOCOLS["muxer"], Yamux), "mplex": (MPLEX_PROTOCOL_ID, Mplex)}
        muxer_id, muxer_class = muxers[muxer]
        self.key_pair = create_new_key_pair(seed)
        noise = NoiseTransport(self.key_pair, noise_privkey=create_x25519().private_key)
        self.listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
        self.host = new_host(
            key_pair=self.key_pair,
            sec_opt={PROTOCOLS["security"]: noise},
            muxer_opt={muxer_id: muxer_class},
            listen_addrs=self.listen,
        )
        self.router = GossipSub(
            protocols=PROTOCOLS["gossip"],
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_interval=1,
            spam_protection_enabled=False,
        )
        self.pubsub = Pubsub(
            self.host, self.router, strict_signing=True, msg_id_constructor=message_id
        )

    @property
    def peer_id(self):
        return self.host.get_id()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from libp2p.tools.anyio_service import background_trio_service

        async with background_trio_service(self.pubsub), background_trio_service(self.router):
            await self.pubsub.wait_until_ready()
            await self.pubsub.subscribe(TOPIC)
            async with self.host.run(listen_addrs=self.listen):
                try:
                    task_status.started()
                    await trio.sleep_forever()
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(5):
                        await self.host.close()

    async def connect(self, addr: str) -> None:
        import multiaddr
        from libp2p.peer.peerinfo import info_from_p2p_addr

        with trio.fail_after(10):
            await self.host.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))

    def meshed_with(self, peer_id) -> bool:
        return peer_id in self.router.mesh.get(TOPIC, set())

    async def publish(self, data: bytes) -> None:
        await self.pubsub.publish(TOPIC, data)

    async def request(self, peer_id, protocol: str, message: dict[str, Any]) -> dict[str, Any]:
        """NETWORK.md §5: one stream, one frame each way (4-byte big-endian length, then a
        msgpack map), then close."""
        with trio.fail_after(REQUEST_TIMEOUT):
            stream = await self.host.new_stream(peer_id, [protocol])
            try:
                data = msgpack.packb(message, use_bin_type=True)
                await stream.write(struct.pack(">I", len(data)) + data)
                (size,) = struct.unpack(">I", await _read_exactly(stream, 4))
                assert size <= FRAME_LIMIT
                answer = msgpack.unpackb(await _read_exactly(stream, size), strict_map_key=False)
            finally:
                await stream.close()
        assert isinstance(answer, dict)
        return answer


async def _read_exactly(stream, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = await stream.read(n - len(buf))
        if not chunk:
            raise EOFError("stream closed mid-frame")
        buf += chunk
    return buf


async def _join_and_wait(seed_hex: str, addr: str) -> None:
    peer = MinimalPeer(bytes.fromhex(seed_hex))
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.run)
        await peer.connect(addr)
        print("joined", peer.peer_id, flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":  # a peer in its own process: join ADDR, then wait to be killed
    import sys

    trio.run(_join_and_wait, *sys.argv[1:3])
