"""Issue 22: LangChain's `ChatOpenAI` (package langchain-openai), unmodified, against one node:
`bind_tools` then `invoke` gets a tool call whose arguments parse, and `with_structured_output`
gets the Pydantic model; each answer carries a receipt committing to what LangChain sent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from haca.types.llm import text_hash
from haca.types.receipt import Receipt
from haca.types.tools import call_id
from tests.unit.node.test_openai_routes import MODEL_ID, Node, module_node


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"sunny in {city}"


class Colour(BaseModel):
    name: str
    warm: bool


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    yield from module_node(tmp_path_factory, "langchain")


@pytest.fixture(scope="module")
def chat(node: Node) -> ChatOpenAI:
    return ChatOpenAI(
        model="smollm2", base_url=node.url + "/v1", api_key=node.api_key, temperature=0, max_tokens=48, max_retries=0
    )


def latest_receipt(node: Node) -> Receipt:
    """The receipt of the last answer the node queued (LangChain keeps no extra fields of the body)."""
    stored = node.store.unsettled(1000)[-1]
    return stored.item.receipt.receipt


def test_bind_tools_then_invoke_gets_a_tool_call(chat: ChatOpenAI, node: Node):
    message = chat.bind_tools([get_weather], tool_choice="get_weather").invoke("What is the weather in Paris?")
    (call,) = message.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    receipt = latest_receipt(node)
    # the call's id derives from the request hash the receipt commits to: this call is that receipt's
    assert call["id"] == call_id(receipt.input_hash, 0) and receipt.model_id == MODEL_ID


def test_with_structured_output_gets_the_pydantic_model(chat: ChatOpenAI, node: Node):
    answer = chat.with_structured_output(Colour, include_raw=True).invoke("Name a colour and say if it is warm.")
    colour, raw = answer["parsed"], answer["raw"]
    assert isinstance(colour, Colour) and colour.name
    assert latest_receipt(node).output_hash == text_hash(raw.content)  # the JSON text, as generated and parsed
