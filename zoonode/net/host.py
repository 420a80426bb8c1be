"""A py-libp2p host whose peer id is the node's Ed25519 identity: TCP, Noise, yamux only
(NETWORK.md §2).

Pitfalls handled here (notes/py-libp2p-0.8.1.md): the default host also accepts plaintext
(#7), so security is Noise alone; ``connect`` waits ~250 ms per dial unless one connection per
peer is configured (#9). The default muxers are yamux and mplex; mplex is not offered: with a
js-libp2p peer it dropped the connection when both sides opened request streams at once
(issue 21, 2 of 2 runs), yamux carried the same workload, and every libp2p stack speaks yamux.

:func:`quiet_library_noise` turns the library's per-attempt error lines (a failed dial, a
protocol a peer does not serve) into counters: the node logs such outcomes itself, once per
peer and state change.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

YAMUX_PROTOCOL = "/yamux/1.0.0"
NOISE_PROTOCOL = "/noise"

#: (logger, message prefix) -> counter name of the library's per-attempt error lines.
LIBRARY_NOISE: dict[tuple[str, str], str] = {
    ("libp2p.transport.tcp.tcp", "Failed to open TCP stream"): "dial_failed",
    ("libp2p.transport.tcp.tcp", "Unexpected error opening TCP stream"): "dial_failed",
    ("libp2p.host.basic_host", "Failed to open stream to peer"): "stream_failed",
    # A validated message the subscription's 32-message channel had no room for (a flood);
    # printed bare by Python's last-resort handler once per message otherwise.
    ("libp2p.pubsub.pubsub", "fail to deliver message to subscription"): "subscription_full",
}
#: How many library lines :func:`quiet_library_noise` has turned into counts (per process).
library_noise: Counter[str] = Counter()


class _NoiseFilter(logging.Filter):
    def __init__(self, prefixes: dict[str, str]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        for prefix, name in self.prefixes.items():
            if message.startswith(prefix):
                library_noise[name] += 1
                return False
        return True


def quiet_library_noise() -> None:
    """Install (once per process) filters on the libp2p loggers that count, instead of
    printing, the lines listed in :data:`LIBRARY_NOISE`. Logger filters survive libp2p's own
    logging setup, which clears handlers only."""
    by_logger: dict[str, dict[str, str]] = {}
    for (name, prefix), counter in LIBRARY_NOISE.items():
        by_logger.setdefault(name, {})[prefix] = counter
    for name, prefixes in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoiseFilter) for f in logger.filters):
            logger.addFilter(_NoiseFilter(prefixes))


def libp2p_key_pair(key: Ed25519PrivateKey):
    """The libp2p KeyPair of our identity (same 32-byte Ed25519 seed, same public key)."""
    from cryptography.hazmat.primitives import serialization
    from libp2p.crypto.ed25519 import create_new_key_pair

    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return create_new_key_pair(seed)


def make_host(
    key: Ed25519PrivateKey, listen: Sequence[str], bootstrap: Sequence[str] = (), mdns: bool = False
):
    import multiaddr
    from libp2p import new_host
    from libp2p.crypto.x25519 import create_new_key_pair as create_x25519
    from libp2p.network.config import ConnectionConfig
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
    from libp2p.security.noise.transport import Transport as NoiseTransport
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
    from libp2p.stream_muxer.yamux.yamux import Yamux

    assert (NOISE_ID, YAMUX_ID) == (NOISE_PROTOCOL, YAMUX_PROTOCOL)
    quiet_library_noise()
    pair = libp2p_key_pair(key)
    noise_only = {NOISE_ID: NoiseTransport(pair, noise_privkey=create_x25519().private_key)}
    return new_host(
        key_pair=pair,
        sec_opt=noise_only,
        muxer_opt={YAMUX_ID: Yamux},
        listen_addrs=[multiaddr.Multiaddr(a) for a in listen],
        bootstrap=list(bootstrap) or None,
        enable_mDNS=mdns,
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )
