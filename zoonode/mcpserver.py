"""The MCP server: zoonode's API as tools and a prompt for agent hosts (package ``mcp``).

One server definition, two transports:
- stdio, ``zoonode mcp``: the agent host spawns it; it talks to the running node's HTTP API;
- streamable HTTP at ``/mcp`` on the node itself (``api.mcp`` in config), bearer token required.
Either way every tool goes through ``AsyncClient``, so MCP sees exactly the API's answers and
errors (an API error becomes an MCP tool error carrying the API's code).
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, BinaryIO

import anyio
import mcp_types as types
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from zoonode import inputs
from zoonode.client import AsyncClient, ClientError
from zoonode.humanview import filters_text, no_match_text

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1024 * 1024  # one stdio line; an MCP request is a few KB
MAX_HTTP_BODY = 64 * 1024  # one POST /mcp body, as the API's other bodies
MAX_ID = 2**53  # JSON-RPC ids beyond this do not survive a JSON round trip in every client

INSTRUCTIONS = (
    "zoonode shares short lessons ('experiences') learned by LLM agents across organisations. "
    "Before a task, call search_experiences (or use the inject_experiences prompt) to get the "
    "lessons peers learned on similar tasks; after solving something the hard way, share the "
    "lesson in one or two sentences with share_experience. After the task, tell the network "
    "whether each lesson you used helped or misled you with rate_experience (its id)."
)


def _brief(item: dict) -> dict:
    keep = (
        "id",
        "text",
        "domain",
        "confidence",
        "author",
        "relevance",
        "group_size",
        "standing",
        "trust",
        "examples",
    )
    return {k: item[k] for k in keep if k in item}


class _Server(MCPServer):
    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        """Arguments the tool's schema refuses answer, as MCP asks, an ``isError`` result the
        model can read and correct, worded with the API's codes (``wrong_type: k must be an
        integer, got a string``). An argument the tool does not define is refused as a key
        an API body does not define is (``unknown_field``), not dropped unseen: ``limit``
        for ``k`` would otherwise answer with 5 lessons and no word about it. Every tool
        error reads ``CODE: MESSAGE``, the node's refusals too (``not_found: no such
        experience``), without the SDK's "Error executing tool NAME: " prefix; an unknown
        tool is ``unknown_tool``, a crash ``internal`` (its text withheld, as the API's)."""
        tool = self._tool_manager.get_tool(name)
        if tool is None:  # the SDK's own words would be "Unknown tool: NAME"
            raise ToolError(f"unknown_tool: {name} is not a tool of this server")
        model = tool.fn_metadata.arg_model
        names = [field.alias or key for key, field in model.model_fields.items()]
        try:
            inputs.check_fields(arguments or {}, names)
            # No coercion, as the API's bodies (inputs._Strict): true is not k = 1,
            # "0.5" is not a number; the same fault, the same code (wrong_type).
            model.model_validate(arguments or {}, strict=True)
        except inputs.InputError as exc:
            raise ToolError(f"{exc.code}: {exc.message}") from None
        except ValidationError as exc:
            err = inputs.validation_error(exc)
            raise ToolError(f"{err.code}: {err.message}") from None
        try:
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError as exc:  # a crash: logged with its traceback, text withheld
            raise UnexpectedToolError(f"internal: internal error in {name}") from exc.__cause__
        except ToolError as exc:
            # The SDK prefixes what a tool raises with "Error executing tool NAME: "; the
            # model reads the same "CODE: MESSAGE" whether its arguments or the node refused.
            cause = exc.__cause__
            if isinstance(cause, ValidationError):
                err = inputs.validation_error(cause)
                raise ToolError(f"{err.code}: {err.message}") from cause
            if isinstance(cause, _ApiToolError):
                raise _ApiToolError(str(cause)) from cause.__cause__
            raise

    async def get_prompt(
        self, name: str, arguments: dict[str, Any] | None = None, context: Any = None
    ) -> Any:
        """A prompt argument it does not define (``unknown_field``) or a required one absent
        (``missing_field``) is the JSON-RPC error -32602 (invalid params) with the API's code,
        as a bad ``k`` is."""
        prompt = self._prompt_manager.get_prompt(name)
        if prompt is not None:
            declared = prompt.arguments or []
            try:
                inputs.check_fields(
                    arguments or {},
                    [a.name for a in declared],
                    required=[a.name for a in declared if a.required],
                )
            except inputs.InputError as exc:
                raise _invalid_params(exc) from None
        return await super().get_prompt(name, arguments, context)


class _ApiToolError(ToolError):
    """A tool's refusal in the API's words (``CODE: MESSAGE``), shown to the model as is."""


def _invalid_params(exc: inputs.InputError) -> MCPError:
    return MCPError(
        code=types.INVALID_PARAMS, message=f"{exc.code}: {exc.message}", data={"code": exc.code}
    )


def build_server(client: AsyncClient) -> MCPServer:
    from zoonode import __version__

    server = _Server("zoonode", instructions=INSTRUCTIONS, version=__version__)

    async def call(coro: Any) -> Any:
        try:
            return await coro
        except ClientError as exc:
            raise _ApiToolError(f"{exc.code}: {exc.message}") from exc

    @server.tool()
    async def search_experiences(
        query: str,
        k: int = 5,
        domain: str | None = None,
        min_confidence: float | None = None,
        federated: bool = False,
    ) -> dict:
        """Find lessons relevant to a task or question, chosen by Byzantine-robust selection.

        query: the task or question in plain words. k: how many (1-50). domain: a dotted
        domain prefix such as "math.geometry". federated: also ask connected peers.
        """
        result = await call(client.query(query, k, domain, min_confidence, federated))
        found = {
            "experiences": [_brief(s) for s in result["selected"]],
            "considered": result["considered"],
            "down_weighted": result["down_weighted"],
            "floor": result["floor"],
            "established_floor": result["established_floor"],
        }
        hint = no_match_text(result, filters_text(domain, min_confidence))
        return {**found, "note": hint} if hint else found

    @server.tool()
    async def share_experience(
        text: str,
        domain: str,
        confidence: float = 0.5,
        examples: list[dict] | None = None,
        source_model: str = "",
    ) -> dict:
        """Share a lesson with the network: signed by this node and gossiped to peers.

        text: the lesson in about 32 words, general enough to help on other tasks.
        domain: dotted lowercase words, e.g. "software.testing". confidence: 0-1.
        examples: optional [{"input": ..., "output": ..., "correct": true}]. Sharing the same
        lesson twice returns the first id.
        """
        return await call(client.share(text, domain, confidence, examples, source_model))

    @server.tool()
    async def rate_experience(id: str, verdict: inputs.Verdict, task: str | None = None) -> dict:
        """Report whether a lesson you used helped: verdict "helpful" (it was the relevant
        advice and it worked), "harmful" (it misled you) or "withdrawn" (cancel your earlier
        verdict). id: the 64-hex-character id shown with the lesson. task: optional, the task
        text (only its SHA-256 is sent). Your verdicts make good authors trusted."""
        return await call(client.feedback(id, verdict, task))

    @server.tool()
    async def get_experience(id: str) -> dict:
        """Fetch one experience by its 64-hex-character id, with its status."""
        return await call(client.get(id))

    @server.prompt()
    async def inject_experiences(task: str, k: str = "5") -> str:
        """The task, preceded by a numbered "# Learned Experiences" list selected for it.

        k: how many experiences (1-50). Prompt arguments are text: a k that is not an
        integer in range is the JSON-RPC error -32602 (invalid params) with the API's code.
        """
        try:
            count = inputs.k_argument(k)
        except inputs.InputError as exc:
            raise _invalid_params(exc) from None
        try:  # a prompt's error reaches the host as a JSON-RPC error with our message
            return (await client.context(task, count))["prompt"]
        except ClientError as exc:
            raise MCPError(
                code=types.INTERNAL_ERROR,
                message=f"{exc.code}: {exc.message}",
                data={"code": exc.code},
            ) from None

    for tool in server._tool_manager.list_tools():  # say so in the schemas the host reads
        tool.parameters["additionalProperties"] = False
    return server


class HttpEndpoint:
    """ASGI app for ``/mcp`` on the node: bearer token first, then MCP's streamable HTTP.

    Stateless JSON mode: every request stands alone, so nothing is kept per client and a node
    restart costs clients nothing. ``lifespan()`` must be entered while it serves."""

    def __init__(self, server: MCPServer, token: str, body_timeout: float = 30.0) -> None:
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
        from mcp.server.transport_security import TransportSecuritySettings

        self.token = token
        self.body_timeout = body_timeout
        self.manager = StreamableHTTPSessionManager(
            app=server._lowlevel_server,
            json_response=True,
            stateless=True,
            security_settings=TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
                allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
            ),
            max_request_body_size=MAX_HTTP_BODY,
        )

    def lifespan(self):
        return self.manager.run()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from starlette.responses import JSONResponse

        from zoonode.api import bearer_matches

        headers = dict(scope.get("headers", []))
        if not bearer_matches(headers.get(b"authorization", b""), self.token):
            response = JSONResponse(
                {"error": {"code": "unauthorized", "message": "/mcp needs the node's token"}},
                status_code=401,
            )
            await response(scope, receive, send)
            return
        body = b""
        with anyio.move_on_after(self.body_timeout) as deadline:
            while len(body) <= MAX_HTTP_BODY:  # the message, checked as a stdio line is
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if not message.get("more_body", False):
                    break
        if deadline.cancelled_caught:  # as the API's other bodies (api.body_timed_out)
            from zoonode.api import body_timed_out

            late = body_timed_out(self.body_timeout)
            await JSONResponse(late.as_json(), status_code=late.status)(scope, receive, send)
            return
        refused = _http_refusal(body)
        if refused is not None:
            await refused(scope, receive, send)
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.manager.handle_request(scope, replay, send)


