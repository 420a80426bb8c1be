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

import anyio
import orjson
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from zoonode import hypercorn_h11, inputs
from zoonode.context import Lesson, render_context
from zoonode.inputs import InputError
from zoonode.knowledge import Filters
from zoonode.node.feedback import RateRefused
from zoonode.protocol import ProtocolError, check_domain, decode, record_to_dict
from zoonode.store import StorageFull

if TYPE_CHECKING:
    from zoonode.node import Node

log = logging.getLogger(__name__)

TOKEN_FILE = "api.token"
MAX_BODY = 64 * 1024
MAX_BATCH_BODY = 1024 * 1024
MAX_BATCH = 256
MAX_BANS_LISTED = 10_000  # GET /v1/banned: the newest; "count" says how many in all
EXPORT_PAGE = 500
BODY_TIMEOUT = 30.0  # s: api.body_timeout_s's default, for an app built without a node
MAX_HEAD = 16 * 1024  # a request line and headers, at most (Hypercorn's h11_max_incomplete_size)
# Starlette's own errors, as the API's JSON.
HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}
# Node.revoke outcomes that are refusals: (status, code, message).
REVOKE_REFUSALS = {
    "not_found": (404, "not_found", "no such experience"),
    "not_author": (403, "not_author", "only the author may revoke an experience"),
    "not_revocable": (409, "not_revocable", "a revocation cannot itself be revoked"),
}
# The verdicts an agent may report, as the record's integers (SPEC.md §8).
VERDICTS = {"helpful": 1, "harmful": -1, "withdrawn": 0}
# Feedback.rate refusals: (status, code); the message is the room's.
FEEDBACK_REFUSALS = {
    "not_found": (404, "not_found"),
    "not_a_lesson": (409, "not_a_lesson"),
    "own_lesson": (409, "own_lesson"),
    "rate_limited": (429, "rate_limited"),
}


def load_or_create_token(data_dir: Path) -> str:
    path = data_dir / TOKEN_FILE
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


ApiError = InputError  # an API error is a refused input: status, code, message


def bearer_matches(header: str | bytes, token: str) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer <token>``, in constant time.
    Compared as bytes: a header with non-ASCII bytes (Starlette decodes headers as latin-1)
    is simply wrong, where ``compare_digest`` on two ``str`` raises TypeError."""
    given = header.encode("latin-1", "replace") if isinstance(header, str) else header
    return secrets.compare_digest(given, f"Bearer {token}".encode())


class Json(JSONResponse):
    """The API's JSON answers, rendered by orjson, ~10x faster than Starlette's ``json.dumps``
    (a 10-result query answer, ~10 KB: ~120 -> ~10 us) and byte for byte the same on real
    answers: UTF-8, compact, floats as their shortest round-trip digits (under 1e-4 without an
    exponent: 0.00001 for 1e-05, the same number). Float subclasses (np.float64) are numbers,
    as with ``json.dumps``, and so are other numpy scalars; a NaN or infinity is ``null``
    (``json.dumps(allow_nan=False)`` raised: a 500)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(
            content,
            default=_plain_number,
            option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS,
        )


