"""Every bad input gets a clear, typed error and changes nothing (issue #19), against a real
`zoonode start` process: the HTTP API, the CLI and `zoonode import`.

Each case asserts the status, the code AND that the node's state (record counts, replica size)
is what it was before; each kind is covered over every field and entry point it applies to.
"""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from zoonode.inputs import ENVELOPE_DEPTH, MAX_DEPTH

from conftest import ZOONODE

GOOD = {
    "text": "When a unit test is flaky, look for state shared between tests before adding retries",
    "domain": "software.testing",
    "confidence": 0.7,
}
TEN_400 = "1" + "0" * 400  # 10^400 as a JSON integer literal
DIGITS_5000 = "9" * 5000  # past Python's int-from-text limit (4300 digits)


@pytest.fixture(scope="module")
def node(shared_node):
    """The session's shared node (conftest), seeded with one lesson: every case compares the
    node's state before and after its request."""
    seeded = httpx.post(f"{shared_node.url}/v1/experiences", json=GOOD, headers=shared_node.auth)
    assert seeded.status_code == 201, seeded.text
    return shared_node


def state(node) -> tuple:
    status = httpx.get(f"{node.url}/v1/status").json()
    return status["counts"], status["replica"]


def post(node, path: str, raw: bytes | str, auth: bool = True) -> httpx.Response:
    headers = {"content-type": "application/json", **(node.auth if auth else {})}
    body = raw.encode() if isinstance(raw, str) else raw
    return httpx.post(f"{node.url}{path}", content=body, headers=headers, timeout=60)


def refused(node, response: httpx.Response, status: int, code: str, before: tuple) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text
    assert state(node) == before  # nothing stored, nothing indexed


# -- 1. JSON nesting ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "auth"),
    [
        ("/v1/query", False),
        ("/v1/context", False),
        ("/v1/experiences", True),
        ("/v1/experiences/batch", True),
        ("/v1/records", True),
    ],
)
@pytest.mark.parametrize("depth", [None, 3_000, 30_000])  # None: one level past the limit
def test_deeply_nested_json_is_bad_json_on_every_endpoint(node, path, auth, depth):
    before = state(node)
    if depth is None:  # a batch's items may nest as deep as a body of their own
        batch = path in ("/v1/experiences/batch", "/v1/records")
        depth = MAX_DEPTH + 1 + (ENVELOPE_DEPTH if batch else 0)
    body = "[" * depth + "]" * depth  # 30,000 levels: 60 KB, under the 64 KiB limit
    refused(node, post(node, path, body, auth), 400, "bad_json", before)
    inner = '{"text": "sql", "x": ' + "[" * depth + "]" * depth + "}"
    refused(node, post(node, path, inner, auth), 400, "bad_json", before)


# -- 2. numbers out of range, in every numeric field and spelling ------------------------------
FLOAT_SPELLINGS = [  # (JSON literal, code) for a number in [0, 1]
    (TEN_400, "out_of_range"),
    ("-" + TEN_400, "out_of_range"),
    (DIGITS_5000, "out_of_range"),
    ("1e309", "non_finite"),
    ("-1e309", "non_finite"),
    ("NaN", "non_finite"),
    ("Infinity", "non_finite"),
    ("7", "out_of_range"),
    ("-0.5", "out_of_range"),
    ('"0.5"', "wrong_type"),
    ("true", "wrong_type"),
    ("[0.5]", "wrong_type"),
]
INT_SPELLINGS = [  # (JSON literal, code) for k, an integer in 1..50
    (TEN_400, "out_of_range"),
    (DIGITS_5000, "out_of_range"),
    ("0", "out_of_range"),
    ("51", "out_of_range"),
    ("-3", "out_of_range"),
    ("1e309", "wrong_type"),
    ("NaN", "wrong_type"),
    ("5.0", "wrong_type"),
    ('"5"', "wrong_type"),
    ("true", "wrong_type"),
]


def lesson_with(confidence_literal: str) -> str:
    return (
        '{"text": "Check the units of measured values before adding them", '
        f'"domain": "physics.units", "confidence": {confidence_literal}}}'
    )


@pytest.mark.parametrize(("literal", "code"), FLOAT_SPELLINGS)
def test_every_float_field_refuses_every_bad_spelling(node, literal, code):
    before = state(node)
    refused(node, post(node, "/v1/experiences", lesson_with(literal)), 422, code, before)
    for path, field in (("/v1/query", "text"), ("/v1/context", "task")):
        body = f'{{"{field}": "flaky tests", "min_confidence": {literal}}}'
        refused(node, post(node, path, body, auth=False), 422, code, before)


