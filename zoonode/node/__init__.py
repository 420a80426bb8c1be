"""The zoonode peer: :class:`Node` (``core``) and its rooms (``ingest``, ``query``,
``antientropy``, ``discovery``). ``zoonode start`` runs :func:`run_node`."""

from zoonode.node.core import (
    API_URL_FILE,
    Node,
    NodeInfo,
    encoder_from_config,
    open_knowledge,
    run_node,
)

__all__ = ["API_URL_FILE", "Node", "NodeInfo", "encoder_from_config", "open_knowledge", "run_node"]
