"""A real `zoonode start` process with its HTTP API on a free port, for API/CLI/MCP tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conftest import ZOONODE

API_RE = re.compile(r"HTTP API (\S+)")


@dataclass
class RunningNode:
    url: str
    token: str
    data: Path
    proc: subprocess.Popen

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    def cli(self, *args: str, check: bool = True, timeout: float = 120):
        """Run a `zoonode` verb against this node (through its data dir)."""
        out = subprocess.run(
            [ZOONODE, *args, "--data-dir", str(self.data)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert out.returncode == 0, out.stderr
        return out


@contextmanager
def running_node(data: Path, env: dict[str, str] | None = None):
    """``env``: variables set for the node on top of this process's (e.g. ZOONODE_...)."""
    proc = subprocess.Popen(
        [ZOONODE, "start", "--data-dir", str(data), "--api", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        url = None
        for line in proc.stdout:
            match = API_RE.search(line)
            if match:
                url = match.group(1)
                break
        assert url, f"node exited: {proc.wait()} {proc.stderr.read()}"
        yield RunningNode(url, (data / "api.token").read_text().strip(), data, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, proc.stderr.read()
