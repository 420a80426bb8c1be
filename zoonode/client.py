"""Python client for a running node's local HTTP API (httpx, synchronous).

from zoonode.client import Client
c = Client.from_data_dir()            # reads api.url and api.token from the data dir
c.share("Check units before adding measured values", domain="physics.units")
c.query("how do I add two lengths?")["selected"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx


class ClientError(RuntimeError):
    """The node answered an error (``code`` and ``status`` from its JSON body)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code = status, code


class Client:
    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    @classmethod
    def from_data_dir(cls, data_dir: str | Path | None = None) -> Client:
        from zoonode.api import TOKEN_FILE
        from zoonode.config import load_config
        from zoonode.node import API_URL_FILE

        base = Path(data_dir) if data_dir else load_config().data_path
        try:
            url = (base / API_URL_FILE).read_text().strip()
        except FileNotFoundError as exc:
            raise ClientError(
                0,
                "no_node",
                f"no running node found in {base} (no "
                f"{API_URL_FILE}); start one with `zoonode start`",
            ) from exc
        token_path = base / TOKEN_FILE
        return cls(url, token_path.read_text().strip() if token_path.exists() else None)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(0, "unreachable", f"{self.http.base_url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                err = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                err = {"code": "http_error", "message": response.text[:200]}
            raise ClientError(response.status_code, err["code"], err["message"])
        return response.json() if path != "/metrics" else response.text

    def status(self) -> dict:
        return self._call("GET", "/v1/status")

    def peers(self) -> list[dict]:
        return self._call("GET", "/v1/peers")["peers"]

    def share(
        self,
        text: str,
        domain: str,
        confidence: float = 0.5,
        examples: list[dict] | None = None,
        source_model: str = "",
    ) -> dict:
        return self._call(
            "POST",
            "/v1/experiences",
            json={
                "text": text,
                "domain": domain,
                "confidence": confidence,
                "examples": examples or [],
                "source_model": source_model,
            },
        )

    def get(self, record_id: str) -> dict:
        return self._call("GET", f"/v1/experiences/{record_id}")

    def revoke(self, record_id: str) -> dict:
        return self._call("POST", f"/v1/experiences/{record_id}/revoke")

    def query(
        self,
        text: str,
        k: int | None = None,
        domain: str | None = None,
        min_confidence: float | None = None,
        federated: bool = False,
    ) -> dict:
        return self._call(
            "POST",
            "/v1/query",
            json={
                "text": text,
                "k": k,
                "domain": domain,
                "min_confidence": min_confidence,
                "federated": federated,
            },
        )

    def metrics(self) -> str:
        return self._call("GET", "/metrics")
