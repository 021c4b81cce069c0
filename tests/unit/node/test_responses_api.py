"""Issue 22: POST /v1/responses with the unmodified official `openai` client — text, a function tool,
a JSON-schema format and streaming events — paid and receipted like chat: the receipt's input hash
is the request read as the chat it means (haca.types.responses), its output hash the text generated."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from haca.types.llm import parse_request, text_hash
from tests.unit.node.test_openai_routes import MODEL_ID, Node, bearer, module_node, openai_client, post, stored_receipt

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    yield from module_node(tmp_path_factory, "responses")


@pytest.fixture(scope="module")
def client(node: Node) -> openai.OpenAI:
    return openai_client(node)


def test_a_text_response_is_answered_and_its_receipt_covers_the_request_and_text(client, node: Node):
    body = {"model": "smollm2", "instructions": "Be brief.", "input": "Name a colour.", "max_output_tokens": 16,
            "temperature": 0}  # fmt: skip
    response = client.responses.create(**body)
    assert response.status in ("completed", "incomplete") and response.output_text
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    receipt = stored_receipt(node, response.model_extra["haca"]["receipt"]["id"]).receipt
    assert receipt.input_hash == parse_request(body, "response").hash(MODEL_ID)
    assert receipt.output_hash == text_hash(response.output_text)
    assert (receipt.prompt_tokens, receipt.completion_tokens) == (
        response.usage.input_tokens,
        response.usage.output_tokens,
    )


def test_a_function_tool_is_called_with_arguments_that_parse(client, node: Node):
    body = {"model": "smollm2", "input": "What is the weather in Paris?", "tools": [WEATHER],
            "tool_choice": "required", "max_output_tokens": 40, "temperature": 0}  # fmt: skip
    response = client.responses.create(**body)
    (call,) = response.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    assert set(json.loads(call.arguments)) == {"city"}
    haca = response.model_extra["haca"]
    receipt = stored_receipt(node, haca["receipt"]["id"]).receipt
    assert receipt.input_hash == parse_request(body, "response").hash(MODEL_ID)
    assert receipt.output_hash == text_hash(haca["output_text"])


def test_a_json_schema_format_answers_text_that_parses(client):
    schema = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 20}}, "required": ["colour"],
              "additionalProperties": False}  # fmt: skip
    response = client.responses.create(
        model="smollm2", input="Name a colour.", max_output_tokens=40, temperature=0,
        text={"format": {"type": "json_schema", "name": "colour", "schema": schema, "strict": True}},
    )  # fmt: skip
    assert set(json.loads(response.output_text)) == {"colour"}


def test_streaming_sends_the_apis_typed_events_and_the_receipt_at_the_end(client, node: Node):
    events = list(client.responses.create(model="smollm2", input="Name a colour.", max_output_tokens=12,
                                          temperature=0, stream=True))  # fmt: skip
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]  # fmt: skip
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          kinds[-1]]  # fmt: skip
    assert kinds[-1] in ("response.completed", "response.incomplete")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and events[-1].response.output_text == text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    receipt = stored_receipt(node, events[-1].response.model_extra["haca"]["receipt"]["id"]).receipt
    assert receipt.output_hash == text_hash(text)


def test_a_streamed_function_call_comes_as_argument_events(client):
    request = {"model": "smollm2", "input": "Weather in Rome?", "tools": [WEATHER], "tool_choice": "required"}
    events = list(client.responses.create(**request, max_output_tokens=40, temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds and "response.output_text.delta" not in kinds
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert set(json.loads(done.arguments)) == {"city"}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"store": True}, "store"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": [{"type": "image", "url": "x"}]}, "input[0].type"),
    ],
)
def test_what_a_stateless_node_cannot_do_is_a_400_naming_it_and_nothing_is_charged(node: Node, extra, param):
    before = node.store.unsettled_count()
    body = {"model": "smollm2", "input": "hi", "max_output_tokens": 8, **extra}
    response = post(node.url + "/v1/responses", json=body, headers=bearer(node))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert node.store.unsettled_count() == before
