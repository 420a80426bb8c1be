"""`zoonode start` as a real process: a real libp2p host dials it; restart keeps identity."""

from __future__ import annotations

import re
import signal
import subprocess

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zoonode.net.host import make_host

from conftest import ZOONODE

ADDR_RE = re.compile(r"listening on (\S+)")


def start_node(data_dir):
    proc = subprocess.Popen(
        [ZOONODE, "start", "--data-dir", str(data_dir), "--listen", "/ip4/127.0.0.1/tcp/0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        match = ADDR_RE.search(line)
        if match:
            return proc, match.group(1)
    raise AssertionError(f"node exited: {proc.wait()} {proc.stderr.read()}")


async def dial(addr: str) -> str:
    import multiaddr
    from libp2p.peer.peerinfo import info_from_p2p_addr

    host = make_host(Ed25519PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"])
    async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        with trio.fail_after(10):
            await host.connect(info)
        connected = host.get_network().connections.get(info.peer_id)
        await host.close()
        assert connected, "no connection after connect()"
        return info.peer_id.to_string()


def stop(proc) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def test_start_dial_stop_restart(tmp_path):
    proc, addr = start_node(tmp_path)
    try:
        peer_id = trio.run(dial, addr)
        assert addr.endswith(f"/p2p/{peer_id}")
    finally:
        assert stop(proc) == 0
    assert (tmp_path / "identity.pem").exists()
    assert (tmp_path / "experiences.sqlite").exists()
    proc, addr2 = start_node(tmp_path)
    try:
        assert addr2.split("/p2p/")[1] == peer_id  # same identity after restart
    finally:
        assert stop(proc) == 0


def test_operator_errors_are_one_clear_line(tmp_path):
    from zoonode.identity import generate_identity

    generate_identity(tmp_path / "identity.pem")
    (tmp_path / "identity.pem").chmod(0o644)
    out = subprocess.run(
        [ZOONODE, "start", "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last == f"error: {tmp_path / 'identity.pem'} is readable by others; chmod 600 it"
    assert "Traceback" not in out.stderr
