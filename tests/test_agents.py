"""What agents and operators touch, against real `zoonode start` processes: the OpenAPI
contract checked on real answers, /v1/context, batch sharing, export -> import between two
nodes, the async client, outcome reports (HTTP, CLI, MCP), and MCP through a real MCP client
over stdio and streamable HTTP."""

from __future__ import annotations

import json
import re

import anyio
import httpx
import jsonschema
import pytest

from zoonode.api import create_app, openapi_document
from zoonode.client import AsyncClient

from conftest import ZOONODE
from nodeproc import running_node

# One request at a time, no kept-alive connection (the node closes idle ones after 5 s); 60 s,
# not httpx's 5 s: on a loaded 2-core CI machine a node's first query after feedback, with
# its background check encoding, once took longer (a ReadTimeout, not a wrong answer).
http = httpx.Client(timeout=60, limits=httpx.Limits(max_keepalive_connections=0))

LESSONS = [
    {
        "text": "When solving geometry problems with intersections, validate that solutions lie "
        "within the bounded segments, not on their extensions",
        "domain": "math.geometry",
        "confidence": 0.9,
    },
    {
        "text": "Before dividing both sides of an inequality, check the sign of the divisor",
        "domain": "math.algebra",
        "confidence": 0.8,
    },
    {
        "text": "When a unit test is flaky, look for state shared between tests before adding "
        "retries",
        "domain": "software.testing",
        "confidence": 0.7,
    },
]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    with (
        running_node(tmp_path_factory.mktemp("agent_a")) as a,
        running_node(tmp_path_factory.mktemp("agent_b")) as b,
    ):
        yield a, b


def conforms(answer, schema_name: str) -> None:
    """Validate a real answer against the checked-in OpenAPI document's schema."""
    doc = openapi_document()
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": doc["components"]}
    jsonschema.validate(answer, schema, cls=jsonschema.Draft202012Validator)


def test_openapi_document_lists_exactly_the_served_routes(nodes):
    a, _ = nodes
    served = http.get(f"{a.url}/openapi.json").json()
    assert served == openapi_document()
    jsonschema.Draft202012Validator.check_schema({"components": served["components"]})
    documented = {(path, method.upper()) for path, ops in served["paths"].items() for method in ops}
    routes = set()
    for route in create_app(None, "token", mcp=True).routes:
        methods = route.methods or {"GET"}
        routes |= {(route.path, m) for m in methods if m in ("GET", "POST")}
    assert routes == documented


def test_batch_share_keeps_good_items_and_reports_bad_ones(nodes):
    a, _ = nodes
    bad = {"text": "x", "domain": "Not A Domain"}
    r = http.post(
        f"{a.url}/v1/experiences/batch",
        json={"experiences": [*LESSONS, bad, LESSONS[0]]},
        headers=a.auth,
        timeout=120,
    )
    assert r.status_code == 200, r.text
    conforms(r.json(), "BatchResults")
    results = r.json()["results"]
    assert [x.get("outcome") for x in results] == ["accepted"] * 3 + [None, "duplicate"]
    assert results[3]["error"]["code"] == "bad_domain"
    assert results[4]["id"] == results[0]["id"]
    assert http.post(f"{a.url}/v1/experiences/batch", json={"experiences": []}).status_code == 401
    status = http.get(f"{a.url}/v1/status").json()
    conforms(status, "Status")
    assert status["counts"]["active"] == 3


def test_query_get_and_errors_conform(nodes):
    a, _ = nodes
    answer = http.post(
        f"{a.url}/v1/query",
        json={"text": "geometry problem with intersecting segments"},
        timeout=60,
    ).json()
    conforms(answer, "Selection")
    assert answer["selected"][0]["domain"] == "math.geometry"
    got = http.get(f"{a.url}/v1/experiences/{answer['selected'][0]['id']}").json()
    conforms(got, "StoredRecord")
    assert got["peer"] == "local"
    conforms(http.get(f"{a.url}/v1/peers").json(), "Peers")
    for bad in (
        http.post(f"{a.url}/v1/query", json={"text": "x", "k": 0}),
        http.post(f"{a.url}/v1/query", content=b"{"),
        http.get(f"{a.url}/v1/experiences/{'ab' * 32}"),
    ):
        assert bad.status_code in (400, 404, 422)
        conforms(bad.json(), "Error")