@pytest.mark.parametrize(("literal", "code"), INT_SPELLINGS)
def test_every_int_field_refuses_every_bad_spelling(node, literal, code):
    before = state(node)
    for path, field in (("/v1/query", "text"), ("/v1/context", "task")):
        body = f'{{"{field}": "flaky tests", "k": {literal}}}'
        refused(node, post(node, path, body, auth=False), 422, code, before)


def test_one_bad_number_in_a_batch_fails_only_its_slot(node):
    counts, replica = state(node)
    good = [
        {"text": "Pin dependency versions so a new release cannot break CI", "domain": "sw.ci"},
        {"text": "Read the first traceback frame before editing code", "domain": "sw.debug"},
    ]
    items = [json.dumps(good[0]), lesson_with(TEN_400), lesson_with("NaN"), json.dumps(good[1])]
    r = post(node, "/v1/experiences/batch", '{"experiences": [' + ",".join(items) + "]}")
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x.get("outcome") for x in results] == ["accepted", None, None, "accepted"]
    assert results[1]["error"]["code"] == "out_of_range"
    assert "experiences[1].confidence" in results[1]["error"]["message"]
    assert results[2]["error"]["code"] == "non_finite"
    after, replica_after = state(node)
    assert after["active"] == counts["active"] + 2 and replica_after == replica + 2


# -- 3. text that is not valid Unicode, in every text field ------------------------------------
SURROGATE = "\\ud800"  # a lone surrogate, as a JSON escape


@pytest.mark.parametrize(
    ("path", "body", "auth"),
    [
        ("/v1/query", {"text": f"sql {SURROGATE}"}, False),
        ("/v1/query", {"text": "sql", "domain": f"a{SURROGATE}"}, False),
        ("/v1/context", {"task": f"{SURROGATE} task"}, False),
        ("/v1/context", {"task": "task", "domain": SURROGATE}, False),
        ("/v1/experiences", {**GOOD, "text": f"{SURROGATE} lesson"}, True),
        ("/v1/experiences", {**GOOD, "domain": SURROGATE}, True),
        ("/v1/experiences", {**GOOD, "source_model": SURROGATE}, True),
        (
            "/v1/experiences",
            {**GOOD, "examples": [{"input": SURROGATE, "output": "o", "correct": True}]},
            True,
        ),
        (
            "/v1/experiences",
            {**GOOD, "examples": [{"input": "i", "output": SURROGATE, "correct": False}]},
            True,
        ),
    ],
)
def test_lone_surrogates_are_bad_text_in_every_field(node, path, body, auth):
    before = state(node)
    raw = json.dumps(body).replace("\\\\ud800", "\\ud800")  # keep the escape a real escape
    refused(node, post(node, path, raw, auth), 422, "bad_text", before)
    if path == "/v1/experiences":  # the same item inside a batch fails only its slot
        r = post(node, "/v1/experiences/batch", '{"experiences": [' + raw + "]}")
        assert r.json()["results"][0]["error"]["code"] == "bad_text"
        assert state(node) == before


@pytest.mark.parametrize("path", ["/v1/query", "/v1/experiences"])
def test_a_body_that_is_not_utf8_is_bad_text(node, path):
    before = state(node)
    body = b'{"text": "caf\xe9 \xff", "domain": "a.b"}'
    refused(node, post(node, path, body), 422, "bad_text", before)


@pytest.mark.parametrize(
    "args",
    [
        ["query", b"\xff abc"],
        ["context", b"caf\xe9"],
        ["publish", b"\xfe lesson text here", "--domain", "a.b"],
        ["publish", "a lesson text", "--domain", b"a\xff"],
        ["query", "sql", "--domain", b"\xff"],
    ],
)
def test_undecodable_command_line_bytes_are_one_line_of_bad_text(node, args):
    before = state(node)
    argv = [ZOONODE.encode(), *(a if isinstance(a, bytes) else a.encode() for a in args)]
    out = subprocess.run(
        [*argv, b"--data-dir", str(node.data).encode()], capture_output=True, timeout=60
    )
    lines = out.stderr.decode("utf-8", "replace").strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr
    assert lines[0].startswith("error: bad_text: "), lines
    assert state(node) == before


