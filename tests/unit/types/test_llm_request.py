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