def test_context_is_the_dso_injection_prompt(nodes):
    a, _ = nodes
    task = "Solve this geometry problem: where do the segments AB and CD intersect?"
    r = http.post(f"{a.url}/v1/context", json={"task": task, "k": 2}, timeout=60)
    conforms(r.json(), "Context")
    prompt = r.json()["prompt"]
    lines = prompt.splitlines()
    assert lines[0] == "# Learned Experiences"
    assert lines[3].startswith("1. When solving geometry problems")
    assert prompt.endswith(f"# Task\n{task}")
    assert 1 <= len(r.json()["experiences"]) <= 2
    # The CLI prints the same prompt; nothing relevant -> just the task, no empty heading.
    out = a.cli("context", task, "--k", "2").stdout
    assert out.startswith("# Learned Experiences") and task in out
    unrelated = "zzzz qqqq xxxx"
    r = http.post(f"{a.url}/v1/context", json={"task": unrelated}, timeout=60).json()
    assert r.pop("floor") >= r.pop("established_floor") >= 0.3  # the floors it used
    assert type(r.pop("considered")) is int  # as /v1/query answers it
    assert r == {"prompt": unrelated, "experiences": []}


def test_export_then_import_into_another_node_keeps_authorship(nodes, tmp_path):
    a, b = nodes
    dump = tmp_path / "a.jsonl"
    a.cli("export", "--out", str(dump))
    exported = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(exported) >= 3 and all(len(x["wire"]) > 1900 for x in exported)
    for line in exported:
        conforms(line, "ExportLine")

    # A hand-edited file: one line of broken JSON, one forged wire, the rest good.
    forged = dict(exported[0])
    forged["wire"] = forged["wire"][:-2] + ("00" if forged["wire"][-2:] != "00" else "01")
    lines = [json.dumps(x) for x in exported] + ["{not json", json.dumps(forged)]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join(lines) + "\n")
    out = b.cli("import", str(mixed), "--json", check=False)
    assert out.returncode == 1
    n = len(exported)
    assert f"mixed.jsonl:{n + 1}: " in out.stderr and "not JSON" in out.stderr
    assert f"mixed.jsonl:{n + 2}: bad_signature" in out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == {"accepted": n, "errors": 2}

    a_author = http.get(f"{a.url}/v1/status").json()["author"]
    copy = http.get(f"{b.url}/v1/experiences/{exported[0]['id']}").json()
    assert copy["author"] == a_author and copy["peer"] == "import"
    again = b.cli("import", str(dump))  # idempotent; for people, the counts in words
    assert again.stdout.splitlines()[-1] == f"{dump}: {n} duplicate"


def test_import_of_plain_lessons_signs_them_here(nodes, tmp_path):
    _, b = nodes
    path = tmp_path / "lessons.jsonl"
    path.write_text(
        json.dumps(
            {
                "text": "Read the first traceback frame before editing code",
                "domain": "software.debugging",
            }
        )
        + "\n\n"
        + json.dumps({"text": "", "domain": "software.debugging"})
        + "\n"
    )
    out = b.cli("import", str(path), "--json", check=False)
    assert out.returncode == 1 and "lessons.jsonl:3: bad_text" in out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == {"accepted": 1, "errors": 1}


def test_async_client(nodes):
    a, _ = nodes

    async def main():
        async with AsyncClient(a.url, a.token) as client:
            status = await client.status()
            found = await client.query("flaky unit tests", k=1)
            exported = [x async for x in client.export(domain="software")]
            return status, found, exported

    status, found, exported = anyio.run(main)
    assert status["api"] == a.url
    assert found["selected"][0]["domain"] == "software.testing"
    assert exported and all(x["domain"].startswith("software") for x in exported)


