"""Python clients for a running node's local HTTP API (httpx): ``Client`` and ``AsyncClient``.

from zoonode.client import Client
c = Client.from_data_dir()            # reads api.url and api.token from the data dir
c.share("Check units before adding measured values", domain="physics.units")
c.query("how do I add two lengths?")["selected"]

Both classes build the same requests (``_Requests``) and differ only in how they send them.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx


class ClientError(RuntimeError):
    """The node answered an error (``code`` and ``status`` from its JSON body), or none was
    reached (status 0: ``no_node``, no node runs on the data dir; ``unreachable``, the URL did
    not answer). ``str()`` is ``"STATUS CODE: MESSAGE"``, or ``"CODE: MESSAGE"`` without a
    status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


def no_node_message(data_dir: Path) -> str:
    return f"no node running on {data_dir}; start one with `zoonode start --data-dir {data_dir}`"


def node_location(data_dir: str | Path | None = None) -> tuple[str, str | None]:
    """(API URL, token or None) of the node running on ``data_dir`` (default: the configured
    one), from its ``api.url`` and ``api.token``.

    Raises ClientError ``no_node`` when no process holds the data dir (``datadir.holder``):
    an ``api.url`` left by a node that was killed is ignored, never dialled."""
    from zoonode.api import TOKEN_FILE
    from zoonode.config import load_config
    from zoonode.datadir import holder
    from zoonode.node import API_URL_FILE

    base = Path(data_dir) if data_dir else load_config().data_path
    pid = holder(base)
    if pid is None:
        raise ClientError(0, "no_node", no_node_message(base))
    try:
        url = (base / API_URL_FILE).read_text().strip()
    except FileNotFoundError as exc:
        raise ClientError(
            0,
            "no_api",
            f"the node on {base} (process {pid or '?'}) has no HTTP API yet: it is starting, "
            'or runs with [api] listen = ""',
        ) from exc
    token_path = base / TOKEN_FILE
    return url, token_path.read_text().strip() if token_path.exists() else None


def _json(body: Any) -> dict[str, Any]:
    """Request kwargs for a JSON body, written as the node reads it: ASCII with escapes, so
    that text that is not valid Unicode (a lone surrogate, an undecodable command-line byte)
    reaches the node's one validation layer and comes back as its ``bad_text`` error, instead
    of failing here; NaN likewise comes back as ``non_finite``."""
    content = json.dumps(body, ensure_ascii=True, allow_nan=True, separators=(",", ":"))
    return {"content": content.encode("ascii"), "headers": {"content-type": "application/json"}}