def _http_refusal(body: bytes) -> Any:
    """The answer to a ``POST /mcp`` body that :func:`check_line` refuses (400 with its
    JSON-RPC error; 413 over MAX_HTTP_BODY; 202 for a notification it drops), or None to
    serve it: the same codes as over stdio, before the SDK parses anything."""
    from starlette.responses import JSONResponse, Response

    if len(body) > MAX_HTTP_BODY:
        too_large = inputs.InputError(413, "too_large", f"message over {MAX_HTTP_BODY} bytes")
        checked: Any = _rpc_error(None, types.PARSE_ERROR, too_large)
        status = 413
    else:
        checked, status = check_line(body), 400
    if isinstance(checked, SessionMessage):
        return None
    if checked is None:
        return Response(status_code=202)
    return JSONResponse(checked.model_dump(mode="json", by_alias=True, exclude_unset=True), status)


def endpoint_for(app: ASGIApp, token: str, body_timeout: float = 30.0) -> HttpEndpoint:
    """The node's ``/mcp`` endpoint, whose tools call ``app`` (the node's own API) in-process."""
    import httpx

    client = AsyncClient("http://zoonode.local", token, transport=httpx.ASGITransport(app=app))
    return HttpEndpoint(build_server(client), token, body_timeout)


def run_stdio(client: AsyncClient) -> None:
    """``zoonode mcp``: serve MCP on stdin/stdout until the host closes it."""
    anyio.run(serve_stdio, build_server(client))


