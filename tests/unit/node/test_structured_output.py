"""Issue 22 on one node (SmolLM2-135M through llama.cpp), with the unmodified official `openai`
client: JSON mode and JSON-schema outputs are grammar-constrained (they always parse, across varied
prompts), `parse` with a Pydantic model works, the penalties and the developer role are applied,
and the receipt's input hash covers the response format and every sampling parameter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from haca.types.llm import parse_request, text_hash
from tests.unit.node.test_openai_routes import MODEL_ID, Node, module_node, openai_client, stored_receipt

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


class City(BaseModel):
    name: str
    country: str
    population: int


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    yield from module_node(tmp_path_factory, "structured")


@pytest.fixture(scope="module")
def client(node: Node) -> openai.OpenAI:
    return openai_client(node)


def receipt_covers(node: Node, answer: Any, body: dict[str, Any]) -> None:
    """The answer's receipt commits to the request as sent (response format and parameters
    included) and to the text answered."""
    receipt = stored_receipt(node, answer.model_extra["haca"]["receipt"]["id"]).receipt
    assert receipt.input_hash == parse_request(body, "chat").hash(MODEL_ID)
    assert receipt.output_hash == text_hash(answer.choices[0].message.content or "")


PROMPTS = [
    "Describe a person.",
    "Invent a character for a novel.",
    "Who wrote Hamlet? Answer as JSON.",
    "A pilot born in 1980.",
    "Tell me about your grandmother.",
    "Make up a customer record.",
    "A famous scientist.",
    "Give me someone's details.",
    "Return a user profile.",
    "Name a child and say how old.",
    "A football player.",
    "Describe the oldest person you know.",
    "A student in first year.",
    "Someone called Ada.",
    "An astronaut on the moon.",
    "List a teacher.",
    "A baby born today.",
    "Who is the main character of your favourite film?",
    "A chess champion.",
    "Write a JSON record for a painter.",
]


def test_every_json_schema_answer_parses_against_its_schema_across_varied_prompts(client, node: Node):
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for prompt in PROMPTS:
        body = {
            "model": "smollm2",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 128,  # the schema bounds the answer well inside this
            "temperature": 0.7,
            "seed": len(prompt),
            "response_format": response_format,
        }
        answer = client.chat.completions.create(**body)
        doc = json.loads(answer.choices[0].message.content)
        assert set(doc) == {"name", "age"} and isinstance(doc["name"], str) and isinstance(doc["age"], int), doc
        receipt_covers(node, answer, body)


def test_parse_with_a_pydantic_model_gives_the_model(client):
    parsed = client.chat.completions.parse(
        model="smollm2",
        messages=[{"role": "user", "content": "Describe Paris."}],
        response_format=City,
        max_tokens=64,
        temperature=0,
    )
    city = parsed.choices[0].message.parsed
    assert isinstance(city, City) and city.name and isinstance(city.population, int)


def test_json_mode_answers_a_json_object(client, node: Node):
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Return a JSON object with a key colour naming one colour."}],
        "max_tokens": 64,
        "temperature": 0,
        "response_format": {"type": "json_object"},
    }
    answer = client.chat.completions.create(**body)
    assert answer.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(answer.choices[0].message.content), dict | list)
    receipt_covers(node, answer, body)


def test_penalties_and_the_developer_role_shape_the_output_and_the_receipt(client, node: Node):
    base = {
        "model": "smollm2",
        "messages": [
            {"role": "developer", "content": "Answer in one short sentence."},
            {"role": "user", "content": "Repeat the word sea twenty times."},
        ],
        "max_tokens": 40,
        "temperature": 0,
    }
    plain = client.chat.completions.create(**base)
    penalised = client.chat.completions.create(**base, frequency_penalty=2.0, presence_penalty=2.0)
    assert plain.choices[0].message.content != penalised.choices[0].message.content  # applied, not ignored
    receipt_covers(node, penalised, {**base, "frequency_penalty": 2.0, "presence_penalty": 2.0})
    assert parse_request(base, "chat").hash(MODEL_ID) != parse_request(
        {**base, "frequency_penalty": 2.0, "presence_penalty": 2.0}, "chat"
    ).hash(MODEL_ID)


def test_a_schema_that_cannot_become_a_grammar_is_refused_and_nothing_is_charged(client, node: Node):
    before = node.store.unsettled_count()
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_schema", "json_schema": {"name": "bad", "schema": {"$ref": "#/nowhere"}}},
        )
    assert refused.value.body["param"] == "response_format.json_schema.schema"  # type: ignore[index]
    assert node.store.unsettled_count() == before


def test_the_answer_writes_properties_in_the_schemas_order(client):
    """The request hash reads the schema key-sorted; the grammar must not: the order of a schema's
    properties is the order the answer writes them in (as bare llama.cpp does)."""
    schema = {
        "type": "object",
        "properties": {"zeta": {"type": "string", "maxLength": 10}, "alpha": {"type": "integer"}},
        "required": ["zeta", "alpha"],
        "additionalProperties": False,
    }
    answer = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Fill it in."}], max_tokens=64, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "ordered", "schema": schema}},
    )  # fmt: skip
    assert list(json.loads(answer.choices[0].message.content)) == ["zeta", "alpha"]
