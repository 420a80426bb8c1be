"""Request/response over libp2p streams: one msgpack request, one msgpack response.

Frames are a 4-byte big-endian length and a msgpack map, bounded in size; every read and write
has a timeout, so a slow or silent peer costs one stream, never a hung task.
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
QUERY_PROTOCOL = "/zoo/dso/query/1"


class RpcError(Exception):
    """The peer broke the framing, answered an error, or did not answer in time."""


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
        raise RpcError(f"frame of {size} bytes over the {MAX_FRAME} limit")
    try:
        obj = msgpack.unpackb(
            await _read_exactly(stream, size),
            raw=False,
            strict_map_key=False,
            max_bin_len=MAX_FRAME,
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise RpcError(f"malformed frame: {exc}") from exc
    if not isinstance(obj, dict):
        raise RpcError("a frame is a msgpack map")
    return obj


async def write_frame(stream, obj: dict[str, Any]) -> None:
    data = msgpack.packb(obj, use_bin_type=True)
    if len(data) > MAX_FRAME:
        raise RpcError(f"frame of {len(data)} bytes over the {MAX_FRAME} limit")
    await stream.write(struct.pack(">I", len(data)) + data)


async def request(
    host, peer_id, protocol: str, payload: dict[str, Any], timeout: float = TIMEOUT
) -> dict[str, Any]:
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
        raise RpcError(f"{protocol}: no answer from {peer_id} in {timeout}s") from exc
    except RpcError:
        raise
    except Exception as exc:  # libp2p raises many types, often nested groups
        raise RpcError(f"{protocol}: {type(exc).__name__}: {exc}") from exc
    if "error" in response:
        raise RpcError(f"{protocol}: peer answered {response['error']}")
    return response


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
                except (KeyError, TypeError, ValueError) as exc:
                    resp = {"error": f"bad request: {type(exc).__name__}"}
                await write_frame(stream, resp)
        except (RpcError, trio.TooSlowError) as exc:
            log.debug("rpc from %s failed: %s", peer, exc)
        except Exception as exc:  # never let a peer's stream crash the node
            log.debug("rpc from %s: %s: %s", peer, type(exc).__name__, exc)
        finally:
            with trio.move_on_after(1):
                await stream.close()

    return handle