async def serve_stdio(server: MCPServer) -> None:
    """Serve one MCP connection on this process's stdin and stdout."""
    lowlevel = server._lowlevel_server
    async with checked_stdio() as (read_stream, write_stream):
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())


def check_line(line: bytes) -> SessionMessage | types.JSONRPCError | None:
    """One stdio line -> the message to serve, the JSON-RPC error to answer instead, or None
    (a notification to drop: notifications get no answer).

    Parsed by ``inputs.parse_json`` like an API body: not JSON, truncated, not UTF-8 or nested
    deeper than inputs.MAX_DEPTH -> -32700 parse error (id null: it cannot be known); not a
    JSON-RPC message -> -32600 invalid request; a string that is not valid Unicode (a lone
    surrogate) -> -32602 invalid params, with the request's id."""
    try:
        value = inputs.parse_json(line, "message")
    except inputs.InputError as exc:
        return _rpc_error(None, types.PARSE_ERROR, exc)
    raw_id = value.get("id") if isinstance(value, dict) else None
    rid = raw_id if _usable_id(raw_id) else None
    where = inputs.invalid_unicode_at(value)
    if where is not None:
        if "method" in value and raw_id is None:
            log.warning("dropped a notification with text that is not valid Unicode")
            return None
        exc = inputs.InputError(422, "bad_text", f"{where} is not valid Unicode")
        return _rpc_error(rid, types.INVALID_PARAMS, exc)
    if raw_id is not None and rid is None:
        exc = inputs.InputError(400, "bad_request", "id must be a string or an integer below 2^53")
        return _rpc_error(None, types.INVALID_REQUEST, exc)
    try:
        message = types.jsonrpc_message_adapter.validate_python(value, by_name=False)
    except ValidationError as err:
        exc = inputs.InputError(400, "bad_request", f"not a JSON-RPC 2.0 message: {_first(err)}")
        return _rpc_error(rid, types.INVALID_REQUEST, exc)
    return SessionMessage(message)


