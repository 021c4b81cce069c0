"""Issue 22: tool calling on one node (SmolLM2-135M through llama.cpp) with the unmodified official
`openai` client. A call is generated under a grammar from the function's schema, so its arguments
always parse; it is answered as `tool_calls` (streamed as a tool_calls delta), and the receipt
commits to the tools in the request and to the generated text the calls derive from."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from haca.types.llm import parse_request, text_hash
from haca.types.tools import tool_calls_of
from tests.unit.node.test_openai_routes import MODEL_ID, Node, bearer, module_node, openai_client, post, stored_receipt

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET", "PST"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    yield from module_node(tmp_path_factory, "tools")


@pytest.fixture(scope="module")
def client(node: Node) -> openai.OpenAI:
    return openai_client(node)


def chat(**extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    return {"model": "smollm2", "messages": messages, "max_tokens": 48, "temperature": 0, **extra}


def assert_receipt_covers_the_calls(node: Node, haca: dict[str, Any], body: dict[str, Any], calls: list[Any]) -> None:
    request = parse_request(body, "chat")
    receipt = stored_receipt(node, haca["receipt"]["id"]).receipt
    assert receipt.input_hash == request.hash(MODEL_ID)  # the tools and tool_choice included
    assert receipt.output_hash == text_hash(haca["output_text"])
    derived = tool_calls_of(haca["output_text"], request.hash(MODEL_ID), request.callable_tools)
    assert [c.to_json() for c in derived] == calls


def test_a_required_tool_call_is_answered_as_tool_calls_whose_arguments_parse(client, node: Node):
    body = chat(tools=[WEATHER, TIME], tool_choice="required")
    answer = client.chat.completions.create(**body)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name in ("get_weather", "get_time") and call.id.startswith("call_")
    assert isinstance(json.loads(call.function.arguments), dict)
    assert_receipt_covers_the_calls(node, answer.model_extra["haca"], body, [call.model_dump()])


def test_a_named_tool_choice_calls_that_function_and_streams_it_as_a_tool_calls_delta(client, node: Node):
    body = chat(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}})
    chunks = list(client.chat.completions.create(**body, stream=True))
    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content] == []  # no text sent
    ((call,),) = deltas
    assert call.function.name == "get_time" and json.loads(call.function.arguments)["zone"] in ("UTC", "CET", "PST")
    last = chunks[-1]
    assert last.choices[0].finish_reason == "tool_calls"
    streamed = {"id": call.id, "type": "function", "function": call.function.model_dump()}
    assert_receipt_covers_the_calls(node, last.model_extra["haca"], body, [streamed])


def test_arguments_always_parse_across_varied_prompts(client):
    for prompt in ("Weather in Tokyo?", "Is it raining in Oslo?", "Tell me about Lima", "hi", "Cairo forecast"):
        body = chat(tools=[WEATHER], tool_choice="required")
        body["messages"] = [{"role": "user", "content": prompt}]
        (call,) = client.chat.completions.create(**body).choices[0].message.tool_calls
        assert set(json.loads(call.function.arguments)) == {"city"}, call.function.arguments


def test_a_follow_up_turn_with_the_tool_result_is_answered_in_words_and_receipted(client, node: Node):
    first = client.chat.completions.create(**chat(tools=[WEATHER], tool_choice="required"))
    call = first.choices[0].message.tool_calls[0]
    body = chat(
        tools=[WEATHER],
        tool_choice="none",
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"},
        ],
    )
    answer = client.chat.completions.create(**body)
    assert answer.choices[0].finish_reason in ("stop", "length") and answer.choices[0].message.content
    assert answer.choices[0].message.tool_calls is None
    receipt = stored_receipt(node, answer.model_extra["haca"]["receipt"]["id"]).receipt
    assert receipt.input_hash == parse_request(body, "chat").hash(MODEL_ID)
    assert receipt.output_hash == text_hash(answer.choices[0].message.content)


def test_under_auto_a_greeting_is_answered_in_words(client):
    body = chat(tools=[WEATHER], tool_choice="auto")
    body["messages"] = [{"role": "user", "content": "Say hello to me."}]
    answer = client.chat.completions.create(**body)
    assert answer.choices[0].message.tool_calls is None and answer.choices[0].message.content
    assert "output_text" not in answer.model_extra["haca"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{**WEATHER, "function": {**WEATHER["function"], "parameters": {"type": 5}}}]}, "tools"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_a_tools_request_we_cannot_serve_is_a_400_naming_it_and_nothing_is_charged(node: Node, extra, param):
    before = node.store.unsettled_count()
    response = post(node.url + "/v1/chat/completions", json=chat(**extra), headers=bearer(node))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert node.store.unsettled_count() == before
