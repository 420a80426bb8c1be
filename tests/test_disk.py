"""A full disk (issue #19, case 7): writes answer 507 storage_full and change nothing, reads go
on, writes work again once there is room, shutdown is clean and leaves no temporary file, and
nothing acknowledged is lost.

Three real sources of the error: SQLite's own SQLITE_FULL from ``PRAGMA max_page_count`` (no
root needed), the file-size limit RLIMIT_FSIZE (EFBIG on every write past it, no root), and a
real 8 MiB tmpfs filled up (root only: skipped, saying so, where mount is not permitted).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
import trio

from zoonode.knowledge import KnowledgeBase
from zoonode.store import StorageFull

from conftest import ZOONODE
from helpers import lessons
from netutil import node_config, run_trio, wait_until
from nodeproc import API_RE

TEXTS = [
    "Check the units of measured values before adding them",
    "Before dividing both sides of an inequality, check the sign of the divisor",
    "When a unit test is flaky, look for state shared between tests before adding retries",
    "Pin dependency versions in CI so a new release cannot break an unchanged commit",
    "Read the first frame of a traceback before editing any code",
    "Validate that geometric solutions lie within the bounded segments",
    "Use parameterised SQL queries instead of string formatting",
    "Measure before optimising: profile the slow path first",
]


def fill_store(store) -> None:
    """Let the database grow by no page from now on: the next insert meets SQLITE_FULL."""
    (pages,) = store.db.execute("PRAGMA page_count").fetchone()
    store.db.execute(f"PRAGMA max_page_count = {pages}")


def free_store(store) -> None:
    store.db.execute("PRAGMA max_page_count = 1073741823")


def test_a_full_store_refuses_a_batch_and_keeps_everything_as_it_was(tmp_path, encoder, key):
    items = lessons(encoder, key, TEXTS)
    kb = KnowledgeBase(tmp_path, encoder.space, encoder.space_info.hidden)
    kb.ingest(items[:2])
    counts, indexed = kb.store.counts(), len(kb.replica)
    fill_store(kb.store)
    with pytest.raises(StorageFull, match="full"):
        kb.ingest(items[2:])
    assert not kb.store.db.in_transaction  # SQLite rolled it back; no second rollback failed
    assert kb.store.counts() == counts and len(kb.replica) == indexed
    assert kb.search(items[0].vector, k=1)[0].row.id == items[0].record.id  # reads go on
    free_store(kb.store)  # room again: the same batch goes in
    assert {r.outcome.name for r in kb.ingest(items[2:])} == {"ACCEPTED"}
    assert kb.store.counts()["active"] == len(TEXTS) and len(kb.replica) == len(TEXTS)
    kb.close()


def test_the_api_answers_507_stays_up_and_serves_reads(tmp_path, encoder):
    """In-process node with its real HTTP server on 127.0.0.1: publish, batch and a peer's
    gossiped record meet a full store; queries go on; room returns, writes work."""
    from zoonode.experiences import create_experience
    from zoonode.node import Node

    cfg = node_config(tmp_path / "node", api={"listen": "127.0.0.1:0"})
    lesson = {"text": TEXTS[0], "domain": "physics.units"}

    async def main():
        async with trio.open_nursery() as nursery:
            node = Node(cfg, encoder=encoder)
            await nursery.start(node.run)
            auth = {"authorization": f"Bearer {(cfg.data_path / 'api.token').read_text().strip()}"}
            async with httpx.AsyncClient(base_url=node.api_url, headers=auth, timeout=60) as http:
                first = await http.post("/v1/experiences", json=lesson)
                assert first.status_code == 201
                await node.in_kb(fill_store, node.kb.store)
                before = (await http.get("/v1/status")).json()
                for path, body in (
                    ("/v1/experiences", {"text": TEXTS[1], "domain": "math.algebra"}),
                    ("/v1/experiences/batch", {"experiences": [{"text": TEXTS[2], "domain": "a"}]}),
                ):
                    r = await http.post(path, json=body)
                    assert r.status_code == 507, r.text
                    assert r.json()["error"]["code"] == "storage_full"
                    assert "full" in r.json()["error"]["message"]
                # A peer's record meets the full store in the ingest loop: dropped, node up.
                other = create_experience(encoder, _other_key(), TEXTS[3], "software.ci")
                await node.ingest.enqueue(other, "a-peer")
                await wait_until(lambda: node.counters["ingest:storage_full"] == 1)
                after = (await http.get("/v1/status")).json()
                assert after["counts"] == before["counts"] and after["replica"] == before["replica"]
                found = await http.post("/v1/query", json={"text": "add measured values"})
                assert found.status_code == 200 and found.json()["selected"]
                await node.in_kb(free_store, node.kb.store)
                again = await http.post("/v1/experiences", json={"text": TEXTS[1], "domain": "a"})
                assert again.status_code == 201
            nursery.cancel_scope.cancel()

    run_trio(main)


def _other_key():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


SNAPSHOT_UNDER_FSIZE = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    import numpy as np
    from zoonode.replica import Replica, SnapshotError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG
    out = Path(sys.argv[1])
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, 384)).astype(np.float32)
    results = {}
    for backend in ("usearch-i8", "hnswlib", "faiss-ivf"):
        replica = Replica(384, backend=backend, lists=8)
        replica.add(np.arange(1, 2001), vectors)
        folder = out / backend
        folder.mkdir()
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
        try:
            replica.save(folder)
            results[backend] = "saved"
        except SnapshotError as exc:
            results[backend] = "SnapshotError: " + str(exc)
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        results[backend + " files"] = sorted(p.name for p in folder.iterdir())
    print(__import__("json").dumps(results))
    """
)


