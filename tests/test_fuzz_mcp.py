"""`zoonode mcp` over stdio against bad lines (issue #19, case 4) and a hypothesis fuzz of
malformed and mutated JSON-RPC lines: every request with an id gets an answer or a JSON-RPC
error with that id, every line that is not a message gets a JSON-RPC error, and the server
keeps serving. A real MCP server process, talking to a real `zoonode start` process."""

from __future__ import annotations

import copy
import json
import queue
import subprocess
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zoonode.inputs import InputError, invalid_unicode_at, parse_json

from conftest import ZOONODE

FUZZ_EXAMPLES = 150
PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS = -32700, -32600, -32602


class McpProcess:
    """`zoonode mcp` with its stdout read by a thread into a queue of decoded answers."""

    def __init__(self, data) -> None:
        self.proc = subprocess.Popen(
            [ZOONODE, "mcp", "--data-dir", str(data)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.answers: queue.Queue = queue.Queue()
        self.raw: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.next_id = 1000

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.raw.append(line)
            self.answers.put(json.loads(line))  # every answer line must be JSON

    def send(self, line: bytes | str | dict) -> None:
        if isinstance(line, dict):
            line = json.dumps(line)
        if isinstance(line, str):
            line = line.encode("utf-8", "surrogatepass")
        self.proc.stdin.write(line.replace(b"\n", b" ") + b"\n")
        self.proc.stdin.flush()

    def wait(self, want, timeout: float = 60.0) -> list[dict]:
        """Answers until ``want(answers)`` holds."""
        got: list[dict] = []
        deadline = time.monotonic() + timeout
        while not want(got):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise AssertionError(f"no answer in time; got {got}; exit {self.proc.poll()}")
            try:
                got.append(self.answers.get(timeout=min(left, 1.0)))
            except queue.Empty:
                continue
        return got

    def request(self, method: str, params: dict | None = None) -> dict:
        self.next_id += 1
        rid = self.next_id
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}})
        return by_id(self.wait(lambda got: by_id(got, rid) is not None), rid)

    def alive(self) -> None:
        """The server still serves: a tools/list is answered."""
        tools = self.request("tools/list")["result"]["tools"]
        assert {"search_experiences", "share_experience", "get_experience"} <= {
            t["name"] for t in tools
        }

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def by_id(answers: list[dict], rid) -> dict | None:
    return next((a for a in answers if a.get("id") == rid and "id" in a), None)


INITIALIZE = {
    "protocolVersion": "2025-06-18",
    "capabilities": {},
    "clientInfo": {"name": "fuzz", "version": "1"},
}


@pytest.fixture(scope="module")
def mcp(shared_node):
    """An MCP stdio server process on the session's shared node (conftest)."""
    server = McpProcess(shared_node.data)
    init = server.request("initialize", INITIALIZE)
    assert "result" in init, init
    server.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    yield server
    server.close()
    assert server.proc.returncode == 0, server.proc.stderr.read().decode()


def test_calls_still_running_at_end_of_input_are_answered_before_exit(shared_node):
    """A host that pipes its lines and closes stdin at once: the calls still running at end
    of input finish and are answered (the SDK answered them -32000 "Connection closed"); a
    call the host cancelled is not waited for."""
    call = {"name": "search_experiences", "arguments": {"query": "sql injection", "k": 2}}
    lines = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INITIALIZE},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call},
        {"jsonrpc": "2.0", "id": "three", "method": "prompts/get",
         "params": {"name": "inject_experiences", "arguments": {"task": "avoid sql injection"}}},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": call},
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 4}},
    ]  # fmt: skip
    out = subprocess.run(
        [ZOONODE, "mcp", "--data-dir", str(shared_node.data)],
        input="".join(json.dumps(line) + "\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    answers = [json.loads(line) for line in out.stdout.splitlines()]
    assert "result" in by_id(answers, 1)
    search = by_id(answers, 2)
    assert "error" not in search and search["result"]["isError"] is False, search
    assert "experiences" in json.loads(search["result"]["content"][0]["text"])
    prompt = by_id(answers, "three")
    assert "error" not in prompt, prompt
    assert prompt["result"]["messages"][0]["content"]["text"].endswith("avoid sql injection")
    assert all(a.get("error", {}).get("code") != -32000 for a in answers), answers


def parse_error(mcp: McpProcess, line: bytes) -> dict:
    mcp.send(line)
    [answer] = mcp.wait(lambda got: len(got) == 1)
    assert answer["id"] is None and answer["error"]["code"] == PARSE_ERROR, answer
    return answer


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"this is not json", "bad_json"),
        (b'{"jsonrpc": "2.0", "id": 7, "method": "tools/ca', "bad_json"),  # truncated
        (b'{"jsonrpc": "2.0", "id": 8, "params": ' + b"[" * 3000 + b"]" * 3000 + b"}", "bad_json"),
        (b'{"jsonrpc": "2.0", "id": 9, "method": "ping", "x": "caf\xe9"}', "bad_text"),
    ],
)
def test_lines_that_are_not_json_get_a_parse_error(mcp, line, code):
    answer = parse_error(mcp, line)
    assert answer["error"]["data"]["code"] == code
    mcp.alive()