def test_mcp_over_stdio_with_a_real_mcp_client(nodes):
    from mcp import Client, StdioServerParameters

    a, _ = nodes
    params = StdioServerParameters(command=ZOONODE, args=["mcp", "--data-dir", str(a.data)])

    async def main():
        async with Client(params) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            shared = await client.call_tool(
                "share_experience",
                {
                    "text": "Pin dependency versions in CI so that a new release cannot break "
                    "an unchanged commit",
                    "domain": "software.ci",
                    "confidence": 0.8,
                },
            )
            found = await client.call_tool(
                "search_experiences", {"query": "CI broke without any code change", "k": 3}
            )
            bad = await client.call_tool("get_experience", {"id": "nope"})
            prompt = await client.get_prompt(
                "inject_experiences", {"task": "CI broke without any code change"}
            )
            return tools, shared, found, bad, prompt

    tools, shared, found, bad, prompt = anyio.run(main)
    assert {"search_experiences", "share_experience", "get_experience"} <= tools
    assert not shared.is_error
    record_id = json.loads(shared.content[0].text)["id"]
    hits = json.loads(found.content[0].text)["experiences"]
    assert hits[0]["id"] == record_id
    assert bad.is_error and "bad_id" in bad.content[0].text
    text = prompt.messages[0].content.text
    assert text.startswith("# Learned Experiences") and "Pin dependency versions" in text


def test_mcp_over_streamable_http_on_the_node(nodes):
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    a, _ = nodes
    assert http.post(f"{a.url}/mcp", json={}).status_code == 401

    async def main():
        async with (
            httpx2.AsyncClient(headers=a.auth) as http,
            Client(streamable_http_client(f"{a.url}/mcp", http_client=http)) as client,
        ):
            found = await client.call_tool("search_experiences", {"query": "inequality", "k": 1})
            return json.loads(found.content[0].text)["experiences"]

    hits = anyio.run(main)
    assert hits and hits[0]["domain"] == "math.algebra"


