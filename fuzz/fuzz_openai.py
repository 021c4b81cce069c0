"""Fuzz how the node reads an OpenAI-compatible request body, as `haca.node.openai_api._accept` does
before anything is charged: `orjson.loads`, then `haca.types.llm.parse_request` for a chat
completion, a text completion or a Responses API request (`haca.types.responses.chat_body_of`,
tools and tool calls from `haca.types.tools`), then `haca.runtime.llm.grammar_for` (a
response_format's or the callable tools' JSON schema turned into a llama.cpp grammar). Any body
is either read or refused with orjson.JSONDecodeError, LlmRequestError or GrammarError (the 400s).
What is read must hash and re-encode (`LlmRequest.hash`, `to_openai`, the chat template's messages)
and read back as the same request.

The first byte picks the route: 0 /v1/chat/completions, 1 /v1/completions, 2 /v1/responses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import atheris
import fuzzlib
import orjson

with atheris.instrument_imports(include=["haca"]):
    from haca.runtime.llm import GrammarError, grammar_for, template_messages
    from haca.types.llm import LlmRequestError, parse_request

KINDS = ("chat", "completion", "response")
MODEL_ID = "sha256:" + "ab" * 32
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}


@atheris.instrument_func
def test_one_input(data: bytes) -> None:
    if not data:
        return
    kind = KINDS[data[0] % 3]
    try:
        request = parse_request(orjson.loads(data[1:]), kind)
        grammar_for(request)
    except (orjson.JSONDecodeError, LlmRequestError, GrammarError):
        return
    assert request.hash(MODEL_ID).startswith("0x")
    template_messages(request)
    again = parse_request(request.to_openai(), request.kind)  # what the SDK sends reads back the same
    assert again.hash(MODEL_ID) == request.hash(MODEL_ID)


def seeds() -> Iterator[bytes]:
    chats: list[dict[str, Any]] = [
        {"model": "smollm2", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16, "seed": 7},
        {
            "model": "smollm2",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            ],
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": False,
            "temperature": 0.2,
            "top_p": 0.9,
            "stop": ["\n\n"],
            "logprobs": True,
            "top_logprobs": 2,
        },
        {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "A person, please"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
        },
        {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "JSON"}],
            "response_format": {"type": "json_object"},
        },
    ]
    for body in chats:
        yield b"\x00" + json.dumps(body).encode()
    completion = {"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 8, "logprobs": 1, "stream": True}
    yield b"\x01" + json.dumps(completion).encode()
    responses: list[dict[str, Any]] = [
        {"model": "smollm2", "input": "Hello", "instructions": "Be brief.", "max_output_tokens": 16},
        {
            "model": "smollm2",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            ],
            "tools": [{"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"]}],
            "tool_choice": "auto",
        },
        {
            "model": "smollm2",
            "input": "A person",
            "text": {"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}},
        },
    ]
    for body in responses:
        yield b"\x02" + json.dumps(body).encode()
    # nested ~1000 deep (orjson takes 1024): refused as too deep, not a RecursionError from repr or json.dumps
    deep = b'{"a":' * 1000 + b"1" + b"}" * 1000
    yield b'\x00{"model":"m","messages":[{"role":"user","content":"x"}],"logit_bias":' + deep + b"}"
    yield b'\x02{"model":"m","input":"x","tools":[{"type":"function","name":"f","parameters":' + deep + b"}]}"


if __name__ == "__main__":
    fuzzlib.main("openai", test_one_input, seeds)