def _plain_number(value: Any) -> float:
    """orjson's fallback: a float subclass as a float (json.dumps takes them too)."""
    if isinstance(value, float):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _error(status: int, code: str, message: str, headers: dict | None = None) -> Json:
    return Json({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


async def _raw_body(request: Request, limit: int) -> bytes:
    try:
        size = int(request.headers.get("content-length") or 0)
    except ValueError as exc:
        raise ApiError(400, "bad_request", "content-length is not a number") from exc
    if size > limit:
        raise ApiError(413, "too_large", f"body over {limit} bytes")
    raw = b""
    timeout = getattr(request.app.state, "body_timeout", BODY_TIMEOUT)
    try:
        with anyio.fail_after(timeout):
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > limit:
                    raise ApiError(413, "too_large", f"body over {limit} bytes")
    except TimeoutError:
        raise body_timed_out(timeout) from None
    return raw


def body_timed_out(timeout: float) -> InputError:
    """A body not whole ``timeout`` seconds after its head (``api.body_timeout_s``): refused,
    and the connection closes (its client is still sending), so a client that withholds a
    body holds neither a handler nor a connection for longer."""
    return InputError(
        408, "request_timeout", f"the body did not arrive within {timeout:g} s (api.body_timeout_s)"
    )


async def _body(request: Request, limit: int = MAX_BODY, depth: int = inputs.MAX_DEPTH) -> dict:
    """The JSON object of a request (an empty body is ``{}``), through ``inputs.parse_json``."""
    raw = await _raw_body(request, limit)
    return inputs.parse_object(raw, max_depth=depth) if raw.strip() else {}


async def _batch_body(request: Request) -> dict[str, Any]:
    """A batch body: each item may nest as deep as the same item sent alone (``zoonode
    import`` wraps the lines it read in ``{"experiences": [...]}``)."""
    return await _body(request, MAX_BATCH_BODY, inputs.MAX_DEPTH + inputs.ENVELOPE_DEPTH)


def _list_field(body: dict, name: str, limit: int) -> list:
    inputs.check_fields(body, [name], required=[name])  # as every body model (inputs._Strict)
    value = body[name]
    if not isinstance(value, list):
        raise ApiError(422, "wrong_type", f"{name} must be a list, got {inputs.kind_of(value)}")
    if len(value) > limit:
        raise ApiError(413, "too_many", f"at most {limit} items in {name}, got {len(value)}")
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
        feedback = CounterMetricFamily(
            "zoonode_gossip_feedback_records",
            "Gossiped feedback records (NETWORK.md §4.7) by validation verdict and reason",
            labels=["verdict", "reason"],
        )
        for name, value in sorted(m["feedback_verdicts"].items()):
            verdict, _, reason = name.partition(":")
            feedback.add_metric([verdict, reason], value)
        yield events
        yield records
        yield feedback
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
        yield CounterMetricFamily(
            "zoonode_embedding_checks_deferred",
            "Waiting records a query would have picked, left to the background check because "
            "checked records gave as many answers above the same floor",
            value=m["counters"].get("check:deferred", 0),
        )
        yield GaugeMetricFamily(
            "zoonode_ingest_queue", "Validated records queued for the store", m["ingest_queue"]
        )
        yield CounterMetricFamily(
            "zoonode_gossip_malformed_rpc",
            "Peers' pubsub streams reset for an RPC the gossip library could not handle",
            value=m["gossip_malformed_rpc"],
        )
        yield CounterMetricFamily(
            "zoonode_gossip_reader_wait_seconds",
            "Time the gossip reader waited for room in the ingest queue",
            value=m["gossip_reader_wait_s"],
        )
        trust = m["trust"]
        for name, help_text, value in (
            ("trust_votes", "Standing verdicts in the trust graph (target held)", "votes"),
            ("trust_voters", "Voters in the trust graph", "voters"),
            ("trust_authors", "Authors voted on in the trust graph", "authors"),
            ("feedback_stored", "Standing verdicts stored (held target or not)", "stored"),
            (
                "feedback_untrusted_stored",
                "Stored verdicts from voters without trust here",
                "untrusted_stored",
            ),
            (
                "feedback_untrusted_max",
                "Bound on stored verdicts from voters without trust (trust.max_untrusted_verdicts)",
                "max_untrusted",
            ),
        ):
            yield GaugeMetricFamily(f"zoonode_{name}", help_text, value=trust[value])
        if trust["recomputed_at"] is not None:
            yield GaugeMetricFamily(
                "zoonode_trust_recomputed_timestamp_seconds",
                "Unix time of the last trust recomputation",
                value=trust["recomputed_at"] / 1000,
            )
            yield GaugeMetricFamily(
                "zoonode_trust_recompute_seconds",
                "Duration of the last trust recomputation (graph read and compute)",
                value=trust["seconds"],
            )
        yield GaugeMetricFamily("zoonode_replica_size", "Vectors in the replica", m["replica"])
        yield GaugeMetricFamily("zoonode_peers", "Connected peers", m["peers"])
        yield GaugeMetricFamily(
            "zoonode_banned_authors",
            "Authors banned on this node for failed embedding checks",
            m["banned"],
        )


def _filters(query: inputs.QueryIn | inputs.ContextIn) -> Filters:
    return Filters(domain=query.domain, min_confidence=query.min_confidence)


def server_timing(stages: dict[str, float], app_ms: float) -> str:
    """A ``Server-Timing`` header value (W3C Server Timing) from a query's stage times in ms
    (``Answer.timings``) and the handler's total ``app_ms`` (validation, the query, the JSON
    body): e.g. ``encode;dur=9.81, search;dur=3.02, ..., app;dur=17.20``."""
    parts = [f"{name};dur={ms:.2f}" for name, ms in stages.items()]
    return ", ".join([*parts, f"app;dur={app_ms:.2f}"])


def _selection_json(selection: Any, records: dict, trust: dict | None = None) -> dict[str, Any]:
    trust = trust or {}
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
                "trust": trust.get(s.candidate.id),
            }
            for s in selection.selected
        ],
        "considered": selection.considered,
        "groups": selection.groups,
        "authors": selection.authors,
        "down_weighted": selection.down_weighted,
        **_floors_json(selection),
    }


