"""A fresh-clone review of what operators and agents touch, against a real `zoonode start`
process: /v1/context's options through the client and the CLI, unknown MCP arguments, the
CLI's words for the selection's reason codes, and slow clients on the HTTP server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import anyio
import httpx
import pytest

from zoonode import humanview, inputs
from zoonode.client import Client, ClientError

from conftest import ZOONODE
from nodeproc import running_node

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
            "error: 422 out_of_range: min_confidence must be at most 1.0, got 1.5"
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


# -- 3. the CLI's human view words the reason codes; --json keeps them -----------------------
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