# -- 5. import: every line's error is FILE:LINE: code: message; the rest is kept ---------------
def test_import_reports_every_bad_line_and_keeps_every_good_one(node, tmp_path):
    goods = [
        {"text": f"Import lesson {name}: always validate input at the boundary", "domain": "a.b"}
        for name in ("one", "two", "three", "four")
    ]
    oversize = {
        "text": "A lesson whose examples make the record too large",
        "domain": "a.b",
        "examples": [{"input": "i" * 1000, "output": "o" * 1000, "correct": True}] * 8,
    }
    lines: list[bytes] = [
        json.dumps(goods[0]).encode(),  # 1
        json.dumps(oversize).encode(),  # 2: record over 8192 bytes
        b"[" * 3000 + b"]" * 3000,  # 3: nested 3,000 deep
        lesson_with(TEN_400).encode(),  # 4
        json.dumps(goods[1]).encode(),  # 5
        b'{"text": "\\ud800 x", "domain": "a.b"}',  # 6: lone surrogate
        b'{"text": "caf\xe9", "domain": "a.b"}',  # 7: not UTF-8
        b"[1, 2]",  # 8: not an object
        b'{"text": "truncated", "dom',  # 9
        b"",  # 10: blank, skipped
        json.dumps(goods[2]).encode(),  # 11
        json.dumps({"text": "x" * 70_000, "domain": "a.b"}).encode(),  # 12: over 64 KiB
        json.dumps({"wire": "zz", "id": "x"}).encode(),  # 13: a wire that is not hex
        json.dumps(goods[3]).encode(),  # 14
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    before, replica = state(node)
    out = node.cli("import", str(path), check=False)
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith(str(path))]
    codes = {int(line.split(":")[1]): line.split(": ")[1] for line in errors}
    assert codes == {
        2: "oversize",
        3: "bad_json",
        4: "out_of_range",
        6: "bad_text",
        7: "bad_text",
        8: "bad_json",
        9: "bad_json",
        12: "too_large",
        13: "bad_hex",
    }
    for line in errors:  # FILE:LINE: code: message, the message not empty
        assert len(line.split(": ", 2)) == 3 and line.split(": ", 2)[2].strip()
    assert out.stdout.splitlines()[-1] == f"{path}: 4 accepted, 9 failed"  # for people
    after, replica_after = state(node)
    assert after["active"] == before["active"] + 4 and replica_after == replica + 4


# -- 9. revoke is idempotent, a revocation cannot be revoked; one key: outcome ------------------
def gossip_out(node) -> float:
    for line in httpx.get(f"{node.url}/metrics").text.splitlines():
        if line.startswith("zoonode_gossip_messages_out_total "):
            return float(line.split()[1])
    raise AssertionError("no zoonode_gossip_messages_out_total")


def settled_gossip_out(node) -> float:
    """gossip_out once it stops moving (publishing is asynchronous: the first revocation, or an
    earlier test's message, may still be on its way out)."""
    import time

    last, deadline = gossip_out(node), time.monotonic() + 15
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = gossip_out(node)
        if now == last:
            return now
        last = now
    raise AssertionError("gossip output never settled")


def test_revoking_twice_answers_already_revoked_and_emits_nothing(node):
    lesson = {"text": "Revoke me: a lesson about retrying idempotent requests", "domain": "a.b"}
    created = httpx.post(f"{node.url}/v1/experiences", json=lesson, headers=node.auth)
    record_id = created.json()["id"]
    assert set(created.json()) == {"id", "outcome"}
    url = f"{node.url}/v1/experiences/{record_id}/revoke"
    first = httpx.post(url, headers=node.auth)
    assert first.status_code == 200 and first.json() == {"id": record_id, "outcome": "revoked"}
    counts, replica = state(node)
    sent = settled_gossip_out(node)
    for _ in range(2):
        again = httpx.post(url, headers=node.auth)
        assert again.status_code == 200
        assert again.json() == {"id": record_id, "outcome": "already_revoked"}
    assert state(node) == (counts, replica)  # no second revocation record stored ...
    assert settled_gossip_out(node) == sent  # ... nor published
    assert httpx.get(f"{node.url}/v1/experiences/{record_id}").json()["status"] == "revoked"


def test_revoking_a_revocation_is_refused(node):
    lesson = {"text": "A lesson whose revocation someone tries to revoke", "domain": "a.b"}
    created = httpx.post(f"{node.url}/v1/experiences", json=lesson, headers=node.auth)
    record_id = created.json()["id"]
    httpx.post(f"{node.url}/v1/experiences/{record_id}/revoke", headers=node.auth)
    revocation_id = revocation_of(node, record_id)
    assert httpx.get(f"{node.url}/v1/experiences/{revocation_id}").json()["op"] == "revoke"
    before = state(node)
    r = httpx.post(f"{node.url}/v1/experiences/{revocation_id}/revoke", headers=node.auth)
    refused(node, r, 409, "not_revocable", before)
    missing = httpx.post(f"{node.url}/v1/experiences/{'ab' * 32}/revoke", headers=node.auth)
    refused(node, missing, 404, "not_found", before)