def test_agents_report_outcomes_over_http_cli_and_mcp(nodes):
    """A verdict on another author's lesson, by HTTP, CLI and MCP, with the same codes."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    a, b = nodes
    lesson = {
        "text": "Let bread dough rise until it has doubled in size, one to two hours when warm",
        "domain": "cooking.bread",
        "confidence": 0.7,
    }
    theirs = http.post(f"{b.url}/v1/experiences", json=lesson, headers=b.auth).json()["id"]
    line = next(
        json.loads(x)
        for x in http.get(f"{b.url}/v1/export").text.splitlines()
        if json.loads(x)["id"] == theirs
    )
    imported = http.post(f"{a.url}/v1/records", json={"wires": [line["wire"]]}, headers=a.auth)
    assert imported.json()["results"][0]["id"] == theirs
    url = f"{a.url}/v1/experiences/{theirs}/feedback"

    assert http.post(url, json={"verdict": "helpful"}).status_code == 401
    first = http.post(url, json={"verdict": "helpful", "task": "bake bread"}, headers=a.auth)
    assert first.status_code == 201, first.text
    conforms(first.json(), "FeedbackOut")
    assert first.json()["outcome"] == "accepted"
    same = http.post(url, json={"verdict": "helpful", "task": "bake bread"}, headers=a.auth)
    assert same.status_code == 200 and same.json()["outcome"] == "unchanged"
    assert same.json()["id"] == first.json()["id"]  # no new record, nothing gossiped
    conforms(same.json(), "FeedbackOut")
    bad = http.post(url, json={"verdict": "great"}, headers=a.auth)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "out_of_range"
    typo = http.post(url, json={"verdict": "harmful", "taks": "bake"}, headers=a.auth)
    assert typo.status_code == 422 and typo.json()["error"]["code"] == "unknown_field"
    assert "taks" in typo.json()["error"]["message"]
    nan = http.post(url, content=b'{"verdict": "harmful", "x": NaN}', headers=a.auth)
    assert nan.status_code == 422 and nan.json()["error"]["code"] == "unknown_field"
    slash = http.post(url + "/", json={"verdict": "harmful"}, headers=a.auth)
    assert slash.status_code == 404 and slash.json()["error"]["code"] == "not_found"
    envelope = http.post(f"{a.url}/v1/records", json={"wires": [], "wire": []}, headers=a.auth)
    assert envelope.status_code == 422 and envelope.json()["error"]["code"] == "unknown_field"
    assert http.get(f"{a.url}/v1/status/").json()["error"]["code"] == "not_found"
    missing = http.post(
        f"{a.url}/v1/experiences/{'0' * 64}/feedback", json={"verdict": "helpful"}, headers=a.auth
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    own = http.post(f"{a.url}/v1/experiences", json=LESSONS[0], headers=a.auth).json()["id"]
    refused = http.post(
        f"{a.url}/v1/experiences/{own}/feedback", json={"verdict": "helpful"}, headers=a.auth
    )
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "own_lesson"

    out = a.cli("feedback", theirs, "--harmful", "--json")
    assert json.loads(out.stdout) | {"id": None} == {
        "id": None, "target": theirs, "verdict": "harmful", "outcome": "replaced",
        "previous": "helpful",
    }  # fmt: skip
    again = a.cli("feedback", theirs, "--harmful")  # for people: outcome, verdict, target
    first_line, id_line = again.stdout.splitlines()
    # The same verdict again: nothing new signed or sent, the standing verdict's id.
    assert first_line == f"unchanged harmful on {theirs}"
    assert id_line == f"verdict {json.loads(out.stdout)['id']}"
    retask = a.cli("feedback", theirs, "--harmful", "--task", "other")  # a new task: new record
    assert retask.stdout.startswith(f"replaced harmful on {theirs} (was harmful)")
    for flags, code in ((["--harmful", "--helpful"], "bad_request"), ([], "missing_field")):
        usage = a.cli("feedback", theirs, *flags, check=False)
        assert usage.returncode == 2 and usage.stderr.startswith(f"error: {code}: ")
        assert "exactly one" in usage.stderr

    found = http.post(f"{a.url}/v1/query", json={"text": "bread dough rise", "k": 3}).json()
    [item] = [s for s in found["selected"] if s["id"] == theirs] or [None]
    if item is not None:  # a's own harmful verdict may keep it out; if shown, it is explained
        assert item["trust"]["harmful"] == 1
    status = http.get(f"{a.url}/v1/status").json()
    assert status["trust"]["votes"] >= 0 and "recomputed_at" in status["trust"]
    prompt = http.post(f"{a.url}/v1/context", json={"task": "solve a geometry problem"}).json()
    assert f"id {prompt['experiences'][0]}" in prompt["prompt"]

    async def main():
        async with (
            httpx2.AsyncClient(headers=a.auth) as http,
            Client(streamable_http_client(f"{a.url}/mcp", http_client=http)) as client,
        ):
            ok = await client.call_tool("rate_experience", {"id": theirs, "verdict": "withdrawn"})
            own_rated = await client.call_tool("rate_experience", {"id": own, "verdict": "helpful"})
            return ok, own_rated

    ok, own_rated = anyio.run(main)
    assert not ok.is_error and json.loads(ok.content[0].text)["previous"] == "harmful"
    assert own_rated.is_error and "own_lesson" in own_rated.content[0].text
    metrics = http.get(f"{a.url}/metrics").text
    assert 'zoonode_events_total{kind="feedback",reason="replaced"}' in metrics
    for gauge in ("trust_votes", "trust_voters", "trust_authors", "trust_recompute_seconds",
                  "trust_recomputed_timestamp_seconds", "feedback_untrusted_max"):  # fmt: skip
        assert re.search(rf"^zoonode_{gauge} \d", metrics, re.M), gauge
    assert re.search(r"^zoonode_feedback_stored [1-9]", metrics, re.M)
    human = a.cli("status").stdout
    assert re.search(r"recomputed \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", human), human
    assert re.search(r"verdicts [1-9]\d* stored", human), human
    assert "# TYPE zoonode_gossip_feedback_records_total counter" in metrics  # peers' verdicts
