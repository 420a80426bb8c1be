"""The HTTP API fuzzed from its own contract (issue #19): schemathesis reads openapi.json and
generates requests, valid (positive) and invalid (negative), for every operation of a real
`zoonode start` process. Required: no 5xx, and every answer valid against the schema of its
status; an undocumented status or content type fails too. EXAMPLES per operation and mode,
fixed seeds (derandomize): the same requests every run, so a failure reproduces."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from zoonode.api import openapi_document

EXAMPLES = 25  # per operation and generation mode
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def contract() -> dict:
    document = openapi_document()
    # /mcp speaks MCP (JSON-RPC), not this contract; tests/test_fuzz_mcp.py fuzzes it.
    document["paths"].pop("/mcp")
    return document


CASES = [
    (f"{method.upper()} {path}", mode)
    for path, ops in contract()["paths"].items()
    for method, op in ops.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    # An operation that takes nothing has no invalid request to generate.
    if mode is GenerationMode.POSITIVE or "requestBody" in op or "parameters" in op
]


@pytest.fixture(scope="module")
def fuzzed_node(shared_node):
    """The session's shared node (conftest) with a lesson to find."""
    node = shared_node
    lesson = {"text": "Check the units of measured values before adding them", "domain": "a"}
    assert httpx.post(f"{node.url}/v1/experiences", json=lesson, headers=node.auth).is_success
    return node


@pytest.mark.parametrize(("label", "mode"), CASES)
def test_api_contract(fuzzed_node, label, mode):
    operation = schemathesis.openapi.from_dict(contract()).find_operation_by_label(label)
    sent = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        case.call_and_validate(
            base_url=fuzzed_node.url, headers=fuzzed_node.auth, timeout=60, checks=CHECKS
        )
        sent.append(case)

    run()
    assert sent  # at least one request reached the node
    assert httpx.get(f"{fuzzed_node.url}/v1/status").status_code == 200  # and it is still up
