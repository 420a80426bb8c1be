"""Request/response over libp2p streams: one msgpack request, one msgpack response
(NETWORK.md §5).

Frames are a 4-byte big-endian length and a msgpack map, bounded in size; every read and write
has a timeout, so a slow or silent peer costs one stream, never a hung task. An error answer is
``{"error": <code>, "message": <text>}``; :class:`RpcError` carries the code, and
:class:`Unsupported` says the peer does not serve the protocol at all (multistream-select "na"),
which callers treat as a state of the peer rather than a failure of one request.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import trio

log = logging.getLogger(__name__)

MAX_FRAME = 4 * 1024 * 1024
TIMEOUT = 10.0

SYNC_PROTOCOL = "/zoo/dso/sync/1"
QUERY_PROTOCOL = "/zoo/dso/query/2"  # /1 carried the backbone's private 384-d coordinates

BAD_REQUEST = "bad_request"
INTERNAL = "internal"  # the responder failed on a request it could read (NETWORK.md §5)


class RpcError(Exception):
    """The peer broke the framing, answered an error, or did not answer in time.

    ``code`` is the peer's error code when it answered one, else a local kind: ``timeout``,
    ``framing`` or ``stream`` (the stream could not be opened or broke)."""

    def __init__(self, message: str, code: str = "stream") -> None:
        super().__init__(message)
        self.code = code


class Unsupported(RpcError):
    """The peer does not serve the protocol (it answered multistream-select's "na")."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "unsupported")


class ServeError(Exception):
    """Raised by a handler to answer ``{"error": code, "message": message}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error_answer(code: str, message: str) -> dict[str, Any]:
    return {"error": code, "message": message}


def _unsupported(exc: BaseException) -> bool:
    """True if anywhere in ``exc``'s chain the protocol negotiation ended in "na"."""
    from libp2p.protocol_muxer.exceptions import MultiselectClientError

    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        err = todo.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, MultiselectClientError) and "not supported" in str(err):
            return True
        if isinstance(err, BaseExceptionGroup):
            todo.extend(err.exceptions)
        todo.extend(e for e in (err.__cause__, err.__context__) if e is not None)
    return False


async def _read_exactly(stream, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = await stream.read(n - len(buf))
        if not chunk:
            raise RpcError("stream closed mid-frame")
        buf += chunk
    return buf


async def read_frame(stream) -> dict[str, Any]:
    (size,) = struct.unpack(">I", await _read_exactly(stream, 4))
    if size > MAX_FRAME:
        raise RpcError(f"frame of {size} bytes over the {MAX_FRAME} limit", "framing")
    try:
        obj = msgpack.unpackb(
            await _read_exactly(stream, size),
            raw=False,
            strict_map_key=False,
            max_bin_len=MAX_FRAME,
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise RpcError(f"malformed frame: {exc}", "framing") from exc
    if not isinstance(obj, dict):
        raise RpcError("a frame is a msgpack map", "framing")
    return obj


async def write_frame(stream, obj: dict[str, Any]) -> None:
    data = msgpack.packb(obj, use_bin_type=True)
    if len(data) > MAX_FRAME:
        raise RpcError(f"frame of {len(data)} bytes over the {MAX_FRAME} limit", "framing")
    await stream.write(struct.pack(">I", len(data)) + data)


async def request(
    host, peer_id, protocol: str, payload: dict[str, Any], timeout: float = TIMEOUT
) -> dict[str, Any]:
    """One request on a new stream, its answer, the stream closed. Raises :class:`RpcError`
    (:class:`Unsupported` when the peer does not serve ``protocol``)."""
    known = _advertised(host, peer_id)
    if known is not None and protocol not in known:
        raise Unsupported(f"{protocol}: {peer_id} does not list it (identify)")
    try:
        with trio.fail_after(timeout):
            stream = await host.new_stream(peer_id, [protocol])
            try:
                await write_frame(stream, payload)
                response = await read_frame(stream)
            finally:
                with trio.move_on_after(1):
                    await stream.close()
    except trio.TooSlowError as exc:
        raise RpcError(f"{protocol}: no answer from {peer_id} in {timeout}s", "timeout") from exc
    except RpcError:
        raise
    except Exception as exc:  # libp2p raises many types, often nested groups
        if _unsupported(exc):
            raise Unsupported(f"{protocol}: {peer_id} does not serve it") from exc
        raise RpcError(f"{protocol}: {type(exc).__name__}: {exc}") from exc
    if "error" in response:
        code = str(response["error"])
        raise RpcError(f"{protocol}: peer answered {code}: {response.get('message', '')}", code)
    return response


def _advertised(host, peer_id) -> list[str] | None:
    """The protocols the peer listed in identify, or None while identify has not told us."""
    try:
        listed = host.get_peerstore().get_protocols(peer_id)
    except Exception:  # unknown peer, or identify not done yet
        return None
    return [str(p) for p in listed] if listed else None


def serve(
    handler: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]], timeout: float = TIMEOUT
):
    """A libp2p stream handler answering one request per stream with ``handler``."""

    async def handle(stream) -> None:
        peer = str(stream.muxed_conn.peer_id)
        try:
            with trio.fail_after(timeout):
                req = await read_frame(stream)
                try:
                    resp = await handler(peer, req)
                except ServeError as exc:
                    resp = error_answer(exc.code, exc.message)
                except (KeyError, TypeError, ValueError) as exc:
                    resp = error_answer(BAD_REQUEST, f"{type(exc).__name__}: {exc}")
                except Exception as exc:  # a fault of ours: answer it, and say so loudly
                    log.warning("rpc from %s: the handler failed", peer, exc_info=exc)
                    resp = error_answer(INTERNAL, f"{type(exc).__name__}")
                await write_frame(stream, resp)
        except (RpcError, trio.TooSlowError) as exc:
            log.debug("rpc from %s failed: %s", peer, exc)
        except Exception as exc:  # never let a peer's stream crash the node
            log.debug("rpc from %s: %s: %s", peer, type(exc).__name__, exc)
        finally:
            with trio.move_on_after(1):
                await stream.close()

    return handle
