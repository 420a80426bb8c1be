"""A fresh-clone review of what operators and agents touch, against a real `zoonode start`
process: /v1/context's options through the client and the CLI, unknown MCP arguments, the
CLI's words for the selection's reason codes and floors (and a filter that matches nothing),
slow clients on the HTTP server, and the one shape of MCP tool errors."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import anyio
import httpx
import pytest

from zoonode import humanview, inputs
from zoonode.api import MAX_HEAD
from zoonode.client import Client, ClientError

from conftest import ZOONODE
from nodeproc import running_node

IDLE_S, BODY_S = 1.0, 2.0
UNITS = [  # one author, one topic, distinct enough not to be near-duplicates
    ("When adding measured lengths, convert every value to the same unit before summing", 0.3),
    ("Write the unit next to every number in a calculation so a mismatch is visible", 0.9),
    ("Metres and centimetres differ by a factor of one hundred: 3 m + 20 cm is 3.2 m", 0.85),
    # a near-copy of the first: with k = 2 and one slot per author, it is left out
    ("When adding measured lengths, convert every value to the same unit before summing them", 0.3),
]
TASK = "Add 3 m and 20 cm and give the length in metres"
WORDED_BEFORE = {  # the reason codes humanview had words for before the fresh-clone review
    "below_similarity_floor",
    "low_reputation",
    "near_duplicate_merged",
    "author_capped",
}


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    env = {
        "ZOONODE_API__IDLE_TIMEOUT_S": str(IDLE_S),
        "ZOONODE_API__BODY_TIMEOUT_S": str(BODY_S),
        # one answer slot for an established author (this node's own): the rest held back
        "ZOONODE_SELECTION__ESTABLISHED_SLOTS": "1",
    }
    with running_node(tmp_path_factory.mktemp("surfaces"), env) as running:
        ids = []
        for text, confidence in UNITS:
            r = httpx.post(
                f"{running.url}/v1/experiences",
                json={"text": text, "domain": "physics.units", "confidence": confidence},
                headers=running.auth,
                timeout=60,
            )
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        running.ids = ids
        yield running


def state(node) -> tuple:
    status = httpx.get(f"{node.url}/v1/status").json()
    return status["counts"], status["replica"]


# -- 1. /v1/context's options are /v1/query's, in the client and the CLI ----------------------
def test_context_takes_min_confidence_from_the_client_and_the_cli(node):
    low = node.ids[0]
    with Client(node.url) as client:
        assert low in client.context(TASK)["experiences"]  # the filter is what removes it
        kept = client.context(TASK, min_confidence=0.8)["experiences"]
        assert kept and low not in kept
        assert low not in [s["id"] for s in client.query(TASK, min_confidence=0.8)["selected"]]
        with pytest.raises(ClientError) as refused:
            client.context(TASK, min_confidence=1.5)
        assert refused.value.code == "out_of_range"
    for verb in ("context", "query"):
        out = node.cli(verb, TASK, "--min-confidence", "0.8", "--json")
        answer = json.loads(out.stdout)
        got = answer["experiences"] if verb == "context" else [s["id"] for s in answer["selected"]]
        assert got and low not in got
        bad = node.cli(verb, TASK, "--min-confidence", "1.5", check=False)
        assert bad.returncode == 1
        assert bad.stderr.strip() == (
            "error: out_of_range: min_confidence must be at most 1.0, got 1.5"
        )


def test_the_docs_list_each_query_body_field():
    """docs/api.md's `{...}` for /v1/query and /v1/context, and openapi.json's request
    schemas, name exactly the fields of the models that validate them."""
    doc = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
    openapi = json.loads((Path(inputs.__file__).parent / "openapi.json").read_text())
    schemas = openapi["components"]["schemas"]
    for path, model, schema in (
        ("/v1/query", inputs.QueryIn, "QueryRequest"),
        ("/v1/context", inputs.ContextIn, "ContextRequest"),
    ):
        listed = re.search(rf"`POST {path}` `\{{([^}}]*)\}}`", doc)[1]
        assert [f.strip().rstrip("?") for f in listed.split(",")] == list(model.model_fields)
        assert list(schemas[schema]["properties"]) == list(model.model_fields)


# -- 2. MCP: an argument a tool or prompt does not define is unknown_field -------------------
def test_unknown_mcp_arguments_are_refused_as_the_api_refuses_unknown_fields(node):
    from mcp import Client as McpClient
    from mcp import StdioServerParameters
    from mcp.shared.exceptions import MCPError

    http = httpx.post(f"{node.url}/v1/query", json={"text": TASK, "limit": 2}, timeout=60)
    assert http.status_code == 422
    api_error = http.json()["error"]
    assert api_error == {"code": "unknown_field", "message": "limit is not a field of this request"}
    calls = [
        ("search_experiences", {"query": TASK, "limit": 2}, "limit"),
        ("share_experience", {"text": "A lesson on units", "domain": "a.b", "tags": []}, "tags"),
        ("get_experience", {"id": node.ids[1], "verbose": True}, "verbose"),
        ("rate_experience", {"id": node.ids[1], "verdict": "helpful", "why": "x"}, "why"),
    ]
    params = StdioServerParameters(command=ZOONODE, args=["mcp", "--data-dir", str(node.data)])
    before = state(node)

    async def main():
        async with McpClient(params) as client:
            listed = (await client.list_tools()).tools
            results = [await client.call_tool(name, args) for name, args, _ in calls]
            prompt_errors = []
            for arguments in ({"task": TASK, "count": "2"}, {"k": "2"}):
                with pytest.raises(MCPError) as caught:
                    await client.get_prompt("inject_experiences", arguments)
                prompt_errors.append(caught.value.error)
            return listed, results, prompt_errors

    listed, results, prompt_errors = anyio.run(main)
    for (_, _, key), result in zip(calls, results, strict=True):
        assert result.is_error
        assert result.content[0].text == f"unknown_field: {key} is not a field of this request"
    assert [(e.code, e.data["code"], e.message) for e in prompt_errors] == [
        (-32602, "unknown_field", "unknown_field: count is not a field of this request"),
        (-32602, "missing_field", "missing_field: task is required"),
    ]
    assert state(node) == before  # nothing shared, nothing rated
    assert all(t.input_schema.get("additionalProperties") is False for t in listed)


def test_mcp_arguments_of_the_wrong_type_are_refused_as_the_api_refuses_them(node):
    """No coercion over MCP either: true is not k = 1, "0.5" is not a number (wrong_type,
    worded as /v1/query words it); nothing is stored."""
    from mcp import Client as McpClient
    from mcp import StdioServerParameters

    bodies = [{"k": True}, {"min_confidence": "0.5"}, {"federated": "yes"}]
    http = [
        httpx.post(f"{node.url}/v1/query", json={"text": TASK, **b}, timeout=60) for b in bodies
    ]
    assert [r.status_code for r in http] == [422] * 3
    expected = [f"{r.json()['error']['code']}: {r.json()['error']['message']}" for r in http]
    params = StdioServerParameters(command=ZOONODE, args=["mcp", "--data-dir", str(node.data)])
    before = state(node)

    async def main():
        async with McpClient(params) as client:
            calls = [client.call_tool("search_experiences", {"query": TASK, **b}) for b in bodies]
            shared = await client.call_tool(
                "share_experience",
                {"text": "A lesson on units", "domain": "a.b", "confidence": "1"},
            )
            return [await c for c in calls], shared

    results, shared = anyio.run(main)
    assert [(r.is_error, r.content[0].text) for r in results] == [(True, e) for e in expected]
    assert expected[0].startswith("wrong_type:")
    assert shared.is_error and shared.content[0].text.startswith("wrong_type:")
    assert state(node) == before


def test_a_verdict_outside_its_choices_reads_the_same_over_http_and_mcp(node):
    """A verdict that is not helpful, harmful or withdrawn is out_of_range with the choices
    listed (as the wire's verdict), not wrong_type in pydantic's words; nothing is stored."""
    from mcp import Client as McpClient
    from mcp import StdioServerParameters

    url = f"{node.url}/v1/experiences/{node.ids[1]}/feedback"
    verdicts = ["great", 5]
    http = [httpx.post(url, json={"verdict": v}, headers=node.auth, timeout=60) for v in verdicts]
    assert [r.status_code for r in http] == [422, 422]
    said = [f"{r.json()['error']['code']}: {r.json()['error']['message']}" for r in http]
    assert said == [
        "out_of_range: verdict must be one of 'helpful', 'harmful', 'withdrawn', got 'great'",
        "wrong_type: verdict must be a string, got the number 5",
    ]
    params = StdioServerParameters(command=ZOONODE, args=["mcp", "--data-dir", str(node.data)])
    before = state(node), httpx.get(f"{node.url}/v1/status").json()["trust"]["stored"]

    async def main():
        async with McpClient(params) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            calls = [
                await client.call_tool("rate_experience", {"id": node.ids[1], "verdict": v})
                for v in verdicts
            ]
            return tools["rate_experience"].input_schema, calls

    schema, results = anyio.run(main)
    assert [(r.is_error, r.content[0].text) for r in results] == [(True, e) for e in said]
    assert schema["properties"]["verdict"]["enum"] == ["helpful", "harmful", "withdrawn"]
    assert (state(node), httpx.get(f"{node.url}/v1/status").json()["trust"]["stored"]) == before


# -- 3. the CLI's human view words the reason codes and the floors; --json keeps them --------
def test_the_cli_words_every_reason_code_and_json_keeps_the_codes(node):
    answer = json.loads(node.cli("query", TASK, "--k", "2", "--json").stdout)
    shown = [code for code, n in answer["down_weighted"].items() if n]
    # codes the view printed raw before (here author_slot_limit: the near-copy held back)
    assert set(shown) - WORDED_BEFORE, answer["down_weighted"]
    human = node.cli("query", TASK, "--k", "2").stdout
    assert not [code for code in shown if code in human], human
    for code in shown:
        assert f"{answer['down_weighted'][code]} {humanview.REASONS[code]}" in human


def test_every_reason_the_selection_gives_has_words():
    source = (Path(inputs.__file__).parent / "selection.py").read_text()
    codes = set(re.findall(r'reasons\["(\w+)"\]', source))
    assert "author_slot_limit" in codes and len(codes) >= 8
    assert codes <= set(humanview.REASONS), codes - set(humanview.REASONS)
    view = humanview.query_view({"selected": [], "considered": 3, "down_weighted": {"new_x": 2}})
    assert "2 new x" in view  # a newer node's code: words, not an identifier


def test_the_cli_prints_the_similarity_floors_the_query_used(node):
    """`--json` has floor and established_floor; the human view says them in one line."""
    answer = json.loads(node.cli("query", TASK, "--json").stdout)
    floor, established = answer["floor"], answer["established_floor"]
    human = node.cli("query", TASK).stdout
    line = f"similarity floor {floor:.2f}"
    if f"{established:.2f}" != f"{floor:.2f}":
        line += f" (established authors' lessons: {established:.2f})"
    assert f"  {line}\n" in human, human


def test_the_floor_line_names_the_lower_floor_only_when_it_differs():
    base = {"selected": [], "considered": 7, "down_weighted": {}}
    both = humanview.query_view({**base, "floor": 0.4, "established_floor": 0.3})
    assert "similarity floor 0.40 (established authors' lessons: 0.30)" in both
    one = humanview.query_view({**base, "floor": 0.4, "established_floor": 0.4})
    assert "similarity floor 0.40\n" in one + "\n" and "established" not in one
    older = humanview.query_view(base)  # a node from before the floors were in the answer
    assert "floor" not in older


def test_the_reasons_line_does_not_count_the_selected_among_the_left_out():
    """low_reputation counts kept candidates of authors not yet established, the selected
    one among them: it is not on the "left out" line, and the line it is on says some of
    them may be selected (and, since a newer author's lesson held back counts under both,
    that some are also on the line above: a review found the two lines contradictory)."""
    lesson = {"text": "t", "relevance": 0.5, "agreement": 1.0, "standing": 0.0,
              "domain": "a.b", "confidence": 0.5, "author": "ab" * 32, "id": "cd" * 32}  # fmt: skip
    view = humanview.query_view(
        {"selected": [lesson], "considered": 40,
         "down_weighted": {"below_similarity_floor": 39, "low_reputation": 1}},
    )  # fmt: skip
    lines = view.splitlines()
    left_out = next(x for x in lines if "left out" in x)
    assert "39 below the similarity floor" in left_out and "standing" not in left_out
    weighed = next(x for x in lines if humanview.REASONS["low_reputation"] in x)
    assert "left out" not in weighed and "may be among the selected" in weighed
    for code, words in humanview.REASONS.items():  # each code on the line that is true of it
        shown = humanview.query_view(
            {"selected": [], "considered": 2, "down_weighted": {code: 2}}
        ).splitlines()[-1]
        assert f"2 {words}" in shown
        assert shown.startswith("  left out: ") == (code in humanview.LEFT_OUT), shown


def test_a_filter_that_matches_nothing_says_so(node):
    """No lesson in the domain: considered 0, and the human view says the filter matched
    nothing (not a floor: with no candidate there was none to set)."""
    answer = json.loads(node.cli("query", TASK, "--domain", "no.such", "--json").stdout)
    assert answer["selected"] == [] and answer["considered"] == 0
    assert answer["floor"] == pytest.approx(0.3)  # floor_min: the API's numbers unchanged
    human = node.cli("query", TASK, "--domain", "no.such").stdout
    assert human.strip() == "no lesson matches the filter (domain no.such)", human
    both = node.cli("query", TASK, "--domain", "no.such", "--min-confidence", "0.5").stdout
    assert "(domain no.such, confidence at least 0.5)" in both


def test_context_and_mcp_search_say_a_filter_matched_nothing_as_query_does(node):
    """/v1/context answers `considered` as /v1/query does (0: the filter matched nothing);
    `zoonode context` says so on stderr in query's words (stdout stays the prompt, just the
    task); MCP search_experiences says so in a `note`. A filter that matches says nothing."""
    from mcp import Client as McpClient
    from mcp import StdioServerParameters

    words = "no lesson matches the filter (domain no.such, confidence at least 0.5)"
    body = {"task": TASK, "domain": "no.such", "min_confidence": 0.5}
    empty = httpx.post(f"{node.url}/v1/context", json=body, timeout=60).json()
    assert empty["experiences"] == [] and empty["considered"] == 0
    body["domain"] = "physics"
    found = httpx.post(f"{node.url}/v1/context", json=body, timeout=60).json()
    assert found["experiences"] and found["considered"] >= len(found["experiences"])
    out = node.cli("context", TASK, "--domain", "no.such", "--min-confidence", "0.5")
    assert out.stderr == words + "\n" and out.stdout.strip() == empty["prompt"].strip()
    assert node.cli("context", TASK, "--domain", "physics").stderr == ""
    query = node.cli("query", TASK, "--domain", "no.such", "--min-confidence", "0.5").stdout
    assert query.strip() == words  # the same words as the query's human view
    params = StdioServerParameters(command=ZOONODE, args=["mcp", "--data-dir", str(node.data)])

    async def main():
        async with McpClient(params) as client:
            args = {"query": TASK, "min_confidence": 0.5}
            return [
                await client.call_tool("search_experiences", {**args, "domain": domain})
                for domain in ("no.such", "physics")
            ]

    nothing, something = [json.loads(r.content[0].text) for r in anyio.run(main)]
    assert nothing["considered"] == 0 and nothing["note"] == words
    assert something["experiences"] and "note" not in something


# -- 4. slow clients: a head or a body that never comes holds nothing for long --------------
def _address(node) -> tuple[str, int]:
    host, port = node.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and after how long."""
    started = time.monotonic()
    sock.settimeout(limit)
    got = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"still open after {limit} s; got {got[:200]!r}") from None
        if not chunk:
            return got, time.monotonic() - started
        got += chunk


