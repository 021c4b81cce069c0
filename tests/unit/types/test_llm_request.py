"""LLM request parsing (issue 22): the response format, penalties and developer role are parsed,
hashed and sent back as they were read; a value we do not implement is refused naming it; a plain
request hashes as it did before these fields existed."""

from __future__ import annotations

from typing import Any

import pytest

from haca.client.results import LlmOptions
from haca.types.llm import LlmRequestError, parse_request

BASE: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
SCHEMA = {"type": "object", "properties": {"x": {"type": "number", "minimum": 0.5}}, "required": ["x"]}
FORMAT = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}}
JS = "response_format.json_schema"


def test_a_plain_request_hashes_as_before_and_each_new_field_changes_the_hash() -> None:
    plain = parse_request(BASE, "chat")
    # the hash of this exact request before issue 22 (nothing new is added to it when unset)
    assert plain.hash("sha256:" + "0" * 64) == parse_request({**BASE, "frequency_penalty": 0}, "chat").hash(
        "sha256:" + "0" * 64
    )
    hashes = {
        parse_request({**BASE, **extra}, "chat").hash("sha256:" + "0" * 64)
        for extra in (
            {},
            {"frequency_penalty": 0.5},
            {"presence_penalty": 0.5},
            {"response_format": {"type": "json_object"}},
            {"response_format": FORMAT},
            {"messages": [{"role": "developer", "content": "hi"}]},
            {"messages": [{"role": "system", "content": "hi"}]},
        )
    }
    assert len(hashes) == 7


def test_what_the_sdk_sends_is_read_back_as_the_same_request() -> None:
    options = LlmOptions(
        max_tokens=32, frequency_penalty=0.25, presence_penalty=-1.0, response_format=FORMAT, logprobs=2
    )
    request = options.request("chat", "m", [("developer", "be brief"), ("user", "hi")], False)
    again = parse_request(request.to_openai(), "chat")
    assert again == request and again.hash("sha256:" + "1" * 64) == request.hash("sha256:" + "1" * 64)
    assert request.response_format == FORMAT and request.params()["frequency_penalty"] == 0.25
    assert request.logprobs == 2 and request.to_openai()["top_logprobs"] == 2


@pytest.mark.parametrize("extra", [{"logprobs": False}, {"tools": []}, {"store": False}, {"logit_bias": {}}])
def test_a_value_that_changes_nothing_is_accepted(extra: dict[str, Any]) -> None:
    assert parse_request({**BASE, **extra}, "chat") == parse_request(BASE, "chat")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_logprobs": 3}, "top_logprobs"),  # without logprobs: true
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": 2}, "logprobs"),  # chat's logprobs is a boolean
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"store": True}, "store"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema.name"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a b"}}},
            "response_format.json_schema.name",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a"}}},
            "response_format.json_schema.schema",
        ),
        (
            {"response_format": {**FORMAT, "json_schema": {**FORMAT["json_schema"], "x": 1}}},
            "response_format.json_schema.x",
        ),
        ({"response_format": {"type": "json_object", "schema": {}}}, "response_format.schema"),
        ({"response_format": "json"}, "response_format"),
    ],
)
def test_what_we_do_not_implement_is_refused_naming_the_parameter(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(LlmRequestError) as refused:
        parse_request({**BASE, **extra}, "chat")
    assert refused.value.param == param


def test_a_text_response_format_is_free_text() -> None:
    assert parse_request({**BASE, "response_format": {"type": "text"}}, "chat") == parse_request(BASE, "chat")


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        value = {"type": "object", "properties": {"a": value}}
    return value


def _nested_list(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "extra",
    [
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": _nested(500)}}]},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": _nested(500)}}},
        {"logit_bias": _nested(500)},
        {"max_tokens": _nested_list(100)},
    ],
    ids=["tool-parameters", "json-schema", "neutral-parameter", "max-tokens"],
)
def test_a_body_nested_too_deep_is_refused_before_it_is_read(extra: dict[str, Any]) -> None:
    """Found while writing fuzz/fuzz_openai.py: a value nested ~1000 deep (orjson takes 1024)
    raised RecursionError out of parse_request (json.dumps of a schema, repr of a refused value),
    a 500 instead of a 400. Any body nested deeper than MAX_DEPTH is refused first, whatever the route."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(LlmRequestError, match="deeper than 64 levels"):
        parse_request(body, "chat")
    with pytest.raises(LlmRequestError, match="deeper than 64 levels"):
        parse_request({"model": "m", "input": "hi", "metadata": extra}, "response")
    parse_request({"model": "m", "messages": [{"role": "user", "content": "hi"}], "metadata": _nested(20)}, "chat")


def test_a_tool_schema_the_grammar_converter_cannot_read_is_a_grammar_error() -> None:
    """Found by fuzz/fuzz_openai.py: a property given as a string ({"properties": {"city": "x"}})
    made llama-cpp-python's converter raise AttributeError out of grammar_for (a 500 on the node)."""
    from haca.runtime.llm import GrammarError, grammar_for

    parameters = {"type": "object", "properties": {"": "smollm2", "city": {"type": "string"}}}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": parameters}}]
    request = parse_request({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": tools}, "chat")
    with pytest.raises(GrammarError, match="cannot be turned into a grammar"):
        grammar_for(request)
    schema = {"name": "n", "schema": parameters}
    request = parse_request(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": schema},
        },
        "chat",
    )
    with pytest.raises(GrammarError, match="cannot be turned into a grammar"):
        grammar_for(request)


@pytest.mark.parametrize(
    "choice", [{"type": "function", "function": "get_weather"}, {"type": "function", "function": []}]
)
def test_a_named_tool_choice_whose_function_is_not_an_object_is_refused(choice: dict[str, Any]) -> None:
    """Found by fuzz/fuzz_openai.py: {"function": "get_weather"} raised AttributeError ('str' object
    has no attribute 'get') out of parse_request, a 500 instead of a 400 naming tool_choice."""
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": tools, "tool_choice": choice}
    with pytest.raises(LlmRequestError, match="named tool_choice") as refused:
        parse_request(body, "chat")
    assert refused.value.param == "tool_choice"
