"""The one parsing and validation layer (``zoonode.inputs``): pure functions, property-tested
with hypothesis: whatever bytes or values arrive, the only failure is an InputError with a
documented code."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zoonode import inputs
from zoonode.api import openapi_document
from zoonode.inputs import InputError, parse_json

SPACE = bytes(16)
DOCUMENTED = set(openapi_document()["x-error-codes"])


def code_of(fn, *args) -> str:
    with pytest.raises(InputError) as caught:
        fn(*args)
    assert caught.value.code in DOCUMENTED
    return caught.value.code


def test_nesting_is_refused_past_32_levels_and_never_recurses():
    nested = parse_json("[" * 32 + "]" * 32)
    for _ in range(31):
        nested = nested[0]
    assert nested == []
    for depth in (33, 999, 30_000, 500_000):
        assert code_of(parse_json, "[" * depth + "]" * depth) == "bad_json"
    assert code_of(parse_json, '{"a": ' * 40 + "1" + "}" * 40) == "bad_json"


def test_numbers_keep_their_value_whatever_the_spelling():
    assert parse_json("1" + "0" * 400) == 10**400  # exact: the field reports out_of_range
    huge = parse_json("9" * 5000)  # past int()'s 4300-digit limit: same magnitude, an int
    assert isinstance(huge, int) and huge > 10**4900
    assert parse_json("-" + "9" * 5000) < -(10**4900)
    assert parse_json("1e309") == math.inf
    assert math.isnan(parse_json("NaN"))


def test_text_that_is_not_utf8_is_bad_text_with_its_position():
    with pytest.raises(InputError) as caught:
        parse_json(b'{"text": "ok \xff"}')
    assert (caught.value.status, caught.value.code) == (422, "bad_text")
    assert "byte 13" in caught.value.message
    assert parse_json('"\\ud800"') == "\ud800"  # a lone surrogate decodes; fields refuse it


@pytest.mark.parametrize(
    ("body", "code", "where"),
    [
        ({}, "missing_field", "text"),
        ({"text": None}, "missing_field", "text"),
        ({"text": 5}, "wrong_type", "text"),
        ({"text": "   "}, "bad_text", "text"),
        ({"text": "a\x00b"}, "bad_text", "text"),
        ({"text": "\ud800"}, "bad_text", "text"),
        ({"text": "x" * 20_000}, "oversize", "text"),
        ({"text": "q", "k": 0}, "out_of_range", "k"),
        ({"text": "q", "k": 10**400}, "out_of_range", "k"),
        ({"text": "q", "k": True}, "wrong_type", "k"),
        ({"text": "q", "k": 2.0}, "wrong_type", "k"),
        ({"text": "q", "min_confidence": math.nan}, "non_finite", "min_confidence"),
        ({"text": "q", "min_confidence": -(10**400)}, "out_of_range", "min_confidence"),
        ({"text": "q", "min_confidence": "0.5"}, "wrong_type", "min_confidence"),
        ({"text": "q", "domain": "Bad!"}, "bad_domain", "domain"),
        ({"text": "q", "federated": 1}, "wrong_type", "federated"),
    ],
)
def test_query_fields_map_to_documented_codes(body, code, where):
    with pytest.raises(InputError) as caught:
        inputs.validate(inputs.QueryIn, body)
    assert caught.value.code == code
    assert where in caught.value.message
    assert "0000000000" not in caught.value.message  # never a 400-digit number in a message


@pytest.mark.parametrize(
    ("item", "code"),
    [
        ({"text": "t", "domain": "a", "confidence": 10**400}, "out_of_range"),
        ({"text": "t", "domain": "a", "confidence": math.inf}, "non_finite"),
        ({"text": "t", "domain": "a", "confidence": 2}, "out_of_range"),
        (
            {"text": "t", "domain": "a", "examples": [{"input": "i", "output": "o"}]},
            "missing_field",
        ),
        ({"text": "t", "domain": "a", "examples": "no"}, "wrong_type"),
        ({"text": "t", "domain": "a", "examples": [{}] * 9}, "missing_field"),
        (
            {
                "text": "t",
                "domain": "a",
                "examples": [{"input": "", "output": "", "correct": True}] * 9,
            },
            "out_of_range",
        ),
        (
            {
                "text": "t",
                "domain": "a",
                "examples": [{"input": "i" * 1000, "output": "o" * 1000, "correct": True}] * 8,
            },
            "oversize",
        ),
        ({"text": "t", "domain": "a", "source_model": "\ud800"}, "bad_text"),
        ([1], "wrong_type"),
    ],
)
def test_lesson_items_are_checked_like_signing_checks_them(item, code):
    assert code_of(inputs.lesson, item, SPACE) == code


@pytest.mark.parametrize(
    ("verdict", "error"),
    [
        ("great", "out_of_range: verdict must be one of 'helpful', 'harmful', 'withdrawn', "
         "got 'great'"),
        ("Helpful", "out_of_range: verdict must be one of 'helpful', 'harmful', 'withdrawn', "
         "got 'Helpful'"),
        (1, "wrong_type: verdict must be a string, got the number 1"),
        (None, "missing_field: verdict is required"),
    ],
)  # fmt: skip
def test_a_verdict_outside_its_choices_is_out_of_range_and_lists_them(verdict, error):
    """As the wire's verdict (-1, 0, 1) and op: a value of the right type outside the set is
    out_of_range, the message listing the set (it was wrong_type, in pydantic's words)."""
    with pytest.raises(InputError) as caught:
        inputs.validate(inputs.FeedbackIn, {"verdict": verdict})
    assert str(caught.value) == error


def test_k_from_prompt_text():
    assert inputs.k_argument("7") == 7
    assert inputs.k_argument(" 7 ") == 7 and inputs.k_argument("+7") == 7
    for bad, code in (("abc", "wrong_type"), ("0", "out_of_range"), ("9" * 5000, "wrong_type")):
        assert code_of(inputs.k_argument, bad) == code
    # found in review: int() took these as 5, 10 and 3
    for bad in ("\u0665", "1_0", "\uff13", "5.0", "--5", ""):
        assert code_of(inputs.k_argument, bad) == "wrong_type", bad
    assert code_of(inputs.k_argument, "1" + "0" * 400) == "out_of_range"


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**500), max_value=10**500)
    | st.floats()
    | st.text(alphabet=st.characters(codec=None)),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["text", "task", "k", "domain", "min_confidence", "confidence", "x"]),
            children,
            max_size=5,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_parse_or_fail_with_a_documented_code(data):
    try:
        parse_json(data)
    except InputError as exc:
        assert exc.code in DOCUMENTED


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON_VALUES)
def test_any_decoded_value_validates_or_fails_with_a_documented_code(value):
    for model in (inputs.QueryIn, inputs.ContextIn):
        try:
            inputs.validate(model, value)
        except InputError as exc:
            assert exc.code in DOCUMENTED and exc.message
    try:
        inputs.lesson(value, SPACE)
    except InputError as exc:
        assert exc.code in DOCUMENTED and exc.message


def test_every_code_the_code_raises_is_documented():
    """Codes written in the source (InputError/ApiError/_error calls and the code maps) and
    every protocol and validation reason an import item can carry are in x-error-codes."""
    from zoonode.net.validation import Reason
    from zoonode.protocol import ErrorCode

    root = Path(inputs.__file__).parent
    found = set()
    for name in ("api.py", "inputs.py", "mcpserver.py", "transfer.py"):
        text = (root / name).read_text()
        found |= set(re.findall(r"(?:InputError|ApiError|_error)\(\s*\d+,\s*\"(\w+)\"", text))
        found |= set(re.findall(r"\((?:\d+), \"(\w+)\",", text))
    found |= {"too_large", "not_found", "method_not_allowed", "storage_full"}
    found |= {c.value for c in ErrorCode} | {r.value for r in Reason if r.value != "ok"}
    assert found - DOCUMENTED == set()
    statuses = {
        code: entry["status"] for code, entry in openapi_document()["x-error-codes"].items()
    }
    assert statuses["storage_full"] == 507 and statuses["bad_text"] == 422