def test_a_lone_surrogate_in_an_argument_is_invalid_params_with_the_id(mcp):
    line = (
        '{"jsonrpc": "2.0", "id": 41, "method": "tools/call", "params": {"name": '
        '"search_experiences", "arguments": {"query": "sql \\ud800"}}}'
    )
    mcp.send(line)
    answer = by_id(mcp.wait(lambda got: by_id(got, 41) is not None), 41)
    assert answer["error"]["code"] == INVALID_PARAMS
    assert answer["error"]["data"]["code"] == "bad_text"
    assert "params.arguments.query" in answer["error"]["message"]
    mcp.alive()


@pytest.mark.parametrize("rid", ['"\\ud800"', '"ok \\udfff"', '"\\udc00\\ud800"'])
def test_an_id_that_is_not_valid_unicode_is_answered_with_a_null_id(mcp, rid):
    """Found in review: the error answer carried the id back, could not be serialised, and
    the server exited with no answer to anyone."""
    mcp.send('{"jsonrpc": "2.0", "id": ' + rid + ', "method": "ping"}')
    [answer] = mcp.wait(lambda got: len(got) == 1)
    assert answer["id"] is None and answer["error"]["code"] == INVALID_PARAMS, answer
    assert answer["error"]["data"]["code"] == "bad_text"
    mcp.alive()


def test_not_a_jsonrpc_message_is_invalid_request(mcp):
    for line, rid in (('{"id": 51, "params": 5}', 51), ("[1, 2]", None), ('"text"', None)):
        mcp.send(line)
        answer = mcp.wait(lambda got: len(got) == 1)[0]
        assert answer["id"] == rid and answer["error"]["code"] == INVALID_REQUEST, answer
    mcp.alive()


@pytest.mark.parametrize("k", ["abc", "0", "51", "1e309", ""])
def test_a_prompt_argument_of_the_wrong_type_is_invalid_params(mcp, k):
    answer = mcp.request(
        "prompts/get", {"name": "inject_experiences", "arguments": {"task": "t", "k": k}}
    )
    assert answer["error"]["code"] == INVALID_PARAMS, answer
    assert answer["error"]["data"]["code"] in ("wrong_type", "out_of_range")
    mcp.alive()


@pytest.mark.parametrize(
    ("arguments", "code"),
    [
        ({"query": "sql", "k": "abc"}, "wrong_type"),
        ({"query": "sql", "k": 0}, "out_of_range"),
        ({"query": "sql", "min_confidence": 10**30}, "out_of_range"),
        ({"query": "sql", "domain": "Bad!"}, "bad_domain"),
        ({"query": 5}, "wrong_type"),
    ],
)
def test_tool_arguments_of_the_wrong_type_answer_an_error_result_with_the_code(
    mcp, arguments, code
):
    """MCP asks for argument errors as an isError result the model can read and correct;
    its text carries the API's code."""
    answer = mcp.request("tools/call", {"name": "search_experiences", "arguments": arguments})
    result = answer["result"]
    assert result["isError"] is True
    assert code in result["content"][0]["text"], result
    mcp.alive()


