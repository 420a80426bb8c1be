"""Hypercorn's HTTP/1.1 protocol: HTTP/1.1 only, a sized answer's head and body in one write.

**HTTP/1.1 only.** Hypercorn switches a plain-TCP connection to HTTP/2 when a client asks
(``Upgrade: h2c``) or just starts speaking it (the ``PRI * HTTP/2.0`` preface), and its
HTTP/2 code raises out of ``serve()`` on request data that arrives after the app has already
answered (a 401 or 413 to a large body: ``KeyError`` in ``hypercorn/protocol/h2.py``,
pgjones/hypercorn#329, open with unmerged fixes): one unauthenticated request stopped the whole
node (found by a fresh review of issue 25). The API is documented as HTTP/1.1, so the switch is
refused: an ``Upgrade: h2c`` header is ignored and the request answered in HTTP/1.1 (RFC 9110
§7.8 lets a server ignore Upgrade); the HTTP/2 preface is an ordinary request for ``*`` (a JSON
404) and the binary frames after it a malformed request (400, connection closed).

Hypercorn (0.17-0.18) writes a response's head as soon as the app starts it and its body
with a second ``send``. On loopback each send wakes the client, and on this project's 2-core
machine the extra write and wake-up cost ~0.45 ms of a ~28 ms query at 100k lessons (paired
A/B of two nodes, 443 queries: 1.8 % of the client's latency; ``benchmarks/README.md``). The
same fix elsewhere: hyper ("write the body just after the head"), erlang_quic's HEADERS
coalescing, Bun's corked responses.

:func:`install` swaps the protocol class Hypercorn's connection wrapper instantiates for a
subclass that holds the head of a response whose size is known (``content-length``) until its
first body bytes or its end, then sends both at once. Streamed answers (no
``content-length``: ``/v1/export``'s NDJSON, server-sent events) leave as before, head first,
so a client sees their head at once. Where this Hypercorn lacks the hook (a later release
moved it; hypercorn is pinned below 0.19 for that reason), nothing is changed: answers leave
in two writes and HTTP/2 is served again, so :func:`install` logs a warning;
``tests/test_api.py`` fails.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_installed = False


def install() -> bool:
    """Install the HTTP/1.1-only, one-write protocol (idempotent); returns whether it is in
    place."""
    global _installed
    if _installed:
        return True
    try:
        import h11
        from hypercorn import protocol
        from hypercorn.events import RawData
        from hypercorn.protocol.events import StreamClosed
        from hypercorn.protocol.h11 import H11Protocol
    except ImportError as exc:  # pragma: no cover - a Hypercorn without these modules
        log.warning("hypercorn: HTTP/2 not refused, answers in two writes (%s)", exc)
        return False
    if getattr(protocol, "H11Protocol", None) is not H11Protocol or not hasattr(
        H11Protocol, "_send_h11_event"
    ):  # pragma: no cover - a Hypercorn laid out otherwise
        log.warning("hypercorn: HTTP/2 not refused, answers in two writes (no H11Protocol hook)")
        return False

    class OneWriteH11Protocol(H11Protocol):
        _held = b""  # a sized response's head, not yet sent

        async def _send_h11_event(self, event) -> None:
            if isinstance(event, h11.Response) and any(
                name == b"content-length" for name, _ in event.headers
            ):
                try:
                    self._held = self.connection.send(event)
                except h11.LocalProtocolError:
                    if self.connection.their_state != h11.ERROR:
                        raise
                return
            held, self._held = self._held, b""
            if not held:
                await super()._send_h11_event(event)
                return
            try:
                data = held + self.connection.send(event)
            except h11.LocalProtocolError:
                await self.send(RawData(data=held))
                if self.connection.their_state != h11.ERROR:
                    raise
                return
            await self.send(RawData(data=data))

        async def _check_protocol(self, event) -> None:
            """Neither ``Upgrade: h2c`` nor the HTTP/2 preface switches protocol (above)."""

        async def stream_send(self, event) -> None:
            if isinstance(event, StreamClosed) and self._held:
                held, self._held = self._held, b""  # a head whose body never came
                await self.send(RawData(data=held))
            await super().stream_send(event)

    protocol.H11Protocol = OneWriteH11Protocol
    _installed = True
    return True
