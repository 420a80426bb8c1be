"""zoonode: a decentralized peer node for DSO experience sharing.

The pure core lives in ``zoonode.protocol`` (wire format), ``zoonode.native`` (encoder and
BitDelta codec) and ``zoonode.selection``; the I/O shell (store, network, API) calls inward.
"""

__version__ = "0.1.0"
