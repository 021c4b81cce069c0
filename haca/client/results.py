"""What the SDK hands back (InferenceResult, LlmResult, the LLM streams) and the LLM request options."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, TypedDict

import httpx

from haca.client.errors import NodeError
from haca.client.payment import InputInvalid
from haca.types.batch import BatchMark
from haca.types.llm import LlmRequest, LlmRequestError, parse_request
from haca.types.modes import Status
from haca.types.receipt import Receipt, SignedReceipt
from haca.types.settlement import SettlementRecord
from haca.types.tools import ToolCall


@dataclass(frozen=True)
class ReceiptStatus:
    """Where a receipt stands on chain: pending, settled alone (the chain's `record`), or settled
    in a batch (its request's `batch` mark; the receipt, when known, gives its node, client and fee)."""

    receipt_id: str
    status: Status
    record: SettlementRecord | None = None
    batch: BatchMark | None = None
    receipt: Receipt | None = None

    @property
    def height(self) -> int:
        """The block it settled in (0 while pending)."""
        found = self.record or self.batch
        return found.height if found is not None else 0

    @property
    def fee(self) -> int | None:
        """What the node was paid (None when neither the record nor the receipt is known)."""
        if self.record is not None:
            return self.record.fee
        return self.receipt.fee if self.receipt is not None else None

    def to_json(self) -> dict[str, Any]:
        if self.record is not None:
            return self.record.to_json()
        if self.batch is not None:
            r = self.receipt
            extra = {"node": r.node, "client": r.client, "fee": str(r.fee)} if r is not None else {}
            return {**self.batch.to_json(), **extra}
        return {"receipt_id": self.receipt_id, "status": self.status.value}


@dataclass(frozen=True)
class FetchedOutput:
    """A paid request's output fetched again from the node (its answer was lost on the way),
    checked to be what the receipt commits to: `output` is the tensor answer's fields ("output",
    and "zk" for zkml) or an LLM's ("text", "finish_reason")."""

    request_id: str
    receipt: SignedReceipt
    output: dict[str, Any]
    status: str

    @property
    def text(self) -> str | None:
        """An LLM's generated text (None for a tensor answer)."""
        text = self.output.get("text")
        return text if isinstance(text, str) else None


@dataclass(frozen=True)
class InferenceResult:
    output: dict[str, Any]  # {name: {"dtype", "shape", "data"}}
    receipt: SignedReceipt
    status: str
    node_url: str

    @property
    def receipt_id(self) -> str:
        return self.receipt.id

    def to_json(self) -> dict[str, Any]:
        return {"output": self.output, "receipt": self.receipt.to_json(), "status": self.status}


Messages = Sequence[Mapping[str, Any] | tuple[str, str]]  # [{"role", "content"}] or [(role, content)]
CHAT_PATH, COMPLETION_PATH = "/v1/chat/completions", "/v1/completions"


@dataclass(frozen=True)
class LlmResult:
    """A verified LLM answer: the text, why it ended, the tokens used and the receipt charging them."""

    text: str
    finish_reason: str
    usage: dict[str, int]  # prompt_tokens, completion_tokens, total_tokens
    receipt: SignedReceipt
    mode: str
    status: str
    body: dict[str, Any]  # the node's answer (non-streamed) or its last chunk (streamed)
    node_url: str
    # the functions the model called, derived from the generated text the receipt covers (`text`
    # is then that text: the call as JSON)
    tool_calls: tuple[ToolCall, ...] = ()

    @property
    def receipt_id(self) -> str:
        return self.receipt.id

    @property
    def fee(self) -> int:
        return self.receipt.receipt.fee

    def to_json(self) -> dict[str, Any]:
        return {
            "tool_calls": [c.to_json() for c in self.tool_calls],
            "text": self.text,
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "receipt_id": self.receipt_id,
            "fee": self.fee,
            "mode": self.mode,
            "status": self.status,
            "receipt": self.receipt.to_json(),
        }


@dataclass(frozen=True)
class LlmOptions:
    """How an LLM request is run and paid: the mode (default the node's preferred one), the
    sampling parameters, and the most the caller will authorise (default: the model's per-token
    prices on chain). The LLM methods take one, or the same names as keywords, or both."""

    mode: str | None = None
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: str | Sequence[str] | None = None
    max_fee: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # chat: {"type": "json_object"} or {"type": "json_schema", "json_schema": {"name", "schema", ...}}
    response_format: Mapping[str, Any] | None = None
    tools: Sequence[Mapping[str, Any]] | None = None  # chat: OpenAI function tools
    tool_choice: str | Mapping[str, Any] | None = None  # "auto" | "none" | "required" | a named function
    logprobs: int | None = None  # each token's log probability and this many alternatives (in LlmResult.body)

    @classmethod
    def of(cls, options: LlmOptions | None, overrides: Mapping[str, Any]) -> LlmOptions:
        """`options` (default: the defaults) with the keyword `overrides` applied."""
        names = {f.name for f in fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(f"unknown LLM option(s): {', '.join(sorted(unknown))}")
        return replace(options or cls(), **overrides)

    def request(self, kind: str, model: str, content: Messages | str, stream: bool) -> LlmRequest:
        """The request as the node will read it (checked as the node checks it, before paying)."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop) if self.stop is not None else None
        sampling = {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p}
        body: dict[str, Any] = {"model": model, "stream": stream, **sampling}
        optional: dict[str, Any] = {"seed": self.seed, "stop": stops, "response_format": self.response_format}
        optional |= {"tools": list(self.tools) if self.tools else None, "tool_choice": self.tool_choice}
        body.update({k: v for k, v in optional.items() if v is not None})
        if self.logprobs is not None:
            body |= {"logprobs": True, "top_logprobs": self.logprobs} if kind == "chat" else {"logprobs": self.logprobs}
        penalties = {"frequency_penalty": self.frequency_penalty, "presence_penalty": self.presence_penalty}
        body.update({k: v for k, v in penalties.items() if v})
        try:
            if kind == "chat":
                if isinstance(content, str):
                    raise TypeError("messages must be a list of {role, content} or (role, content)")
                body["messages"] = [_message(m) for m in content]
            else:
                body["prompt"] = content
            return parse_request(body, kind)
        except (LlmRequestError, TypeError, ValueError) as exc:
            raise InputInvalid(str(exc)) from exc


class LlmParams(TypedDict, total=False):
    """LlmOptions' fields as keyword arguments (`client.chat(model, messages, max_tokens=8)`)."""

    mode: str | None
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: str | Sequence[str] | None
    max_fee: int | None
    frequency_penalty: float
    presence_penalty: float
    response_format: Mapping[str, Any] | None
    tools: Sequence[Mapping[str, Any]] | None
    tool_choice: str | Mapping[str, Any] | None
    logprobs: int | None


def _message(message: Mapping[str, Any] | tuple[str, str]) -> dict[str, Any]:
    if isinstance(message, Mapping):
        return {"role": message.get("role"), "content": message.get("content")}
    role, content = message
    return {"role": role, "content": content}


class StreamReader:
    """Reads a node's server-sent events: the text pieces, then the last chunk's usage and receipt."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.pieces: list[str] = []
        self.last: dict[str, Any] | None = None
        self.finish_reason = ""
        self.done = False

    def feed(self, line: str) -> str | None:
        """The text piece a line carries, if any."""
        if self.done or not line.startswith("data:"):
            return None
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return None
        try:
            chunk = json.loads(data)
        except (ValueError, RecursionError) as exc:  # bad JSON, an integer too long, nesting too deep
            raise NodeError(f"node sent a malformed stream chunk: {exc!r}") from exc
        if not isinstance(chunk, dict):
            raise NodeError("node sent a malformed stream chunk")
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise NodeError(f"node failed mid-stream: {message}")
        choice = (chunk.get("choices") or [{}])[0]
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])
        if "haca" in chunk:
            self.last = chunk
        piece = choice.get("delta", {}).get("content") if self.kind == "chat" else choice.get("text")
        if isinstance(piece, str) and piece:
            self.pieces.append(piece)
            return piece
        return None

    def answer(self) -> tuple[str, dict[str, Any], str]:
        """(text, last chunk, finish reason) once the stream is over."""
        if self.last is None:
            raise NodeError("the stream ended without its receipt")
        return "".join(self.pieces), self.last, self.finish_reason


Finish = Callable[[str, dict[str, Any], str], LlmResult]  # (text, last chunk, finish reason) -> checked


@dataclass(frozen=True)
class Streamed:
    """A paid streamed answer, its body not yet read: the response, the request's kind, and the check."""

    response: httpx.Response
    kind: str
    finish: Finish


class LlmStream:
    """The text of a streamed answer, piece by piece; `result` (verified) once it is exhausted."""

    def __init__(self, response: httpx.Response, kind: str, finish: Finish) -> None:
        self._response, self._reader, self._finish = response, StreamReader(kind), finish
        self.result: LlmResult | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            for line in self._response.iter_lines():
                piece = self._reader.feed(line)
                if piece is not None:
                    yield piece
                if self._reader.done:
                    break
        finally:
            self._response.close()
        self.result = self._finish(*self._reader.answer())

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> LlmStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncLlmStream:
    """As LlmStream, for AsyncClient: `async for piece in stream`, then `stream.result`."""

    def __init__(self, response: httpx.Response, kind: str, finish: Finish) -> None:
        self._response, self._reader, self._finish = response, StreamReader(kind), finish
        self.result: LlmResult | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            async for line in self._response.aiter_lines():
                piece = self._reader.feed(line)
                if piece is not None:
                    yield piece
                if self._reader.done:
                    break
        finally:
            await self._response.aclose()
        text, last, finish_reason = self._reader.answer()
        self.result = await asyncio.to_thread(self._finish, text, last, finish_reason)  # tee reads the chain

    async def aclose(self) -> None:
        await self._response.aclose()
