"""Issue 22: log probabilities with the official `openai` client — chat (`logprobs`, `top_logprobs`)
and completions (`logprobs` k), whole and streamed: one entry per generated token, whose text
joins to the answer, each the token's log probability with the alternatives asked for (the greedy
token at temperature 0 is the most likely one). The request hash covers the ask."""

from __future__ import annotations

import math
from collections.abc import Iterator

import openai
import pytest

from haca.types.llm import parse_request
from tests.unit.node.test_openai_routes import MODEL_ID, Node, module_node, openai_client, stored_receipt

ASK = {
    "model": "smollm2",
    "messages": [{"role": "user", "content": "Name a colour."}],
    "max_tokens": 8,
    "temperature": 0,
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    yield from module_node(tmp_path_factory, "logprobs")


@pytest.fixture(scope="module")
def client(node: Node) -> openai.OpenAI:
    return openai_client(node)


def test_a_chat_reports_each_tokens_logprob_and_its_top_alternatives(client, node: Node):
    answer = client.chat.completions.create(**ASK, logprobs=True, top_logprobs=3)
    content = answer.choices[0].logprobs.content
    assert "".join(t.token for t in content) == answer.choices[0].message.content
    assert len(content) == answer.usage.completion_tokens
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3 and bytes(t.bytes).decode() == t.token
        assert math.isclose(t.top_logprobs[0].logprob, t.logprob) and t.top_logprobs[0].token == t.token  # greedy
    receipt = stored_receipt(node, answer.model_extra["haca"]["receipt"]["id"]).receipt
    assert receipt.input_hash == parse_request({**ASK, "logprobs": True, "top_logprobs": 3}, "chat").hash(MODEL_ID)


def test_a_streamed_chat_carries_the_logprobs_with_its_last_chunk(client):
    chunks = list(client.chat.completions.create(**ASK, logprobs=True, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    entries = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert "".join(t.token for t in entries) == text and all(t.top_logprobs == [] for t in entries)


def test_a_completion_reports_its_tokens_logprobs_and_offsets(client):
    answer = client.completions.create(model="smollm2", prompt="The sky is", max_tokens=6, temperature=0, logprobs=2)
    lp = answer.choices[0].logprobs
    assert "".join(lp.tokens) == answer.choices[0].text and len(lp.token_logprobs) == len(lp.tokens)
    assert all(len(top) <= 2 for top in lp.top_logprobs) and lp.text_offset[0] == 0
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]


def test_without_asking_there_are_none(client):
    assert client.chat.completions.create(**ASK).choices[0].logprobs is None
