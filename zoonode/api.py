"""The node's local HTTP API (Starlette on hypercorn's trio worker, inside the node's nursery).

Bound to 127.0.0.1 by default. Reads are open to local processes; writes (and ``/mcp``) need
the bearer token the node generates into its data dir (``api.token``, mode 0600) on first
start. Errors are JSON ``{"error": {"code", "message"}}``; bodies are limited to 64 KiB (1 MiB
for the batch endpoints). The contract is ``openapi.json`` beside this file, served at
``/openapi.json`` and checked against the routes and real answers by the tests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from zoonode.context import Lesson, render_context
from zoonode.experiences import check_lesson
from zoonode.knowledge import Filters
from zoonode.protocol import ProtocolError, decode, record_to_dict

if TYPE_CHECKING:
    from zoonode.node import Node

log = logging.getLogger(__name__)

TOKEN_FILE = "api.token"
MAX_BODY = 64 * 1024
MAX_BATCH_BODY = 1024 * 1024
MAX_BATCH = 256
EXPORT_PAGE = 500


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


async def _body(request: Request, limit: int = MAX_BODY) -> dict[str, Any]:
    try:
        size = int(request.headers.get("content-length") or 0)
    except ValueError as exc:
        raise ApiError(400, "bad_request", "content-length is not a number") from exc
    if size > limit:
        raise ApiError(413, "too_large", f"body over {limit} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise ApiError(413, "too_large", f"body over {limit} bytes")
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


def openapi_document() -> dict[str, Any]:
    return json.loads((resources.files("zoonode") / "openapi.json").read_text())


class _NodeCollector:
    """Prometheus view of the node's counters, read at scrape time."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self):
        m = self.node.metrics()
        events = CounterMetricFamily(
            "zoonode_events", "Node events by kind and outcome", labels=["kind", "reason"]
        )
        for name, value in sorted(m["counters"].items()):
            kind, _, reason = name.partition(":")
            events.add_metric([kind, reason], value)
        records = CounterMetricFamily(
            "zoonode_gossip_records",
            "Gossiped records by validation verdict and reason",
            labels=["verdict", "reason"],
        )
        for name, value in sorted(m["gossip_verdicts"].items()):
            verdict, _, reason = name.partition(":")
            records.add_metric([verdict, reason], value)
        yield events
        yield records
        yield CounterMetricFamily(
            "zoonode_gossip_messages_in", "Gossip messages received", value=m["messages_in"]
        )
        yield CounterMetricFamily(
            "zoonode_gossip_messages_out", "Gossip messages published", value=m["messages_out"]
        )
        yield CounterMetricFamily(
            "zoonode_gossip_messages_not_forwarded",
            "Gossip messages accepted but not forwarded: all their records were ignored",
            value=m["messages_not_forwarded"],
        )
        backlog = m["backlog"]
        yield GaugeMetricFamily(
            "zoonode_backlog_pending",
            "Stored records waiting for the embedding check",
            value=backlog["pending"],
        )
        yield GaugeMetricFamily(
            "zoonode_backlog_check_rate",
            "Records re-encoded for the embedding check per second (last 30 s)",
            value=backlog["check_rate"],
        )
        checks = CounterMetricFamily(
            "zoonode_embedding_checks",
            "Records through the embedding check, by path (background, on_demand) and outcome",
            labels=["path", "outcome"],
        )
        for path in ("background", "on_demand"):
            for outcome in ("promoted", "rejected"):
                checks.add_metric([path, outcome], m["counters"].get(f"check:{path}:{outcome}", 0))
        yield checks
        yield GaugeMetricFamily(
            "zoonode_ingest_queue", "Validated records queued for the store", m["ingest_queue"]
        )
        yield CounterMetricFamily(
            "zoonode_gossip_reader_wait_seconds",
            "Time the gossip reader waited for room in the ingest queue",
            value=m["gossip_reader_wait_s"],
        )
        yield GaugeMetricFamily("zoonode_replica_size", "Vectors in the replica", m["replica"])
        yield GaugeMetricFamily("zoonode_peers", "Connected peers", m["peers"])


