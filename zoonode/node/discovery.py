"""The discovery room: dial the bootstrap peers at start and redial any that is not connected
(exponential back-off, ``BOOTSTRAP_RETRY``), and (with ``network.mdns``) the
peers mDNS announces, retrying a failed one after ``DIAL_BACKOFF`` seconds; forget the
addresses of peers that left, so that neither we nor the library's auto-connector keep dialling
them (one log line per departed peer instead of a dial error every few seconds)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from zoonode.node.core import Node

log = logging.getLogger("zoonode.node.discovery")

DIAL_TIMEOUT = 10.0
DISCOVERY_INTERVAL = 2.0  # seconds between dials of peers mDNS found
DIAL_BACKOFF = 60.0  # seconds before a discovered peer that failed is tried again
# Seconds between redials of a configured bootstrap peer that is not connected: the first
# wait, doubled after each failure up to the last (reset once it answers). py-libp2p's
# auto-connector does not bring back a peer that restarted, so a node whose only bootstrap
# peer went down stayed alone until something dialled it.
BOOTSTRAP_RETRY = (2.0, 60.0)
# Seconds a peer stays disconnected before its addresses are dropped: under py-libp2p's
# auto-connector's own 60 s back-off after a disconnect, so a peer that left is never redialled
# (a peer that comes back dials us, or mDNS announces it again).
FORGET_AFTER = 30.0


class ListenError(RuntimeError):
    """A ``network.listen`` address this machine cannot listen on (not one of its
    addresses, a port in use, no permission); the message names the address."""


def check_listen(addrs: Sequence[str]) -> None:
    """Bind each TCP listen address once, as the host is about to, and raise ListenError
    naming the first that fails and why: py-libp2p only logs a failed listener and runs on
    without it, unreachable. Port 0 checks the IP only."""
    import socket

    import multiaddr

    for addr in addrs:
        m = multiaddr.Multiaddr(addr)
        names = [p.name for p in m.protocols()]
        if "tcp" not in names or not ({"ip4", "ip6"} & set(names)):
            continue
        ip6 = "ip6" in names
        host = m.value_for_protocol("ip6" if ip6 else "ip4")
        port = int(m.value_for_protocol("tcp"))
        with socket.socket(socket.AF_INET6 if ip6 else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as trio's listeners
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise ListenError(f"cannot listen on {addr}: {exc.strerror or exc}") from None


def check_api_listen(listen: str) -> None:
    """Bind the HTTP API's ``HOST:PORT`` once, as the server is about to, and raise
    ListenError naming it and why: otherwise a foreign IP was a bare ``[Errno 99]`` line and a
    port in use exit 1, unlike the same faults on ``--listen`` (exit 2). ``""`` (no API) and
    port 0 (any free port, IP checked) pass."""
    import socket

    if not listen:
        return
    host, _, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            host, int(port), type=socket.SOCK_STREAM
        )[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as hypercorn's
            sock.bind(where)
    except OSError as exc:  # socket.gaierror included
        raise ListenError(
            f"cannot serve the HTTP API on {listen}: {exc.strerror or exc}; "
            "--api 127.0.0.1:0 picks any free port"
        ) from None


def unwrap(exc: BaseException) -> str:
    """ExceptionGroups from libp2p nest 10+ deep (pitfall 11): show the innermost cause."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


