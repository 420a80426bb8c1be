"""A py-libp2p host whose peer id is the node's Ed25519 identity, with Noise only.

Pitfalls handled here (notes/py-libp2p-0.8.1.md): the default host also accepts plaintext
(#7), so security is Noise alone; ``connect`` waits ~250 ms per dial unless one connection per
peer is configured (#9).
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


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

    pair = libp2p_key_pair(key)
    noise_only = {NOISE_ID: NoiseTransport(pair, noise_privkey=create_x25519().private_key)}
    return new_host(
        key_pair=pair,
        sec_opt=noise_only,
        listen_addrs=[multiaddr.Multiaddr(a) for a in listen],
        bootstrap=list(bootstrap) or None,
        enable_mDNS=mdns,
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )
