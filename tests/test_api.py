"""The HTTP API and the CLI against a real `zoonode start` process (real HTTP via httpx)."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_two_stage import hijack

from zoonode.experiences import create_experience

from conftest import ZOONODE
from nodeproc import running_node


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    data = tmp_path_factory.mktemp("apinode")
    with running_node(data) as running:
        assert (data / "api.token").stat().st_mode & 0o777 == 0o600
        yield running.url, running.token, data


def test_writes_need_the_token(node):
    url, _, _ = node
    lesson = {"text": "Check units before adding measured values", "domain": "physics.units"}
    refused = httpx.post(f"{url}/v1/experiences", json=lesson)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"
    wrong = httpx.post(
        f"{url}/v1/experiences", json=lesson, headers={"authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"not json", 400, "bad_json"),
        (b"[1, 2]", 400, "bad_json"),
        (json.dumps({"domain": "a.b"}).encode(), 422, "missing_field"),
        (json.dumps({"text": "x", "domain": "Not A Domain"}).encode(), 422, "bad_domain"),
        (json.dumps({"text": "x", "domain": "a.b", "confidence": 7}).encode(), 422, "out_of_range"),
        (b"{" + b" " * 70_000 + b"}", 413, "too_large"),
    ],
)
def test_bad_requests_get_json_errors(node, body, status, code):
    url, token, _ = node
    r = httpx.post(
        f"{url}/v1/experiences",
        content=body,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_share_query_get_revoke_and_metrics(node):
    url, token, _ = node
    auth = {"authorization": f"Bearer {token}"}
    before = httpx.get(f"{url}/metrics").text
    lesson = {
        "text": "Use parameterised SQL queries instead of string formatting to avoid injection",
        "domain": "software.security",
        "confidence": 0.9,
    }
    created = httpx.post(f"{url}/v1/experiences", json=lesson, headers=auth, timeout=30)
    assert created.status_code == 201
    record_id = created.json()["id"]
    again = httpx.post(f"{url}/v1/experiences", json=lesson, headers=auth, timeout=30)
    assert again.status_code == 200  # sharing the same lesson again: the existing id
    assert again.json() == {"id": record_id, "outcome": "duplicate"}
    reworded = {**lesson, "text": lesson["text"].replace("Use", "Always use")}
    near = httpx.post(f"{url}/v1/experiences", json=reworded, headers=auth, timeout=30)
    assert near.status_code == 201 and near.json()["id"] != record_id

    asked = httpx.post(f"{url}/v1/query", json={"text": "how do I avoid SQL injection"}, timeout=30)
    result = asked.json()
    assert result["selected"], result
    # Server-Timing: each stage of the query, in ms, inside the handler's total
    timing = dict(
        (part.split(";dur=")[0].strip(), float(part.split(";dur=")[1]))
        for part in asked.headers["server-timing"].split(",")
    )
    assert set(timing) == {"encode", "search", "select", "records", "kb", "app"}, timing
    stages = timing["encode"] + timing["search"] + timing["select"] + timing["records"]
    assert timing["encode"] > 0 and stages <= timing["kb"] <= timing["app"], timing
    top = result["selected"][0]
    assert top["text"] in (lesson["text"], reworded["text"]) and top["relevance"] >= 0.4
    assert {"agreement", "distance_to_centre", "group_size"} <= set(top)
    assert top["group_size"] == 2  # the two wordings form one near-duplicate cluster
    # ... and the copy (cos >= selection.answer_duplicate) answers only because nothing else
    # clears the floor: k answers whenever k candidates do; it comes last.
    assert [s["text"] for s in result["selected"]] == [top["text"]] + [
        t for t in (lesson["text"], reworded["text"]) if t != top["text"]
    ]
    assert result["down_weighted"].get("near_duplicate_in_answer", 0) == 0
    # The floors it used: one established author (ours), both from its best lesson (> 0.5)
    assert result["floor"] == result["established_floor"] == 0.4, result
    context = httpx.post(
        f"{url}/v1/context", json={"task": "how do I avoid SQL injection"}, timeout=30
    ).json()
    assert context["floor"] == context["established_floor"] == 0.4, context

    got = httpx.get(f"{url}/v1/experiences/{record_id}").json()
    assert got["status"] == "active" and got["domain"] == "software.security"
    assert httpx.get(f"{url}/v1/experiences/{'0' * 64}").status_code == 404
    assert httpx.get(f"{url}/v1/experiences/xyz").status_code == 400

    revoked = httpx.post(f"{url}/v1/experiences/{record_id}/revoke", headers=auth)
    assert revoked.status_code == 200
    assert httpx.get(f"{url}/v1/experiences/{record_id}").json()["status"] == "revoked"
    after = httpx.get(f"{url}/metrics").text
    assert metric(after, 'zoonode_events_total{kind="publish",reason="accepted"}') == 2
    assert metric(after, 'zoonode_events_total{kind="publish",reason="duplicate"}') == 1
    assert metric(before, "zoonode_replica_size") == 0
    assert metric(after, "zoonode_replica_size") == 2
    queries = 'zoonode_request_seconds_count{endpoint="query"}'
    assert metric(after, queries) == metric(before, queries, default=0) + 1


def metric(text: str, name: str, default: float | None = None) -> float:
    """The value of one sample in Prometheus text format."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    assert default is not None, f"{name} not in metrics"
    return default