class Discovery:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.forget_after = FORGET_AFTER
        self.bootstrap_peers: set[str] = set()  # peer ids we keep redialling (configured)
        self._away: dict[str, float] = {}  # peer -> monotonic time it was first seen away

    async def watch_departures(self) -> None:
        while True:
            self.forget_departed(time.monotonic())
            await trio.sleep(min(1.0, self.forget_after / 2))

    def forget_departed(self, now: float) -> list[str]:
        """Drop the addresses of peers disconnected for ``forget_after`` seconds (bootstrap
        peers excepted); returns their ids. Counted as ``discovery:forgotten``."""
        node = self.node
        store = node.host.get_peerstore()
        connected = set(node.connected_peers())
        me = node.host.get_id()
        forgotten = []
        for peer in store.peer_ids():
            key = str(peer)
            if peer == me or peer in connected:
                self._away.pop(key, None)
                continue
            try:
                if not store.addrs(peer):
                    continue
            except Exception:  # unknown or expired: nothing to dial
                continue
            since = self._away.setdefault(key, now)
            if now - since >= self.forget_after and key not in self.bootstrap_peers:
                store.clear_addrs(peer)
                del self._away[key]
                node.counters["discovery:forgotten"] += 1
                log.info("peer %s is gone: forgetting its addresses, no redials", key)
                forgotten.append(key)
        return forgotten

    async def dial_bootstrap(self, addrs: Sequence[str]) -> int:
        """Dial each bootstrap address; say which failed and why. Returns how many answered."""
        import multiaddr
        from libp2p.peer.peerinfo import info_from_p2p_addr

        ok, failures = 0, []
        for addr in addrs:
            try:
                info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
                self.bootstrap_peers.add(str(info.peer_id))
                with trio.fail_after(DIAL_TIMEOUT):
                    await self.node.host.connect(info)
                ok += 1
            except BaseException as exc:
                if isinstance(exc, trio.Cancelled):
                    raise
                failures.append(f"{addr}: {unwrap(exc)}")
        for failure in failures:
            log.warning("bootstrap peer did not answer: %s", failure)
        if addrs and not ok:
            log.error(
                "no bootstrap peer answered (%d tried); redialling them with back-off "
                "(2 s doubling to 60 s) and answering alone meanwhile",
                len(addrs),
            )
        return ok

    async def keep_bootstrap(self, addrs: Sequence[str]) -> None:
        """Redial every configured bootstrap peer that is not connected, with exponential
        back-off per peer (``BOOTSTRAP_RETRY``): a bootstrap peer that restarts, or starts
        after us, is joined again without an operator. Counted as ``discovery:redialled``
        (answered) and ``discovery:redial_failed``; logged once per outage and once when the
        peer is back."""
        import multiaddr
        from libp2p.peer.peerinfo import info_from_p2p_addr

        first, longest = BOOTSTRAP_RETRY
        peers = []
        for addr in addrs:
            try:
                peers.append((addr, info_from_p2p_addr(multiaddr.Multiaddr(addr))))
            except Exception:  # config validation names bad addresses; nothing to redial
                continue
        wait: dict[str, float] = {}  # addr -> current back-off (present while it is away)
        due: dict[str, float] = {}  # addr -> when to dial it next
        while True:
            connected = set(self.node.connected_peers())
            for addr, info in peers:
                now = trio.current_time()
                if info.peer_id in connected:
                    if addr in wait:
                        log.info("bootstrap peer %s is connected again", info.peer_id)
                    wait.pop(addr, None)
                    due.pop(addr, None)
                    continue
                if addr not in wait:  # just found away: give the library a moment first
                    wait[addr], due[addr] = first, now + first
                    continue
                if now < due[addr]:
                    continue
                try:
                    with trio.fail_after(DIAL_TIMEOUT):
                        await self.node.host.connect(info)
                    self.node.counters["discovery:redialled"] += 1
                except BaseException as exc:
                    if isinstance(exc, trio.Cancelled):
                        raise
                    if wait[addr] == first:
                        log.info("bootstrap peer %s is away: %s", info.peer_id, unwrap(exc))
                    self.node.counters["discovery:redial_failed"] += 1
                    wait[addr] = min(longest, wait[addr] * 2)
                    due[addr] = trio.current_time() + wait[addr]
            await trio.sleep(min(1.0, first / 2))

    async def run_mdns_dialer(self) -> None:
        """mDNS (zeroconf, in the library) only fills the peerstore; this dials what it
        found."""
        from libp2p.peer.peerinfo import PeerInfo

        node = self.node
        failed_at: dict[str, float] = {}
        store = node.host.get_peerstore()
        while True:
            connected = set(node.connected_peers())
            for peer in store.peer_ids():
                key = str(peer)
                if peer == node.host.get_id() or peer in connected:
                    continue
                if time.monotonic() - failed_at.get(key, -1e9) < DIAL_BACKOFF:
                    continue
                addrs = store.addrs(peer)
                if not addrs:
                    continue
                try:
                    with trio.fail_after(DIAL_TIMEOUT):
                        await node.host.connect(PeerInfo(peer, addrs))
                    node.counters["discovery:dialled"] += 1
                    failed_at.pop(key, None)
                    log.info("connected to discovered peer %s", key)
                except BaseException as exc:
                    if isinstance(exc, trio.Cancelled):
                        raise
                    if key not in failed_at:  # once per peer, not per retry
                        log.info("discovered peer %s did not answer: %s", key, unwrap(exc))
                    failed_at[key] = time.monotonic()
                    node.counters["discovery:failed"] += 1
            await trio.sleep(DISCOVERY_INTERVAL)