def revocation_of(node, record_id: str) -> str:
    """The id of the revocation of ``record_id``, read from the node's store (WAL: a second
    reader is safe)."""
    import sqlite3

    db = sqlite3.connect(f"file:{node.data / 'experiences.sqlite'}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT id FROM records WHERE op = 2 AND parent = ?", (bytes.fromhex(record_id),)
        ).fetchone()
    finally:
        db.close()
    assert row is not None
    return row[0].hex()


# -- also: unknown paths and methods, domain filters -------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/nope", 404, "not_found"),
        ("POST", "/nope", 404, "not_found"),
        ("GET", "/v1/query", 405, "method_not_allowed"),
        ("DELETE", "/v1/experiences", 405, "method_not_allowed"),
        ("PUT", "/v1/status", 405, "method_not_allowed"),
    ],
)
def test_unknown_paths_and_methods_answer_json_errors(node, method, path, status, code):
    r = httpx.request(method, f"{node.url}{path}")
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]


@pytest.mark.parametrize("domain", ["Bad!", "a..b", ".a", "A.b", "a b"])
def test_a_domain_filter_that_is_not_a_domain_is_bad_domain(node, domain):
    before = state(node)
    for path, field in (("/v1/query", "text"), ("/v1/context", "task")):
        body = json.dumps({field: "sql injection", "domain": domain})
        refused(node, post(node, path, body, auth=False), 422, "bad_domain", before)
    r = httpx.get(f"{node.url}/v1/export", params={"domain": domain})
    refused(node, r, 422, "bad_domain", before)
    out = node.cli("query", "sql", "--domain", domain, check=False)
    assert out.returncode == 1 and out.stderr.strip() == (
        "error: bad_domain: domain must be dotted lowercase words like 'math.geometry', "
        f"got {domain!r}"
    )


@pytest.mark.parametrize("params", [{"foo": "1"}, {"domian": "software"}, {"domain": "a", "x": ""}])
def test_an_unknown_export_parameter_is_unknown_field_as_in_a_body(node, params):
    """GET /v1/export ignored parameters it does not define (a misspelt domain exported
    everything); refused now with the code and words of a body's unknown key."""
    unknown = next(name for name in params if name != "domain")
    r = httpx.get(f"{node.url}/v1/export", params=params, timeout=60)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == {
        "code": "unknown_field",
        "message": f"{unknown} is not a field of this request",
    }
    assert httpx.get(f"{node.url}/v1/export", params={"domain": "software"}).status_code == 200


# -- found in review: a bearer header with non-ASCII bytes was a 500 ----------------------------
@pytest.mark.parametrize("path", ["/v1/experiences", "/v1/experiences/batch", "/mcp"])
@pytest.mark.parametrize("value", [b"Bearer \xe9", b"Bearer \xff\xfe", "Bearer é".encode()])
def test_a_bearer_header_that_is_not_ascii_is_unauthorized(node, path, value):
    before = state(node)
    headers = {"content-type": "application/json", "authorization": value}
    r = httpx.post(f"{node.url}{path}", content=json.dumps(GOOD), headers=headers, timeout=60)
    refused(node, r, 401, "unauthorized", before)


