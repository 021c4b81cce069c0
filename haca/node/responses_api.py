"""POST /v1/responses: the OpenAI Responses API over the same paid, receipted LLM run as chat
completions (haca.node.openai_api). The request is read as the chat it means
(haca.types.responses); the answer is a `response` object whose output is a message or a function
call, or, streamed, the API's typed events (`response.created` … `response.output_text.delta` …
`response.completed`), the completed response carrying usage and the receipt (`haca`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from haca.node.context import NodeContext
from haca.node.openai_api import (
    Admission,
    LlmCall,
    Run,
    error_event,
    finish_reason_of,
    haca_of,
    serve_llm,
    tool_calls_for,
)
from haca.runtime.llm import Outcome
from haca.types.receipt import SignedReceipt
from haca.types.tools import ToolCall


def add_responses_route(app: FastAPI, ctx: NodeContext, admissions: dict[str, Admission]) -> None:
    @app.post("/v1/responses")
    async def responses(request: Request) -> Response:
        return await serve_llm(ctx, admissions, request, "response", response_body, response_events)


def _ids(call: LlmCall) -> tuple[str, str]:
    tail = call.accepted.request_id[2:26]
    return "resp_" + tail, "msg_" + tail


def _output(call: LlmCall, text: str, calls: tuple[ToolCall, ...], status: str) -> list[dict[str, Any]]:
    _, message_id = _ids(call)
    if calls:
        return [
            {"type": "function_call", "id": "fc_" + c.id.removeprefix("call_"), "call_id": c.id, "name": c.name,
             "arguments": c.arguments, "status": status}
            for c in calls
        ]  # fmt: skip
    part = {"type": "output_text", "text": text, "annotations": []}
    return [{"type": "message", "id": message_id, "status": status, "role": "assistant", "content": [part]}]


def _response(call: LlmCall, status: str, output: list[dict[str, Any]], outcome: Outcome | None) -> dict[str, Any]:
    response_id, _ = _ids(call)
    request = call.request
    incomplete = outcome is not None and outcome.finish_reason == "length"
    doc: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": call.created,
        "status": "incomplete" if incomplete else status,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "error": None,
        "model": call.served.name,
        "output": output,
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "tool_choice": _choice(request.tool_choice),
        "tools": [{"type": "function", **t.to_json()["function"]} for t in request.tools],
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_output_tokens": request.max_tokens,
        "previous_response_id": None,
        "store": False,
        "metadata": {},
        "text": {"format": _format(request.response_format)},
        "usage": None,
    }
    if outcome is not None:
        prompt, completion = outcome.prompt_tokens, outcome.completion_tokens
        doc["usage"] = {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion,
        }
    return doc


def _choice(choice: str) -> Any:
    name = choice.removeprefix("function:")
    return {"type": "function", "name": name} if name != choice else choice


def _format(response_format: dict[str, Any] | None) -> dict[str, Any]:
    if response_format is None:
        return {"type": "text"}
    if response_format["type"] == "json_schema":
        return {"type": "json_schema", **response_format["json_schema"]}
    return {"type": response_format["type"]}


def response_body(call: LlmCall, outcome: Outcome, signed: SignedReceipt) -> dict[str, Any]:
    calls = tool_calls_for(call, outcome, signed)
    output = _output(call, outcome.text, calls, "completed")
    doc = _response(call, "completed", output, outcome)
    doc["haca"] = haca_of(call, signed, outcome if calls else None)
    if calls:
        doc["haca"]["finish_reason"] = finish_reason_of(outcome, calls)
    return doc


async def response_events(call: LlmCall, run: Run, first: str | Outcome | Exception) -> AsyncIterator[bytes]:
    """The Responses API's typed events: created, in progress, the output item and its text
    deltas as llama.cpp makes them (a function call: its arguments in one delta, once generated),
    done events, and `response.completed` with usage and the receipt."""
    sequence = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal sequence
        sequence += 1
        doc = {"type": kind, "sequence_number": sequence - 1, **fields}
        return f"event: {kind}\ndata: ".encode() + orjson.dumps(doc) + b"\n\n"

    _, message_id = _ids(call)
    item = {"item_id": message_id, "output_index": 0, "content_index": 0}
    pending = _response(call, "in_progress", [], None)
    event_now: str | Outcome | Exception = first
    try:
        yield event("response.created", response=pending)
        yield event("response.in_progress", response=pending)
        texted = isinstance(event_now, str)
        if texted:
            (message,) = _output(call, "", (), "in_progress")
            yield event("response.output_item.added", output_index=0, item=message)
            yield event("response.content_part.added", **item, part=message["content"][0])
        pieces: list[str] = []
        while isinstance(event_now, str):
            pieces.append(event_now)
            yield event("response.output_text.delta", **item, delta=event_now, logprobs=[])
            event_now = await run.next_event()
        if isinstance(event_now, Exception):
            yield b"data: " + orjson.dumps(error_event(event_now)) + b"\n\n"
            return
        outcome, signed = await run.finished()
        calls = tool_calls_for(call, outcome, signed)
        output = _output(call, outcome.text, calls, "completed")
        if calls:
            for index, (made, done) in enumerate(zip(calls, output, strict=True)):
                added = {**done, "arguments": "", "status": "in_progress"}
                yield event("response.output_item.added", output_index=index, item=added)
                where = {"item_id": done["id"], "output_index": index}
                yield event("response.function_call_arguments.delta", **where, delta=made.arguments)
                yield event("response.function_call_arguments.done", **where, arguments=made.arguments)
                yield event("response.output_item.done", output_index=index, item=done)
        else:
            if not texted:  # nothing was generated
                (message,) = _output(call, "", (), "in_progress")
                yield event("response.output_item.added", output_index=0, item=message)
                yield event("response.content_part.added", **item, part=message["content"][0])
            text = "".join(pieces)
            yield event("response.output_text.done", **item, text=text, logprobs=[])
            yield event("response.content_part.done", **item, part=output[0]["content"][0])
            yield event("response.output_item.done", output_index=0, item=output[0])
        completed = _response(call, "completed", output, outcome)
        completed["haca"] = haca_of(call, signed, outcome if calls else None)
        yield event("response.completed" if completed["status"] == "completed" else "response.incomplete",
                    response=completed)  # fmt: skip
    finally:
        run.cancel()  # the client went away (or the stream ended): stop at the next token
