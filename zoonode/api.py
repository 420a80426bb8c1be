"""The node's local HTTP API (Starlette on hypercorn's trio worker, inside the node's nursery).

Bound to 127.0.0.1 by default. Reads are open to local processes; writes need the bearer token
the node generates into its data dir (``api.token``, mode 0600) on first start. Errors are JSON
``{"error": {"code", "message"}}``; bodies are limited to 64 KiB.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from zoonode.knowledge import Filters
from zoonode.protocol import ProtocolError, record_to_dict

if TYPE_CHECKING:
    from zoonode.node import Node

log = logging.getLogger(__name__)

TOKEN_FILE = "api.token"
MAX_BODY = 64 * 1024


def load_or_create_token(data_dir: Path) -> str:
    path = data_dir / TOKEN_FILE
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def _body(request: Request) -> dict[str, Any]:
    size = int(request.headers.get("content-length") or 0)
    if size > MAX_BODY:
        raise ApiError(413, "too_large", f"body over {MAX_BODY} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise ApiError(413, "too_large", f"body over {MAX_BODY} bytes")
    try:
        body = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_json", f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "body must be a JSON object")
    return body


def _field(body: dict, name: str, kind: type | tuple, default: Any = ...) -> Any:
    if name not in body or body[name] is None:
        if default is ...:
            raise ApiError(422, "missing_field", f"{name} is required")
        return default
    value = body[name]
    if isinstance(value, bool) and kind is not bool:
        raise ApiError(422, "bad_field", f"{name} has the wrong type")
    if not isinstance(value, kind):
        raise ApiError(422, "bad_field", f"{name} has the wrong type")
    return value


def create_app(node: Node, token: str) -> Starlette:
    def require_token(request: Request) -> None:
        if not secrets.compare_digest(request.headers.get("authorization", ""), f"Bearer {token}"):
            raise ApiError(401, "unauthorized", "write endpoints need the node's bearer token")

    async def status(request: Request) -> Response:
        info = node.info()
        return JSONResponse(
            {
                **info.as_dict(),
                "author": node.author.hex(),
                "replica": len(node.kb.replica),
                "peers": len(node.connected_peers()),
                "mesh": len(node.gossip.mesh_peers()),
            }
        )

    async def peers(request: Request) -> Response:
        scores = node.gossip.peer_scores()
        mesh = set(node.gossip.mesh_peers())
        return JSONResponse(
            {
                "peers": [
                    {"peer_id": str(p), "score": scores.get(str(p)), "mesh": str(p) in mesh}
                    for p in node.connected_peers()
                ]
            }
        )

    async def share(request: Request) -> Response:
        require_token(request)
        body = await _body(request)
        item = {
            "text": _field(body, "text", str),
            "domain": _field(body, "domain", str),
            "confidence": float(_field(body, "confidence", (int, float), 0.5)),
            "examples": _field(body, "examples", list, []),
            "source_model": _field(body, "source_model", str, ""),
        }
        try:
            [(record_id, outcome)] = await node.publish([item])
        except (ProtocolError, TypeError, ValueError) as exc:
            code = exc.code.value if isinstance(exc, ProtocolError) else "bad_experience"
            raise ApiError(422, code, str(exc)) from exc
        return JSONResponse(
            {"id": record_id.hex(), "outcome": outcome},
            status_code=201 if outcome == "accepted" else 200,
        )

    async def get_experience(request: Request) -> Response:
        record_id = _hex_id(request.path_params["id"])
        row = node.kb.get(record_id)
        if row is None:
            raise ApiError(404, "not_found", "no such experience")
        from zoonode.protocol import decode

        return JSONResponse(
            {
                **record_to_dict(decode(row.wire)),
                "status": row.status.name.lower(),
                "peer": row.peer,
                "accepted_at": row.accepted_at,
            }
        )

    async def revoke(request: Request) -> Response:
        require_token(request)
        record_id = _hex_id(request.path_params["id"])
        row = node.kb.get(record_id)
        if row is None:
            raise ApiError(404, "not_found", "no such experience")
        if row.author != node.author:
            raise ApiError(403, "not_author", "only the author may revoke an experience")
        return JSONResponse({"id": record_id.hex(), "result": await node.revoke(record_id)})

    async def query(request: Request) -> Response:
        body = await _body(request)
        text = _field(body, "text", str)
        if not text.strip():
            raise ApiError(422, "bad_field", "text is empty")
        k = _field(body, "k", int, None)
        if k is not None and not 1 <= k <= 50:
            raise ApiError(422, "bad_field", "k must be in 1..50")
        filters = Filters(
            domain=_field(body, "domain", str, None),
            min_confidence=_field(body, "min_confidence", (int, float), None),
        )
        selection, records = await node.query(
            text=text, k=k, filters=filters, federated=bool(body.get("federated", False))
        )
        return JSONResponse(
            {
                "selected": [
                    {
                        **record_to_dict(records[s.candidate.id]),
                        "relevance": s.relevance,
                        "agreement": s.agreement,
                        "distance_to_centre": s.distance_to_centre,
                        "group_size": s.group_size,
                        "score": s.score,
                    }
                    for s in selection.selected
                ],
                "considered": selection.considered,
                "groups": selection.groups,
                "authors": selection.authors,
                "down_weighted": selection.down_weighted,
            }
        )

    async def metrics(request: Request) -> Response:
        lines = []
        m = node.metrics()
        for name, value in sorted(m["counters"].items()):
            kind, _, reason = name.partition(":")
            lines.append(f'zoonode_events_total{{kind="{kind}",reason="{reason}"}} {value}')
        for name, value in sorted(m["gossip_verdicts"].items()):
            verdict, _, reason = name.partition(":")
            lines.append(
                f'zoonode_gossip_records_total{{verdict="{verdict}",reason="{reason}"}} {value}'
            )
        lines += [
            f"zoonode_gossip_messages_in_total {m['messages_in']}",
            f"zoonode_gossip_messages_out_total {m['messages_out']}",
            f"zoonode_replica_size {m['replica']}",
            f"zoonode_peers {m['peers']}",
        ]
        return PlainTextResponse("\n".join(lines) + "\n")

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ApiError):
            return _error(exc.status, exc.code, exc.message)
        log.exception("API error on %s", request.url.path)
        return _error(500, "internal", "internal error")

    routes = [
        Route("/v1/status", status),
        Route("/v1/peers", peers),
        Route("/v1/experiences", share, methods=["POST"]),
        Route("/v1/experiences/{id}", get_experience),
        Route("/v1/experiences/{id}/revoke", revoke, methods=["POST"]),
        Route("/v1/query", query, methods=["POST"]),
        Route("/metrics", metrics),
    ]
    return Starlette(routes=routes, exception_handlers={ApiError: on_error, Exception: on_error})


def _hex_id(text: str) -> bytes:
    try:
        record_id = bytes.fromhex(text)
    except ValueError as exc:
        raise ApiError(400, "bad_id", "an id is 64 hex characters") from exc
    if len(record_id) != 32:
        raise ApiError(400, "bad_id", "an id is 64 hex characters")
    return record_id


async def serve_api(node: Node, listen: str, *, task_status) -> None:
    """Serve until cancelled; reports the bound URL (port 0 picks a free one)."""
    from hypercorn.config import Config as HyperConfig
    from hypercorn.trio import serve

    token = load_or_create_token(node.cfg.data_path)
    config = HyperConfig()
    config.bind = [listen]
    config.accesslog = None
    config.errorlog = logging.getLogger("zoonode.api.server")
    await serve(create_app(node, token), config, task_status=task_status)
