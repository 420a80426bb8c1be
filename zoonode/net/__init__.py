"""The network shell: the libp2p host and (later) gossip, sync and federated query."""