# -- found in review: a line nested 31-32 deep (accepted alone) failed its whole import chunk --
def test_a_batch_item_may_nest_as_deep_as_a_body_and_import_keeps_its_neighbours(node, tmp_path):
    """Depth is judged the same alone and in a batch: a body MAX_DEPTH deep is parsed (then
    refused for its unknown key, unknown_field, not bad_json), and so is a batch item."""
    deep = {**GOOD, "text": "A lesson with a deeply nested extra field", "x": []}
    inner: list = deep["x"]
    for _ in range(MAX_DEPTH - 2):  # the object, then MAX_DEPTH - 1 lists: MAX_DEPTH levels
        inner.append([])
        inner = inner[0]
    alone = post(node, "/v1/experiences", json.dumps(deep))
    assert alone.status_code == 422, alone.text  # parsed at the deepest the API takes
    assert alone.json()["error"] == {
        "code": "unknown_field",
        "message": "x is not a field of this request",
    }
    item = {**deep, "text": "Deep batch item, as deep as alone"}
    body = json.dumps({"experiences": [item, GOOD]})  # MAX_DEPTH + ENVELOPE_DEPTH levels
    batch = post(node, "/v1/experiences/batch", body)
    assert batch.status_code == 200, batch.text
    first, second = batch.json()["results"]
    assert (
        first["error"]["code"] == "unknown_field"
        and "experiences[0].x" in first["error"]["message"]
    )
    assert second["outcome"] in ("accepted", "duplicate")
    goods = [
        {"text": f"Deep import neighbour {n}: check the exit code of every step", "domain": "a.b"}
        for n in ("one", "two")
    ]
    too_deep = {**deep, "text": "One level too deep for any entry", "x": [deep["x"]]}
    path = tmp_path / "deep.jsonl"
    lines = [goods[0], {**deep, "text": "Deep import line kept"}, too_deep, goods[1]]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    before, replica = state(node)
    out = node.cli("import", str(path), "--json", check=False)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-2:] == [
        f"{path}:2: unknown_field: x is not a field of this request",
        f"{path}:3: bad_json: line is nested deeper than {MAX_DEPTH} levels",
    ]
    assert json.loads(out.stdout.splitlines()[-1]) == {"accepted": 2, "errors": 2}
    after, replica_after = state(node)
    assert after["active"] == before["active"] + 2 and replica_after == replica + 2


# -- found in review: POST /mcp parsed by the SDK alone, with other codes than stdio ------------
DEEP_ARGS = '{"query": "sql", "x": ' + "[" * 40 + "]" * 40 + "}"


@pytest.mark.parametrize(
    ("body", "status", "rpc", "code", "rid"),
    [
        ("not json", 400, -32700, "bad_json", None),
        (
            '{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": '
            '{"name": "search_experiences", "arguments": ' + DEEP_ARGS + "}}",
            400,
            -32700,
            "bad_json",
            None,
        ),
        (
            '{"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": '
            '{"name": "search_experiences", "arguments": {"query": "sql \\ud800"}}}',
            400,
            -32602,
            "bad_text",
            4,
        ),
        ('{"jsonrpc": "2.0", "id": "\\ud800", "method": "ping"}', 400, -32602, "bad_text", None),
        ('{"id": 5, "params": 5}', 400, -32600, "bad_request", 5),
        (
            '{"jsonrpc": "2.0", "id": ' + TEN_400 + ', "method": "ping"}',
            400,
            -32600,
            "bad_request",
            None,
        ),
        (
            '{"jsonrpc": "2.0", "id": 6, "method": "ping", "x": "' + "a" * 70_000 + '"}',
            413,
            -32700,
            "too_large",
            None,
        ),
    ],
)
def test_mcp_over_http_answers_bad_messages_as_stdio_does(node, body, status, rpc, code, rid):
    before = state(node)
    headers = {**node.auth, "accept": "application/json, text/event-stream"}
    r = httpx.post(
        f"{node.url}/mcp",
        content=body.encode("utf-8", "surrogatepass"),
        headers={**headers, "content-type": "application/json"},
        timeout=60,
    )
    assert r.status_code == status, r.text
    answer = r.json()
    assert answer["id"] == rid and answer["error"]["code"] == rpc, answer
    assert answer["error"]["data"]["code"] == code
    assert state(node) == before
    ping = httpx.post(
        f"{node.url}/mcp",
        json={"jsonrpc": "2.0", "id": 7, "method": "ping"},
        headers=headers,
        timeout=60,
    )
    assert ping.status_code == 200 and ping.json() == {"jsonrpc": "2.0", "id": 7, "result": {}}


# -- found in review: a file's BOM failed line 1; messages named the item's slot in a request ---
def test_import_takes_a_bom_and_words_errors_by_line_not_by_request_slot(node, tmp_path):
    good = {"text": "Import after a byte order mark: line one is kept", "domain": "a.b"}
    lines = [
        b"\xef\xbb\xbf" + json.dumps(good).encode(),  # 1: a BOM, as Notepad writes
        json.dumps({**good, "text": "Import neighbour of a bad number"}).encode(),  # 2
        lesson_with(TEN_400).encode(),  # 3
        json.dumps({"wire": "zz"}).encode(),  # 4
    ]
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    before, replica = state(node)
    out = node.cli("import", str(path), "--json", check=False)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-2:] == [
        f"{path}:3: out_of_range: confidence is out of range: a 401-digit integer",
        f"{path}:4: bad_hex: wire is not hex",
    ]
    assert json.loads(out.stdout.splitlines()[-1]) == {"accepted": 2, "errors": 2}
    after, replica_after = state(node)
    assert after["active"] == before["active"] + 2 and replica_after == replica + 2