def test_cli_against_the_node(node):
    _, _, data = node

    def cli(*args, as_json=True):
        out = subprocess.run(
            [ZOONODE, *args, "--data-dir", str(data), *(["--json"] if as_json else [])],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout) if as_json else out.stdout

    shared = cli(
        "publish",
        "Before dividing an inequality, check the sign of the divisor",
        "--domain",
        "math.algebra",
        "--confidence",
        "0.8",
    )
    assert len(shared["id"]) == 64
    found = cli("query", "dividing both sides of an inequality")
    assert found["selected"][0]["id"] == shared["id"]
    assert cli("status")["counts"]["active"] >= 1
    assert cli("peers") == []
    # For people: a few lines per lesson, rounded, with why it was picked; then revoke.
    view = cli("query", "dividing both sides of an inequality", as_json=False)
    assert view.startswith(" 1. Before dividing an inequality, check the sign of the divisor")
    assert "picked for: relevance 0." in view
    assert "relevance: cosine similarity" in view and "1.0000001" not in view
    status = cli("status", as_json=False)
    assert "no peers: this node is alone" in status and "/p2p/" in status
    assert cli("peers", as_json=False).strip() == "no peers connected"
    # An id that is not one is bad_id, as over HTTP; never a path of its own ("" was a 404
    # "no such path: /v1/experiences//revoke", x/../../status a POST to /v1/status/revoke).
    for bad in ("", shared["id"][:12], "x/../../status", shared["id"][:-2] + "/."):
        out = subprocess.run(
            [ZOONODE, "revoke", bad, "--data-dir", str(data)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 1 and out.stderr.startswith("error: bad_id:"), out.stderr
    # The id the human view prints is the one revoke takes (it printed 12 of 64 characters).
    (shown,) = [line.split()[1] for line in view.splitlines() if line.startswith("    id ")]
    assert shown == shared["id"]
    assert cli("revoke", shown, as_json=False).strip() == f"revoked {shared['id']}"
    again = cli("revoke", shared["id"], as_json=False)
    assert again.strip() == f"already_revoked {shared['id']}"
    assert "no lesson selected" in cli("query", "dividing an inequality", as_json=False)
    missing = subprocess.run(
        [ZOONODE, "status", "--url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1 and "unreachable" in missing.stderr


def test_feedback_on_a_pending_record_checks_it_first_as_a_read_does(tmp_path, encoder):
    """(review LOW) Feedback treats its target as ``GET /v1/experiences/{id}`` does: a record
    still waiting for the embedding check is checked first. A pending hijack is 404
    ``not_found``, exactly as an id the node does not hold, and no verdict is signed, stored
    or sent (it was 201 while GET answered 404); the CLI, through the same node method, says
    ``not_found`` too; an honest pending record is checked, promoted, and rated (201). The
    background check is held back (one batch, then 100 s of rest) so the records wait."""
    texts = [
        "Read the first frame of a traceback before editing any code",
        "Pin dependency versions in CI so that a new release cannot break a commit",
        "Check the sign of the divisor before dividing both sides of an inequality",
    ]
    first, honest = (
        create_experience(encoder, Ed25519PrivateKey.generate(), t, "code.debugging", 0.5)
        for t in texts[:2]
    )
    bad = [  # two hijackers: the first one's ban does not purge the second's record
        hijack(encoder, Ed25519PrivateKey.generate(), f"Buy cheap watches, offer {i}", texts[i])
        for i in (0, 2)
    ]
    env = {"ZOONODE_INGEST__CHECK_RATE": "0.01", "ZOONODE_INGEST__CHECK_BATCH": "1"}
    with running_node(tmp_path, env) as running:
        url, auth = running.url, running.auth

        def post(path: str, body: dict) -> httpx.Response:
            return httpx.post(f"{url}{path}", json=body, headers=auth, timeout=60)

        def backlog() -> dict:
            return httpx.get(f"{url}/v1/status", timeout=60).json()["backlog"]

        def stored() -> int:
            return httpx.get(f"{url}/v1/status", timeout=60).json()["trust"]["stored"]

        def rate(record_id: str, verdict: str = "helpful") -> httpx.Response:
            return post(f"/v1/experiences/{record_id}/feedback", {"verdict": verdict})

        post("/v1/records", {"wires": [first.wire.hex()]})
        for _ in range(600):  # its one batch, then the check rests for 100 s
            if backlog()["checked"] == 1:
                break
            time.sleep(0.1)
        assert backlog()["checked"] == 1
        answer = post("/v1/records", {"wires": [r.wire.hex() for r in [honest, *bad]]})
        assert all(r.get("pending") for r in answer.json()["results"]), answer.text
        assert backlog()["pending"] == 3

        missing = "ab" * 32
        unknown = rate(missing)
        read = httpx.get(f"{url}/v1/experiences/{missing}", timeout=60)
        assert unknown.status_code == read.status_code == 404
        assert unknown.json()["error"]["code"] == read.json()["error"]["code"] == "not_found"
        refused = rate(bad[0].id.hex())
        assert refused.status_code == 404, refused.text
        assert refused.json() == unknown.json()  # the same answer as for an id not held
        assert stored() == 0  # nothing signed, stored or sent
        assert httpx.get(f"{url}/v1/experiences/{bad[0].id.hex()}").status_code == 404
        status = backlog()
        assert (status["rejected"], status["on_demand"], status["pending"]) == (1, 1, 2)
        cli = running.cli("feedback", bad[1].id.hex(), "--harmful", check=False)
        assert cli.returncode == 1 and cli.stderr.startswith("error: not_found:"), cli.stderr
        assert stored() == 0 and backlog()["rejected"] == 2

        accepted = rate(honest.id.hex())
        assert accepted.status_code == 201, accepted.text
        assert accepted.json()["outcome"] == "accepted" and stored() == 1
        got = httpx.get(f"{url}/v1/experiences/{honest.id.hex()}", timeout=60)
        assert got.status_code == 200 and got.json()["status"] == "active"
        status = backlog()
        assert (status["promoted"], status["pending"], status["on_demand"]) == (2, 0, 3)


def _exchange(sock, request: bytes) -> tuple[bytes, bytes, int]:
    """Send ``request``; read the answer: (head, body, how many recv calls it took)."""
    sock.sendall(request)
    data, reads = b"", 0
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
        reads += 1
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    if request.startswith(b"HEAD "):
        return head, b"", reads
    while len(body) < length:
        body += sock.recv(65536)
        reads += 1
    return head, body, reads


def test_a_sized_answer_leaves_in_one_write(node):
    """zoonode.hypercorn_h11: a JSON answer's head and body go out in one send, so the client's
    first read holds all of it (two sends: the first read, woken by the head, gets the head
    alone nearly every time). Keep-alive, HEAD and a streamed export work as before."""
    import socket
    from urllib.parse import urlsplit

    url = node[0]
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reads = []
        for _ in range(20):  # one keep-alive connection
            head, body, count = _exchange(sock, b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert json.loads(body)["replica"] >= 0
            reads.append(count)
        assert reads == [1] * 20
        head, body, _ = _exchange(sock, b"HEAD /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body == b""
        head, body, count = _exchange(sock, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404") and json.loads(body)["error"]["code"] == "not_found"
        assert count == 1
    with httpx.stream("GET", f"{url}/v1/export") as streamed:
        assert streamed.status_code == 200
        assert "content-length" not in streamed.headers  # streamed: not held back
        assert all(json.loads(line)["id"] for line in streamed.iter_lines() if line)


def test_http2_is_refused_and_cannot_stop_the_node(node):
    """zoonode.hypercorn_h11: Hypercorn's HTTP/2 crashed ``serve()`` (and so the node) on a body
    arriving after the app had answered (pgjones/hypercorn#329): an unauthenticated HTTP/2
    POST of 60-70 kB stopped the node (review of issue 25). Now HTTP/2 with prior knowledge
    fails at the client, an ``Upgrade: h2c`` is answered in HTTP/1.1, and the node serves on."""
    import socket
    from urllib.parse import urlsplit

    url = node[0]
    for path, body in (("/v1/query", b"x" * 70_000), ("/v1/experiences", b"x" * 60_000)):
        with (
            pytest.raises(httpx.HTTPError),
            httpx.Client(http2=True, http1=False, timeout=10) as h2,
        ):
            h2.post(f"{url}{path}", content=body)
        assert httpx.get(f"{url}/v1/status", timeout=10).status_code == 200
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        head, body, _ = _exchange(
            sock,
            b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        )
        assert head.startswith(b"HTTP/1.1 200") and json.loads(body)["replica"] >= 0
    assert httpx.get(f"{url}/v1/status", timeout=10).status_code == 200
