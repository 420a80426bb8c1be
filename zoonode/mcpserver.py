"""The MCP server: zoonode's API as tools and a prompt for agent hosts (package ``mcp``).

One server definition, two transports:
- stdio, ``zoonode mcp``: the agent host spawns it; it talks to the running node's HTTP API;
- streamable HTTP at ``/mcp`` on the node itself (``api.mcp`` in config), bearer token required.
Either way every tool goes through ``AsyncClient``, so MCP sees exactly the API's answers and
errors (an API error becomes an MCP tool error carrying the API's code).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from zoonode.client import AsyncClient, ClientError

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

INSTRUCTIONS = (
    "zoonode shares short lessons ('experiences') learned by LLM agents across organisations. "
    "Before a task, call search_experiences (or use the inject_experiences prompt) to get the "
    "lessons peers learned on similar tasks; after solving something the hard way, share the "
    "lesson in one or two sentences with share_experience."
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
        "examples",
    )
    return {k: item[k] for k in keep if k in item}


def build_server(client: AsyncClient) -> MCPServer:
    from zoonode import __version__

    server = MCPServer("zoonode", instructions=INSTRUCTIONS, version=__version__)

    async def call(coro: Any) -> Any:
        try:
            return await coro
        except ClientError as exc:
            raise ToolError(f"{exc.code}: {exc.message}") from exc

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
        return {
            "experiences": [_brief(s) for s in result["selected"]],
            "considered": result["considered"],
            "down_weighted": result["down_weighted"],
        }

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
        examples: optional [{"input": ..., "output": ...}]. Sharing the same lesson twice
        returns the first id.
        """
        return await call(client.share(text, domain, confidence, examples, source_model))

    @server.tool()
    async def get_experience(id: str) -> dict:
        """Fetch one experience by its 64-hex-character id, with its status."""
        return await call(client.get(id))

    @server.prompt()
    async def inject_experiences(task: str, k: int = 5) -> str:
        """The task, preceded by a numbered "# Learned Experiences" list selected for it."""
        return (await call(client.context(task, int(k))))["prompt"]

    return server


class HttpEndpoint:
    """ASGI app for ``/mcp`` on the node: bearer token first, then MCP's streamable HTTP.

    Stateless JSON mode: every request stands alone, so nothing is kept per client and a node
    restart costs clients nothing. ``lifespan()`` must be entered while it serves."""

    def __init__(self, server: MCPServer, token: str) -> None:
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
        from mcp.server.transport_security import TransportSecuritySettings

        self.token = token
        self.manager = StreamableHTTPSessionManager(
            app=server._lowlevel_server,
            json_response=True,
            stateless=True,
            security_settings=TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
                allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
            ),
            max_request_body_size=64 * 1024,
        )

    def lifespan(self):
        return self.manager.run()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        import secrets

        from starlette.responses import JSONResponse

        headers = dict(scope.get("headers", []))
        given = headers.get(b"authorization", b"").decode("latin-1")
        if not secrets.compare_digest(given, f"Bearer {self.token}"):
            response = JSONResponse(
                {"error": {"code": "unauthorized", "message": "/mcp needs the node's token"}},
                status_code=401,
            )
            await response(scope, receive, send)
            return
        await self.manager.handle_request(scope, receive, send)


def endpoint_for(app: ASGIApp, token: str) -> HttpEndpoint:
    """The node's ``/mcp`` endpoint, whose tools call ``app`` (the node's own API) in-process."""
    import httpx

    client = AsyncClient("http://zoonode.local", token, transport=httpx.ASGITransport(app=app))
    return HttpEndpoint(build_server(client), token)


def run_stdio(client: AsyncClient) -> None:
    """``zoonode mcp``: serve MCP on stdin/stdout until the host closes it."""
    build_server(client).run("stdio")