@pytest.mark.parametrize(
    "sent",
    [b"GET /v1/sta", b"POST /v1/query HTTP/1.1\r\nHost: x\r\nContent-Le"],
    ids=["half a request line", "half the headers"],
)
def test_a_connection_that_never_sends_a_whole_head_is_closed(node, sent):
    with socket.create_connection(_address(node)) as sock:
        sock.sendall(sent)
        got, after = _until_closed(sock, IDLE_S + 10)
    assert got == b"" and after < IDLE_S + 5


def test_a_body_that_never_comes_is_408_and_the_connection_closes(node):
    before = state(node)
    for path, auth in (("/v1/query", ""), ("/v1/experiences", node.token), ("/mcp", node.token)):
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        if auth:
            head += f"Authorization: Bearer {auth}\r\n"
        head += "Accept: application/json, text/event-stream\r\nContent-Length: 200\r\n\r\n{"
        with socket.create_connection(_address(node)) as sock:
            sock.sendall(head.encode())
            got, after = _until_closed(sock, BODY_S + 15)
        assert got.startswith(b"HTTP/1.1 408 "), (path, got[:300])
        body = json.loads(got.split(b"\r\n\r\n", 1)[1])
        assert body["error"]["code"] == "request_timeout", body
        assert BODY_S - 0.5 < after < BODY_S + 10
    assert state(node) == before