def _lesson_item(body: Any, where: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(422, "bad_field", f"{where} must be an object")
    return {
        "text": _field(body, "text", str),
        "domain": _field(body, "domain", str),
        "confidence": float(_field(body, "confidence", (int, float), 0.5)),
        "examples": _field(body, "examples", list, []),
        "source_model": _field(body, "source_model", str, ""),
    }


def _filters(body: dict) -> Filters:
    min_confidence = _field(body, "min_confidence", (int, float), None)
    return Filters(
        domain=_field(body, "domain", str, None),
        min_confidence=float(min_confidence) if min_confidence is not None else None,
    )


def _k(body: dict) -> int | None:
    k = _field(body, "k", int, None)
    if k is not None and not 1 <= k <= 50:
        raise ApiError(422, "bad_field", "k must be in 1..50")
    return k


def _selection_json(selection: Any, records: dict) -> dict[str, Any]:
    return {
        "selected": [
            {
                **record_to_dict(records[s.candidate.id]),
                "relevance": s.relevance,
                "agreement": s.agreement,
                "distance_to_centre": s.distance_to_centre,
                "group_size": s.group_size,
                "standing": s.candidate.reputation,
                "score": s.score,
            }
            for s in selection.selected
        ],
        "considered": selection.considered,
        "groups": selection.groups,
        "authors": selection.authors,
        "down_weighted": selection.down_weighted,
    }


def create_app(node: Node, token: str, *, mcp: bool = True) -> Starlette:
    registry = CollectorRegistry()
    registry.register(_NodeCollector(node))
    latency = Histogram(
        "zoonode_request_seconds",
        "End-to-end latency of API reads that run a selection (query encoding included)",
        ["endpoint"],
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        registry=registry,
    )

    def require_token(request: Request) -> None:
        if not secrets.compare_digest(request.headers.get("authorization", ""), f"Bearer {token}"):
            raise ApiError(401, "unauthorized", "write endpoints need the node's bearer token")

    async def status(request: Request) -> Response:
        info = await node.current_info()
        return JSONResponse(
            {
                **info.as_dict(),
                "author": node.author.hex(),
                "replica": len(node.kb.replica),
                "peers": len(node.connected_peers()),
                "mesh": len(node.gossip.mesh_peers()),
                "backlog": node.checker.status(),
                "version": _version(),
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

    async def publish(items: list[dict]) -> list[tuple[bytes, str]]:
        try:
            return await node.publish(items)
        except (ProtocolError, TypeError, ValueError) as exc:
            raise ApiError(422, *_protocol_error(exc)) from exc

    async def share(request: Request) -> Response:
        require_token(request)
        item = _lesson_item(await _body(request), "body")
        [(record_id, outcome)] = await publish([item])
        return JSONResponse(
            {"id": record_id.hex(), "outcome": outcome},
            status_code=201 if outcome == "accepted" else 200,
        )

    async def share_batch(request: Request) -> Response:
        """Many lessons at once (``zoonode import``): bad items are reported, good ones kept."""
        require_token(request)
        raw = _field(await _body(request, MAX_BATCH_BODY), "experiences", list)
        if len(raw) > MAX_BATCH:
            raise ApiError(413, "too_many", f"at most {MAX_BATCH} experiences per request")
        results: list[dict[str, Any]] = [{} for _ in raw]
        good: list[tuple[int, dict]] = []
        for i, entry in enumerate(raw):
            try:
                item = _lesson_item(entry, f"experiences[{i}]")
                check_lesson(item, node.encoder.space)
                good.append((i, item))
            except ApiError as exc:
                results[i] = {"error": {"code": exc.code, "message": exc.message}}
            except (ProtocolError, TypeError, ValueError) as exc:
                code, message = _protocol_error(exc)
                results[i] = {"error": {"code": code, "message": message}}
        if good:
            published = await publish([item for _, item in good])
            for (i, _), (record_id, outcome) in zip(good, published, strict=True):
                results[i] = {"id": record_id.hex(), "outcome": outcome}
        return JSONResponse({"results": results})

    async def import_records(request: Request) -> Response:
        """Signed records from another node's export: checked like gossip, authorship kept."""
        require_token(request)
        raw = _field(await _body(request, MAX_BATCH_BODY), "wires", list)
        if len(raw) > MAX_BATCH:
            raise ApiError(413, "too_many", f"at most {MAX_BATCH} records per request")
        results: list[dict[str, Any]] = [{} for _ in raw]
        wires: list[tuple[int, bytes]] = []
        for i, text in enumerate(raw):
            try:
                wires.append((i, bytes.fromhex(text)))
            except (TypeError, ValueError):
                results[i] = {"error": {"code": "bad_hex", "message": "wire is not hex"}}
        outcomes = await node.import_records([w for _, w in wires])
        for (i, _), (record_id, outcome) in zip(wires, outcomes, strict=True):
            if outcome.startswith("rejected:"):
                reason = outcome.split(":", 1)[1]
                results[i] = {"error": {"code": reason, "message": f"record rejected: {reason}"}}
            else:
                results[i] = {"id": record_id.hex() if record_id else None, "outcome": outcome}
        return JSONResponse({"results": results})

    async def get_experience(request: Request) -> Response:
        record_id = _hex_id(request.path_params["id"])
        row = await node.experience(record_id)  # a pending record is checked first
        if row is None:
            raise ApiError(404, "not_found", "no such experience")
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

    async def run_query(body: dict, text_field: str, endpoint: str) -> tuple[Any, dict]:
        text = _field(body, text_field, str)
        if not text.strip():
            raise ApiError(422, "bad_field", f"{text_field} is empty")
        federated = _field(body, "federated", bool, False)
        k, filters = _k(body), _filters(body)
        started = time.perf_counter()
        result = await node.query(text=text, k=k, filters=filters, federated=federated)
        latency.labels(endpoint).observe(time.perf_counter() - started)
        return result

    async def query(request: Request) -> Response:
        selection, records = await run_query(await _body(request), "text", "query")
        return JSONResponse(_selection_json(selection, records))

    async def context(request: Request) -> Response:
        body = await _body(request)
        selection, records = await run_query(body, "task", "context")
        lessons = [
            Lesson(exp.text, exp.domain, exp.confidence)
            for exp in (records[s.candidate.id].experience for s in selection.selected)
        ]
        return JSONResponse(
            {
                "prompt": render_context(body["task"], lessons),
                "experiences": [s.candidate.id.hex() for s in selection.selected],
            }
        )

    async def export(request: Request) -> Response:
        domain = request.query_params.get("domain") or None

        async def lines() -> AsyncIterator[bytes]:
            after = 0
            while True:
                page = await node.export_page(after, EXPORT_PAGE, domain)
                if not page:
                    return
                chunk = []
                for seq, record in page:
                    chunk.append(json.dumps({**record_to_dict(record), "wire": record.wire.hex()}))
                    after = seq
                yield ("\n".join(chunk) + "\n").encode()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ApiError):
            return _error(exc.status, exc.code, exc.message)
        log.exception("API error on %s", request.url.path)
        return _error(500, "internal", "internal error")

    routes = [
        Route("/v1/status", status),
        Route("/v1/peers", peers),
        Route("/v1/experiences", share, methods=["POST"]),
        Route("/v1/experiences/batch", share_batch, methods=["POST"]),
        Route("/v1/experiences/{id}", get_experience),
        Route("/v1/experiences/{id}/revoke", revoke, methods=["POST"]),
        Route("/v1/records", import_records, methods=["POST"]),
        Route("/v1/query", query, methods=["POST"]),
        Route("/v1/context", context, methods=["POST"]),
        Route("/v1/export", export),
        Route("/openapi.json", openapi),
        Route("/metrics", metrics),
    ]
    endpoint = None
    if mcp:
        from zoonode.mcpserver import endpoint_for

        async def this_app(scope, receive, send) -> None:  # ``app`` exists once called
            await app(scope, receive, send)

        endpoint = endpoint_for(this_app, token)
        routes.append(Route("/mcp", endpoint, methods=["POST"]))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if endpoint is None:
            yield
            return
        async with endpoint.lifespan():
            yield

    app = Starlette(
        routes=routes,
        exception_handlers={ApiError: on_error, Exception: on_error},
        lifespan=lifespan,
    )
    return app


def _version() -> str:
    from zoonode import __version__

    return __version__


def _protocol_error(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, ProtocolError):
        return exc.code.value, exc.message
    return "bad_experience", str(exc)


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
    app = create_app(node, token, mcp=node.cfg.api.mcp)
    await serve(app, config, task_status=task_status)