def _headers(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


def _answer(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            err = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            err = {"code": "http_error", "message": response.text[:200]}
        raise ClientError(response.status_code, err["code"], err["message"])
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.json()
    return response.text


def _record_id(record_id: str) -> str:
    """An id as a path segment: 64 hex characters, else the API's ``bad_id`` (400) without a
    request. Put in the URL unchecked, ``""`` became ``//revoke`` (404 ``no such path``) and
    ``x/../../status`` a request to another endpoint."""
    if not (isinstance(record_id, str) and re.fullmatch(r"[0-9a-fA-F]{64}", record_id)):
        raise ClientError(400, "bad_id", "an id is 64 hex characters")
    return record_id


class _Requests:
    """(method, path, kwargs) for each API call: the one place the API's shape lives."""

    @staticmethod
    def status() -> tuple:
        return "GET", "/v1/status", {}

    @staticmethod
    def peers() -> tuple:
        return "GET", "/v1/peers", {}

    @staticmethod
    def share(text, domain, confidence, examples, source_model) -> tuple:
        body = {
            "text": text,
            "domain": domain,
            "confidence": confidence,
            "examples": examples or [],
            "source_model": source_model,
        }
        return "POST", "/v1/experiences", _json(body)

    @staticmethod
    def share_many(items: list[dict]) -> tuple:
        return "POST", "/v1/experiences/batch", _json({"experiences": items})

    @staticmethod
    def share_lines(lines: list[str]) -> tuple:
        """Lessons as JSON texts (one object each), sent exactly as written."""
        content = ('{"experiences":[' + ",".join(lines) + "]}").encode("utf-8")
        return (
            "POST",
            "/v1/experiences/batch",
            {"content": content, "headers": {"content-type": "application/json"}},
        )

    @staticmethod
    def import_records(wires: list[str]) -> tuple:
        return "POST", "/v1/records", _json({"wires": wires})

    @staticmethod
    def get(record_id: str) -> tuple:
        return "GET", f"/v1/experiences/{_record_id(record_id)}", {}

    @staticmethod
    def revoke(record_id: str) -> tuple:
        return "POST", f"/v1/experiences/{_record_id(record_id)}/revoke", {}

    @staticmethod
    def feedback(record_id: str, verdict: str, task: str | None) -> tuple:
        body: dict = {"verdict": verdict}
        if task is not None:
            body["task"] = task
        return "POST", f"/v1/experiences/{record_id}/feedback", _json(body)

    @staticmethod
    def query(text, k, domain, min_confidence, federated) -> tuple:
        return _Requests._ask("/v1/query", "text", text, k, domain, min_confidence, federated)

    @staticmethod
    def context(task, k, domain, min_confidence, federated) -> tuple:
        return _Requests._ask("/v1/context", "task", task, k, domain, min_confidence, federated)

    @staticmethod
    def _ask(path, field, text, k, domain, min_confidence, federated) -> tuple:
        """/v1/query and /v1/context take the same options; only the text's name differs."""
        body = {field: text, "k": k, "domain": domain, "min_confidence": min_confidence}
        return "POST", path, _json(body | {"federated": federated})

    @staticmethod
    def export(domain: str | None) -> tuple:
        return "GET", "/v1/export", {"params": {"domain": domain} if domain else {}}

    @staticmethod
    def metrics() -> tuple:
        return "GET", "/metrics", {}


class Client:
    """Synchronous client. Every method returns the API's JSON (a dict) or raises ClientError."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=_headers(token), timeout=timeout)

    @classmethod
    def from_data_dir(cls, data_dir: str | Path | None = None) -> Client:
        return cls(*node_location(data_dir))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _call(self, request: tuple) -> Any:
        method, path, kwargs = request
        try:
            return _answer(self.http.request(method, path, **kwargs))
        except httpx.HTTPError as exc:
            raise ClientError(0, "unreachable", f"{self.url}: {exc}") from exc

    def status(self) -> dict:
        return self._call(_Requests.status())

    def peers(self) -> list[dict]:
        return self._call(_Requests.peers())["peers"]

    def share(
        self,
        text: str,
        domain: str,
        confidence: float = 0.5,
        examples: list[dict] | None = None,
        source_model: str = "",
    ) -> dict:
        return self._call(_Requests.share(text, domain, confidence, examples, source_model))

    def share_many(self, items: list[dict]) -> list[dict]:
        """Share up to 64 lessons in one request; one result per item (id or error)."""
        return self._call(_Requests.share_many(items))["results"]

    def share_lines(self, lines: list[str]) -> list[dict]:
        """Share lessons given as JSON texts (one object per text), as written: what
        ``zoonode import`` sends. One result per text (id or error)."""
        return self._call(_Requests.share_lines(lines))["results"]

    def import_records(self, wires: list[str]) -> list[dict]:
        """Ingest signed records (hex wire bytes, as ``export`` writes them)."""
        return self._call(_Requests.import_records(wires))["results"]

    def get(self, record_id: str) -> dict:
        return self._call(_Requests.get(record_id))

    def revoke(self, record_id: str) -> dict:
        return self._call(_Requests.revoke(record_id))

    def feedback(self, record_id: str, verdict: str, task: str | None = None) -> dict:
        """Report whether an experience helped: ``verdict`` "helpful", "harmful" or
        "withdrawn"; ``task`` (optional) travels as its SHA-256 only. Returns {id, target,
        verdict, outcome, previous}. Errors: not_found, own_lesson, not_a_lesson,
        rate_limited, wrong_type."""
        return self._call(_Requests.feedback(record_id, verdict, task))

    def query(
        self,
        text: str,
        k: int | None = None,
        domain: str | None = None,
        min_confidence: float | None = None,
        federated: bool = False,
    ) -> dict:
        return self._call(_Requests.query(text, k, domain, min_confidence, federated))

    def context(
        self,
        task: str,
        k: int | None = None,
        domain: str | None = None,
        min_confidence: float | None = None,
        federated: bool = False,
    ) -> dict:
        """The DSO context-injection prompt for ``task`` (``prompt``) and what it holds; the
        options are :meth:`query`'s."""
        return self._call(_Requests.context(task, k, domain, min_confidence, federated))

    def export(self, domain: str | None = None) -> Iterator[dict]:
        """Every active lesson the node holds, as JSON objects with their signed ``wire``."""
        method, path, kwargs = _Requests.export(domain)
        try:
            with self.http.stream(method, path, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    _answer(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.HTTPError as exc:
            raise ClientError(0, "unreachable", f"{self.url}: {exc}") from exc

    def metrics(self) -> str:
        return self._call(_Requests.metrics())


class AsyncClient:
    """The same calls, awaitable (any event loop httpx supports: asyncio or trio)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.AsyncClient(
            base_url=self.url, headers=_headers(token), timeout=timeout, transport=transport
        )
        self._follow: Path | None = None  # the data dir whose node each call looks up
        self._token = token

    @classmethod
    def from_data_dir(
        cls, data_dir: str | Path | None = None, *, follow: bool = False, token: str | None = None
    ) -> AsyncClient:
        """The client of the node running on ``data_dir`` (default: the configured one).

        ``follow``: look the node up at every call instead of once, as ``zoonode mcp`` does
        (an agent host may start it before the node, and a node may come back on another
        port); until a node runs there, every call raises ClientError ``no_node``. ``token``
        replaces the data dir's ``api.token``."""
        from zoonode.config import load_config

        if not follow:
            url, found = node_location(data_dir)
            return cls(url, token or found)
        client = cls("http://127.0.0.1:0", token)
        client._follow = Path(data_dir) if data_dir else load_config().data_path
        return client

    async def _find_node(self) -> None:
        if self._follow is None:
            return
        url, token = node_location(self._follow)
        token = self._token or token
        if url.rstrip("/") != self.url or self.http.headers.get("authorization") != (
            _headers(token).get("authorization")
        ):
            await self.http.aclose()
            self.url = url.rstrip("/")
            self.http = httpx.AsyncClient(
                base_url=self.url, headers=_headers(token), timeout=self.http.timeout
            )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _call(self, request: tuple) -> Any:
        await self._find_node()
        method, path, kwargs = request
        try:
            return _answer(await self.http.request(method, path, **kwargs))
        except httpx.HTTPError as exc:
            raise ClientError(0, "unreachable", f"{self.url}: {exc}") from exc

    async def status(self) -> dict:
        return await self._call(_Requests.status())

    async def peers(self) -> list[dict]:
        return (await self._call(_Requests.peers()))["peers"]

    async def share(
        self,
        text: str,
        domain: str,
        confidence: float = 0.5,
        examples: list[dict] | None = None,
        source_model: str = "",
    ) -> dict:
        return await self._call(_Requests.share(text, domain, confidence, examples, source_model))

    async def share_many(self, items: list[dict]) -> list[dict]:
        return (await self._call(_Requests.share_many(items)))["results"]

    async def share_lines(self, lines: list[str]) -> list[dict]:
        return (await self._call(_Requests.share_lines(lines)))["results"]

    async def import_records(self, wires: list[str]) -> list[dict]:
        return (await self._call(_Requests.import_records(wires)))["results"]

    async def get(self, record_id: str) -> dict:
        return await self._call(_Requests.get(record_id))

    async def revoke(self, record_id: str) -> dict:
        return await self._call(_Requests.revoke(record_id))

    async def feedback(self, record_id: str, verdict: str, task: str | None = None) -> dict:
        """See :meth:`Client.feedback`."""
        return await self._call(_Requests.feedback(record_id, verdict, task))

    async def query(
        self,
        text: str,
        k: int | None = None,
        domain: str | None = None,
        min_confidence: float | None = None,
        federated: bool = False,
    ) -> dict:
        return await self._call(_Requests.query(text, k, domain, min_confidence, federated))

    async def context(
        self,
        task: str,
        k: int | None = None,
        domain: str | None = None,
        min_confidence: float | None = None,
        federated: bool = False,
    ) -> dict:
        return await self._call(_Requests.context(task, k, domain, min_confidence, federated))

    async def export(self, domain: str | None = None) -> AsyncIterator[dict]:
        await self._find_node()
        method, path, kwargs = _Requests.export(domain)
        try:
            async with self.http.stream(method, path, **kwargs) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _answer(response)
                async for line in response.aiter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.HTTPError as exc:
            raise ClientError(0, "unreachable", f"{self.url}: {exc}") from exc

    async def metrics(self) -> str:
        return await self._call(_Requests.metrics())