def test_slow_but_whole_requests_and_kept_alive_clients_still_work(node):
    body = json.dumps({"text": TASK, "k": 1}).encode()
    head = (
        f"POST /v1/query HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(_address(node)) as sock:
        sock.sendall(head + body[:5])
        time.sleep(BODY_S / 2)  # a pause shorter than the deadline
        sock.sendall(body[5:])
        sock.settimeout(60)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    with httpx.Client(base_url=node.url, timeout=60) as client:
        ports = set()
        for _ in range(3):
            r = client.get("/v1/status")
            assert r.status_code == 200
            ports.add(r.extensions["network_stream"].get_extra_info("client_addr")[1])
            time.sleep(IDLE_S / 4)
        assert len(ports) == 1  # one connection, kept alive between requests
        time.sleep(IDLE_S + 1.5)  # idle past the timeout: closed; the client dials again
        assert client.get("/v1/status").status_code == 200


def test_a_request_head_over_max_head_is_refused_and_closed(node):
    padding = b"a" * (MAX_HEAD + 1024)
    with socket.create_connection(_address(node)) as sock:
        sock.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Pad: " + padding)  # unended
        got, _ = _until_closed(sock, 30)
    assert got.startswith(b"HTTP/1.1 431 "), got[:200]


# -- 5. MCP tool errors: one shape, CODE: MESSAGE, whoever refused ---------------------------
def test_every_mcp_tool_error_reads_code_colon_message(node):
    """A refused argument, a refusal by the node (no such experience, a bad id), an unknown
    tool: all read as the API words them, none with the SDK's "Error executing tool" prefix.
    Over the node's streamable HTTP endpoint."""
    import httpx2
    from mcp import Client as McpClient
    from mcp.client.streamable_http import streamable_http_client

    missing = "ab" * 32
    api = httpx.get(f"{node.url}/v1/experiences/{missing}", timeout=60)
    assert api.status_code == 404
    not_found = f"{api.json()['error']['code']}: {api.json()['error']['message']}"
    calls = [
        ("get_experience", {"id": missing}),
        ("get_experience", {"id": "nope"}),
        ("rate_experience", {"id": missing, "verdict": "helpful"}),
        ("search_experiences", {"query": TASK, "k": 0}),
        ("search_experiences", {"query": TASK, "domain": "Bad!"}),
        ("no_such_tool", {}),
    ]

    async def main():
        async with (
            httpx2.AsyncClient(headers=node.auth, timeout=60) as http,
            McpClient(streamable_http_client(f"{node.url}/mcp", http_client=http)) as client,
        ):
            return [await client.call_tool(name, args) for name, args in calls]

    results = anyio.run(main)
    texts = [r.content[0].text for r in results]
    assert all(r.is_error for r in results), texts
    assert texts[0] == not_found
    codes = [t.split(": ", 1)[0] for t in texts]  # before: "Error executing tool NAME" for some
    assert codes == ["not_found", "bad_id", "not_found", "out_of_range", "bad_domain",
                     "unknown_tool"], texts  # fmt: skip