def test_a_snapshot_the_disk_refuses_leaves_no_temporary_file(tmp_path):
    """Every backend's snapshot write meets EFBIG (RLIMIT_FSIZE, a real write error without
    root): SnapshotError, and no replica.*.tmp left behind."""
    out = subprocess.run(
        [sys.executable, "-c", SNAPSHOT_UNDER_FSIZE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    for backend in ("usearch-i8", "hnswlib", "faiss-ivf"):
        assert results[backend].startswith("SnapshotError: replica snapshot not written"), results
        assert results[backend + " files"] == [], results


# -- the real thing: a small filesystem filled up ----------------------------------------------
@pytest.fixture()
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path, keep: int) -> Path:
    """A filler file taking all free space of the filesystem but ``keep`` bytes."""
    filler = path / "filler"
    free = shutil.disk_usage(path).free
    with filler.open("ab") as f:
        f.write(b"\0" * max(0, free - keep))
    return filler


def start(data: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str, dict]:
    proc = subprocess.Popen(
        [ZOONODE, "start", "--data-dir", str(data), "--api", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=None if env is None else os.environ | env,
    )
    for line in proc.stdout:
        match = API_RE.search(line)
        if match:
            token = (data / "api.token").read_text().strip()
            return proc, match.group(1), {"authorization": f"Bearer {token}"}
    raise AssertionError(f"node exited: {proc.wait()} {proc.stderr.read()}")


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    stderr = proc.stderr.read()
    assert code == 0, stderr
    assert "Traceback" not in stderr, stderr
    return stderr


def test_a_full_filesystem_for_real(small_disk):
    data = small_disk / "node"
    proc, url, auth = start(data)
    acked: dict[str, str] = {}
    try:
        filler = fill(small_disk, keep=96 * 1024)
        refusal = None
        for i in range(300):  # bounded: 96 KiB holds a few dozen records at most
            text = f"Lesson {i}: {TEXTS[i % len(TEXTS)]}"
            r = httpx.post(
                f"{url}/v1/experiences", json={"text": text, "domain": "a"}, headers=auth
            )
            if r.status_code == 507:
                refusal = r.json()["error"]
                break
            assert r.status_code == 201, r.text
            acked[r.json()["id"]] = text
        assert refusal is not None and refusal["code"] == "storage_full", "never filled up"
        assert "full" in refusal["message"]
        status = httpx.get(f"{url}/v1/status")
        assert status.status_code == 200 and status.json()["counts"]["active"] == len(acked)
        filler.unlink()  # room returns: writes work again, same process
        r = httpx.post(
            f"{url}/v1/experiences", json={"text": TEXTS[0], "domain": "b"}, headers=auth
        )
        assert r.status_code == 201, r.text
        acked[r.json()["id"]] = TEXTS[0]
        fill(small_disk, keep=0)  # full again: shutdown's replica snapshot cannot be written
    finally:
        stderr = stop(proc)
    assert "replica snapshot not written" in stderr  # said, not raised
    assert sorted(p.name for p in data.iterdir() if p.name.endswith(".tmp")) == []
    (small_disk / "filler").unlink()
    proc, url, _ = start(data)  # nothing acknowledged was lost, and all of it is searchable
    try:
        for record_id, text in acked.items():
            got = httpx.get(f"{url}/v1/experiences/{record_id}").json()
            assert got["status"] == "active" and got["text"] == text
        found = httpx.post(f"{url}/v1/query", json={"text": next(iter(acked.values())), "k": 1})
        assert found.json()["selected"][0]["id"] == next(iter(acked))
    finally:
        stop(proc)


def storage_full(url: str) -> float:
    """Records whose check met a full disk (``check:storage_full`` in /metrics)."""
    metrics = httpx.get(f"{url}/metrics", timeout=30).text
    found = re.search(
        r'^zoonode_events_total\{kind="check",reason="storage_full"\} (\S+)$', metrics, re.M
    )
    return float(found.group(1)) if found else 0.0


def test_a_full_disk_while_peers_records_wait_for_the_check(small_disk, encoder):
    """The background embedding check meets a full filesystem (it used to stop the node:
    StorageFull escaped the checker's task). The checked batch stays pending, queries go on
    (pending picks left out, never served unchecked), and once there is room every record is
    checked: the honest ones end active, the hijacker is banned."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from test_two_stage import hijack

    from zoonode.experiences import create_experiences

    honest = create_experiences(
        encoder, Ed25519PrivateKey.generate(), [{"text": t, "domain": "a"} for t in TEXTS]
    )
    liar = hijack(encoder, Ed25519PrivateKey.generate(), "Buy cheap pills today", TEXTS[0])
    data = small_disk / "node"
    proc, url, auth = start(
        data, {"ZOONODE_INGEST__CHECK_RATE": "2", "ZOONODE_INGEST__CHECK_BATCH": "1"}
    )
    try:
        wires = [r.wire.hex() for r in [liar, *honest]]
        r = httpx.post(f"{url}/v1/records", json={"wires": wires}, headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        filler = fill(small_disk, keep=0)
        # Until the check has met the full disk (counted; it retries after FULL_RETRY_S).
        wait_for_full = time.monotonic() + 60
        while storage_full(url) == 0:
            assert time.monotonic() < wait_for_full, "the check never met the full disk"
            time.sleep(0.2)
        status = httpx.get(f"{url}/v1/status", timeout=30).json()
        assert status["backlog"]["pending"] > 0
        found = httpx.post(f"{url}/v1/query", json={"text": TEXTS[0]}, timeout=60)
        assert found.status_code == 200, found.text
        assert liar.id.hex() not in {s["id"] for s in found.json()["selected"]}
        filler.unlink()
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/v1/status", timeout=30).json()["backlog"]["pending"]:
            assert time.monotonic() < deadline, "the backlog did not drain after room returned"
            time.sleep(0.2)
        status = httpx.get(f"{url}/v1/status", timeout=30).json()
        assert status["counts"]["active"] == len(TEXTS) and status["backlog"]["rejected"] == 1
        assert httpx.get(f"{url}/v1/experiences/{liar.id.hex()}", timeout=30).status_code == 404
    finally:
        stderr = stop(proc)
    assert "not recorded" in stderr and "full" in stderr  # the full disk was met, and said