def _usable_id(value: Any) -> bool:
    """An id an answer can carry: an int below 2^53 or a string that is valid Unicode (an id
    with a lone surrogate cannot be written back, and killed the writer)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) < MAX_ID
    return isinstance(value, str) and inputs.invalid_unicode_at(value) is None


def _first(err: ValidationError) -> str:
    first = err.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "message"
    return f"{where}: {first['msg']}"


def _rpc_error(rid: Any, code: int, exc: inputs.InputError) -> types.JSONRPCError:
    return types.JSONRPCError(
        jsonrpc="2.0",
        id=rid,
        error=types.ErrorData(
            code=code, message=f"{exc.code}: {exc.message}", data={"code": exc.code}
        ),
    )


@asynccontextmanager
async def checked_stdio(stdin: BinaryIO | None = None, stdout: BinaryIO | None = None):
    """The MCP SDK's stdio transport, with every line checked by :func:`check_line` first:
    a bad line is answered with a JSON-RPC error instead of being dropped in silence, and
    the connection goes on. At end of input the requests still running are answered before
    the read stream closes (at most EOF_DRAIN_S). While it serves, fd 1 points at stderr, so
    stray prints cannot corrupt the protocol stream. Yields (read stream, write stream) for
    ``Server.run``."""
    saved_stdout: int | None = None
    if stdin is None:
        stdin = os.fdopen(os.dup(0), "rb")
    if stdout is None:
        saved_stdout = os.dup(1)
        stdout = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)
    read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](0)
    answers = write_send.clone()  # the reader's own answers to lines it refused
    too_long = inputs.InputError(413, "too_large", f"message over {MAX_MESSAGE_BYTES} bytes")
    in_flight = _InFlight()

    async def reader() -> None:
        async with read_send, answers:
            while True:
                line = await anyio.to_thread.run_sync(_read_line, stdin, abandon_on_cancel=True)
                if line is None:
                    # End of input (a piped host): the SDK would answer the calls still
                    # running with -32000 "Connection closed"; they finish and are answered
                    # first, then the server stops.
                    with anyio.move_on_after(EOF_DRAIN_S):
                        await in_flight.drained()
                    return
                if line is _TOO_LONG:
                    checked = _rpc_error(None, types.PARSE_ERROR, too_long)
                elif line.strip():
                    checked = check_line(line)
                else:
                    continue
                if isinstance(checked, SessionMessage):
                    in_flight.received(checked.message)
                    await read_send.send(checked)
                elif checked is not None:
                    await answers.send(SessionMessage(checked))

    async def writer() -> None:
        async with write_recv:
            async for item in write_recv:
                await anyio.to_thread.run_sync(_write_message, stdout, item.message)
                in_flight.sent(item.message)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            tg.start_soon(writer)
            async with write_send:
                yield read_recv, write_send
            tg.cancel_scope.cancel()
    finally:
        if saved_stdout is not None:
            os.dup2(saved_stdout, 1)
            os.close(saved_stdout)


_TOO_LONG = b"(a line over MAX_MESSAGE_BYTES)"
# At end of stdin, how long the calls still running may take to be answered: a tool is one
# or two API calls, each bounded by the client's 60 s timeout.
EOF_DRAIN_S = 150.0


class _InFlight:
    """The host's requests the server has not answered yet (by id), for end of input."""

    def __init__(self) -> None:
        self.ids: set[Any] = set()
        self.changed = anyio.Event()

    def received(self, message: Any) -> None:
        if isinstance(message, types.JSONRPCRequest):
            self.ids.add(_id_key(message.id))
        elif isinstance(message, types.JSONRPCNotification) and (
            message.method == "notifications/cancelled"
        ):  # a cancelled request gets no answer: not waited for
            self.ids.discard(_id_key((message.params or {}).get("requestId")))
            self._wake()

    def sent(self, message: Any) -> None:
        if isinstance(message, types.JSONRPCResponse | types.JSONRPCError):
            self.ids.discard(_id_key(message.id))
            self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def drained(self) -> None:
        while self.ids:
            await self.changed.wait()


def _id_key(rid: Any) -> tuple[str, Any]:
    return (type(rid).__name__, rid)  # 1 and "1" are two ids


def _read_line(stream: BinaryIO) -> bytes | None:
    """The next line (None at end of input); a line over MAX_MESSAGE_BYTES is read to its end
    and returned as _TOO_LONG, without holding it in memory."""
    line = stream.readline(MAX_MESSAGE_BYTES + 1)
    if not line:
        return None
    if len(line) > MAX_MESSAGE_BYTES and not line.endswith(b"\n"):
        while True:
            rest = stream.readline(MAX_MESSAGE_BYTES)
            if not rest or rest.endswith(b"\n"):
                return _TOO_LONG
    return line


def _write_message(stream: BinaryIO, message: types.JSONRPCMessage) -> None:
    try:
        data = message.model_dump_json(by_alias=True, exclude_unset=True)
    except Exception as exc:  # an answer that cannot be JSON: say so rather than die
        log.warning("MCP answer not serialisable: %s", exc)
        rid = getattr(message, "id", None)
        data = types.JSONRPCError(
            jsonrpc="2.0",
            id=rid,
            error=types.ErrorData(code=types.INTERNAL_ERROR, message="answer not serialisable"),
        ).model_dump_json(by_alias=True, exclude_unset=True)
    stream.write(data.encode("utf-8") + b"\n")
    stream.flush()