# -- the fuzz --------------------------------------------------------------------------------
TEMPLATES = [
    {"method": "tools/list", "params": {}},
    {"method": "ping"},
    {"method": "prompts/list", "params": {}},
    {
        "method": "tools/call",
        "params": {"name": "search_experiences", "arguments": {"query": "sql injection", "k": 3}},
    },
    {
        "method": "tools/call",
        "params": {"name": "get_experience", "arguments": {"id": "ab" * 32}},
    },
    {
        "method": "tools/call",
        "params": {
            "name": "share_experience",
            "arguments": {"text": "Fuzzed lesson about units", "domain": "fuzz.mcp"},
        },
    },
    {
        "method": "prompts/get",
        "params": {"name": "inject_experiences", "arguments": {"task": "a task", "k": "2"}},
    },
]
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["\ud800", "Bad!", "", "x" * 300]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def fuzzed_lines(draw) -> bytes:
    template = copy.deepcopy(draw(st.sampled_from(TEMPLATES)))  # mutations must not leak
    message = {"jsonrpc": "2.0", "id": draw(st.integers(1, 10**6)), **template}
    # Structural mutations: a field replaced, dropped or added, params nested deep.
    arguments = message.get("params", {}).get("arguments")
    action = draw(st.sampled_from(["keep", "argument", "params", "drop", "id", "deep", "add"]))
    if action == "argument" and arguments is not None:
        arguments[draw(st.sampled_from(sorted(arguments)))] = draw(VALUES)
    elif action == "params":
        message["params"] = draw(VALUES)
    elif action == "drop":
        message.pop(draw(st.sampled_from(sorted(message))))
    elif action == "id":
        message["id"] = draw(VALUES)
    elif action == "deep":
        depth = draw(st.integers(20, 200))
        message["params"] = json.loads("[" * depth + "]" * depth)
    elif action == "add":
        message[draw(st.text(max_size=8))] = draw(VALUES)
    line = json.dumps(message, allow_nan=True).encode("utf-8", "surrogatepass")
    # Byte mutations: truncation, flips, insertions.
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["truncate", "flip", "insert"]))
        at = draw(st.integers(0, max(0, len(line) - 1)))
        if kind == "truncate":
            line = line[:at]
        elif kind == "flip" and line:
            line = line[:at] + bytes([line[at] ^ draw(st.integers(1, 255))]) + line[at + 1 :]
        else:
            line = line[:at] + draw(st.binary(min_size=1, max_size=4)) + line[at:]
    return line.replace(b"\n", b" ").replace(b"\r", b" ")


def expected(line: bytes):
    """What must come back for ``line``: ("id", id) an answer with that id, ("null", None) an
    error with id null, or ("none", None) nothing (a notification)."""
    if not line.strip():
        return ("none", None)
    try:
        value = parse_json(line)
    except InputError:
        return ("null", None)
    if not isinstance(value, dict):
        return ("null", None)
    rid = value.get("id")
    if rid is None:
        # A notification is a JSON-RPC 2.0 message; anything else is an invalid request.
        notification = value.get("jsonrpc") == "2.0" and isinstance(value.get("method"), str)
        return ("none", None) if notification else ("null", None)
    if (
        isinstance(rid, bool)
        or not isinstance(rid, int | str)
        or (isinstance(rid, int) and abs(rid) >= 2**53)
        or (isinstance(rid, str) and invalid_unicode_at(rid) is not None)
    ):
        return ("null", None)
    return ("id", rid)


def test_fuzzed_lines_always_get_an_answer_and_the_server_lives(mcp):
    seen = {"id": 0, "null": 0, "none": 0}

    @given(fuzzed_lines())
    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def one(line):
        kind, rid = expected(line)
        seen[kind] += 1
        mcp.send(line)
        mcp.next_id += 1
        ping = mcp.next_id  # a ping after each line: its answer bounds the wait
        mcp.send({"jsonrpc": "2.0", "id": ping, "method": "ping"})

        def done(got):
            if by_id(got, ping) is None:
                return False
            if kind == "id":
                return by_id(got, rid) is not None
            if kind == "null":
                return any(a.get("id") is None and "error" in a for a in got)
            return True

        got = mcp.wait(done, timeout=60)
        for answer in got:
            assert ("result" in answer) != ("error" in answer), answer
        if kind == "none":  # a notification: nothing but the ping's answer
            assert [a.get("id") for a in got] == [ping], got

    one()
    print("MCP fuzz lines by expected answer:", seen)
    assert min(seen.values()) > 0, seen  # every kind of line was tried
    mcp.alive()