def _floors_json(selection: Any) -> dict[str, float]:
    """The similarity floors the query used (selection.similarity_floors)."""
    return {"floor": selection.floor, "established_floor": selection.established_floor}


def create_app(
    node: Node, token: str, *, mcp: bool = True, body_timeout: float = BODY_TIMEOUT
) -> Starlette:
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
        if not bearer_matches(request.headers.get("authorization", ""), token):
            raise ApiError(401, "unauthorized", "write endpoints need the node's bearer token")

    async def status(request: Request) -> Response:
        info = await node.current_info()
        return Json(
            {
                **info.as_dict(),
                "author": node.author.hex(),
                "replica": len(node.kb.replica),
                "peers": len(node.connected_peers()),
                "mesh": len(node.gossip.mesh_peers()),
                "backlog": node.checker.status(),
                "banned": len(node.banned),
                "trust": node.feedback.status().as_dict(),
                "version": _version(),
            }
        )

    async def banned(request: Request) -> Response:
        """Authors banned on this node (the embedding check's evidence), newest first."""
        bans = await node.in_kb(node.kb.store.bans, MAX_BANS_LISTED)
        return Json(
            {
                "count": len(node.banned),
                "banned": [{"author": a.hex(), "reason": r, "at": at} for a, r, at in bans],
            }
        )

    async def peers(request: Request) -> Response:
        scores = node.gossip.peer_scores()
        mesh = set(node.gossip.mesh_peers())
        return Json(
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
        except ProtocolError as exc:  # checked before; kept for any rule only signing sees
            raise inputs.from_protocol(exc) from exc

    async def share(request: Request) -> Response:
        require_token(request)
        item = inputs.lesson(await _body(request), node.encoder.space)
        [(record_id, outcome)] = await publish([item])
        return Json(
            {"id": record_id.hex(), "outcome": outcome},
            status_code=201 if outcome == "accepted" else 200,
        )

    async def share_batch(request: Request) -> Response:
        """Many lessons at once (``zoonode import``): bad items are reported, good ones kept."""
        require_token(request)
        raw = _list_field(await _batch_body(request), "experiences", MAX_BATCH)
        results: list[dict[str, Any]] = [{} for _ in raw]
        good: list[tuple[int, dict]] = []
        for i, entry in enumerate(raw):
            try:
                good.append((i, inputs.lesson(entry, node.encoder.space, f"experiences[{i}]")))
            except InputError as exc:
                results[i] = exc.as_json()
        if good:
            published = await publish([item for _, item in good])
            for (i, _), (record_id, outcome) in zip(good, published, strict=True):
                results[i] = {"id": record_id.hex(), "outcome": outcome}
        return Json({"results": results})

    async def import_records(request: Request) -> Response:
        """Signed records from another node's export: checked like gossip, authorship kept."""
        require_token(request)
        raw = _list_field(await _batch_body(request), "wires", MAX_BATCH)
        results: list[dict[str, Any]] = [{} for _ in raw]
        wires: list[tuple[int, bytes]] = []
        for i, text in enumerate(raw):
            if not isinstance(text, str):
                error = ApiError(422, "wrong_type", f"wires[{i}] must be a hex string")
                results[i] = error.as_json()
                continue
            try:
                wires.append((i, bytes.fromhex(text)))
            except ValueError:
                results[i] = ApiError(400, "bad_hex", f"wires[{i}] is not hex").as_json()
        outcomes = await node.import_records([w for _, w in wires])
        for (i, _), (record_id, outcome) in zip(wires, outcomes, strict=True):
            if outcome.startswith("rejected:"):
                reason = outcome.split(":", 1)[1]
                results[i] = {"error": {"code": reason, "message": f"record rejected: {reason}"}}
            else:
                results[i] = {"id": record_id.hex() if record_id else None, "outcome": outcome}
                if outcome == "accepted":  # stored, not yet active: the check follows
                    results[i]["pending"] = True
        return Json({"results": results})

    async def get_experience(request: Request) -> Response:
        record_id = _hex_id(request.path_params["id"])
        row = await node.experience(record_id)  # a pending record is checked first
        if row is None:
            raise ApiError(404, "not_found", "no such experience")
        return Json(
            {
                **record_to_dict(decode(row.wire)),
                "status": row.status.name.lower(),
                "peer": row.peer,
                "accepted_at": row.accepted_at,
            }
        )

    async def revoke(request: Request) -> Response:
        """Idempotent: a second revoke answers ``already_revoked`` and emits nothing."""
        require_token(request)
        record_id = _hex_id(request.path_params["id"])
        outcome = await node.revoke(record_id)
        refused = REVOKE_REFUSALS.get(outcome)
        if refused:
            raise ApiError(*refused)
        return Json({"id": record_id.hex(), "outcome": outcome})

    async def run_query(
        query: inputs.QueryIn | inputs.ContextIn, endpoint: str, votes: bool = False
    ) -> Any:
        text = query.text if isinstance(query, inputs.QueryIn) else query.task
        started = time.perf_counter()
        answer = await node.answer(
            text=text, k=query.k, filters=_filters(query), federated=query.federated, votes=votes
        )
        latency.labels(endpoint).observe(time.perf_counter() - started)
        return answer

    async def query(request: Request) -> Response:
        started = time.perf_counter()
        body = inputs.validate(inputs.QueryIn, await _body(request))
        answer = await run_query(body, "query", votes=True)  # one trip to the store
        trust = node.queries.explain_votes(answer.selection, answer.votes)
        response = Json(_selection_json(answer.selection, answer.records, trust))
        response.headers["server-timing"] = server_timing(
            answer.timings, (time.perf_counter() - started) * 1000
        )
        return response

    async def context(request: Request) -> Response:
        started = time.perf_counter()
        body = inputs.validate(inputs.ContextIn, await _body(request))
        answer = await run_query(body, "context")
        selection, records = answer.selection, answer.records
        lessons = [
            Lesson(exp.text, exp.domain, exp.confidence, s.candidate.id.hex())
            for s, exp in ((s, records[s.candidate.id].experience) for s in selection.selected)
        ]
        response = Json(
            {
                "prompt": render_context(body.task, lessons),
                "experiences": [s.candidate.id.hex() for s in selection.selected],
                "considered": selection.considered,  # 0 with a filter: it matched nothing
                **_floors_json(selection),
            }
        )
        response.headers["server-timing"] = server_timing(
            answer.timings, (time.perf_counter() - started) * 1000
        )
        return response

    async def export(request: Request) -> Response:
        # a parameter it does not define is refused as a body's unknown key (?domian=x)
        inputs.check_fields(dict(request.query_params), ["domain"])
        domain = request.query_params.get("domain") or None
        if domain is not None:
            try:
                check_domain(domain)
            except ProtocolError as exc:
                raise inputs.from_protocol(exc) from exc

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

    async def feedback(request: Request) -> Response:
        """An agent's verdict on an experience it used: signed by this node, stored, gossiped
        on the feedback topic. Body {"verdict": "helpful"|"harmful"|"withdrawn", "task"?}."""
        require_token(request)
        record_id = _hex_id(request.path_params["id"])
        body = inputs.validate(inputs.FeedbackIn, await _body(request))
        try:
            result = await node.rate(record_id, VERDICTS[body.verdict], body.task)
        except RateRefused as exc:
            raise ApiError(*FEEDBACK_REFUSALS[exc.code], exc.message) from exc
        return Json(result, status_code=201 if result["outcome"] == "accepted" else 200)

    async def openapi(request: Request) -> Response:
        return Json(openapi_document())

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, InputError):
            return _error(exc.status, exc.code, exc.message)
        if isinstance(exc, HTTPException):  # Starlette's own: unknown path or method
            code = HTTP_CODES.get(exc.status_code, "bad_request")
            message = str(exc.detail)
            if exc.status_code == 404:
                message = f"no such path: {request.url.path}"
            elif exc.status_code == 405:
                allowed = (exc.headers or {}).get("Allow", "")
                message = (
                    f"{request.method} is not allowed on {request.url.path} (allowed: {allowed})"
                )
            return _error(exc.status_code, code, message, exc.headers)
        if isinstance(exc, StorageFull):
            log.warning("write refused on %s: %s", request.url.path, exc)
            return _error(507, "storage_full", str(exc))
        log.exception("API error on %s", request.url.path)
        return _error(500, "internal", "internal error")

    routes = [
        Route("/v1/status", status),
        Route("/v1/peers", peers),
        Route("/v1/banned", banned),
        Route("/v1/experiences", share, methods=["POST"]),
        Route("/v1/experiences/batch", share_batch, methods=["POST"]),
        Route("/v1/experiences/{id}", get_experience),
        Route("/v1/experiences/{id}/revoke", revoke, methods=["POST"]),
        Route("/v1/experiences/{id}/feedback", feedback, methods=["POST"]),
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

        endpoint = endpoint_for(this_app, token, body_timeout)
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
        exception_handlers={
            InputError: on_error,
            HTTPException: on_error,
            StorageFull: on_error,
            Exception: on_error,  # the last resort (Starlette re-raises it for the log)
        },
        lifespan=lifespan,
    )
    # A path with a trailing slash is another path: a typed 404, never Starlette's bare 307
    # to the slashless one (which a POST client may not follow, or follow as a GET).
    app.router.redirect_slashes = False
    app.state.body_timeout = body_timeout
    return app


def _version() -> str:
    from zoonode import __version__

    return __version__


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

    hypercorn_h11.install()  # a sized answer's head and body in one write
    token = load_or_create_token(node.cfg.data_path)
    api = node.cfg.api
    config = HyperConfig()
    config.bind = [listen]
    config.accesslog = None
    config.errorlog = logging.getLogger("zoonode.api.server")
    # Slow clients: a request head must be whole within idle_timeout_s (Hypercorn's keep-alive
    # timer runs from the connection's start, and again after each answer, until a whole head
    # arrives; a head over MAX_HEAD is refused), and a body within body_timeout_s (the app:
    # _raw_body, mcpserver.HttpEndpoint). Not Hypercorn's read_timeout: it bounds each wait
    # for the client's next bytes, answers in progress included, and so would cut an export
    # streamed for longer than it to a client that, rightly, sends nothing meanwhile.
    config.keep_alive_timeout = api.idle_timeout_s
    config.h11_max_incomplete_size = MAX_HEAD
    config.read_timeout = None
    app = create_app(node, token, mcp=api.mcp, body_timeout=api.body_timeout_s)
    await serve(app, config, task_status=task_status)
