"""LLM requests as the OpenAI API shapes them, and what an LLM receipt commits to: the hash of the
request (the messages or prompt with every sampling parameter, defaults filled in) and the hash of
the whole output text. The node and the client compute both with this code."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from haca.types.encoding import canonical_json
from haca.types.responses import ResponsesRequestError, chat_body_of
from haca.types.tools import (
    FunctionTool,
    ToolCall,
    ToolError,
    callable_tools,
    parse_tool_choice,
    parse_tools,
    tools_text,
)

ROLES = ("system", "developer", "user", "assistant", "tool")  # "developer": OpenAI's newer name for system
DEFAULT_MAX_TOKENS = 256  # OpenAI's default is "the rest of the context": a bound keeps the reserved fee sane
MAX_STOP = 4
MAX_STOP_LENGTH = 256
MAX_MESSAGES = 1024
MAX_SCHEMA_CHARS = 16 << 10  # a response_format's JSON schema, as JSON text
MAX_TOP_LOGPROBS = {"chat": 20, "completion": 5}  # the OpenAI API's limits
# JSON nesting a request body may have, schemas included. Deeper bodies are refused first: a value
# nested ~1000 deep (JSON parsers allow 1024) made repr() or json.dumps() raise RecursionError while
# reading it (a 500, not a 400), and OpenAI's strict schemas nest at most 5 levels.
MAX_DEPTH = 64
# Parameters accepted only at a value that changes nothing (we do not implement them): any other
# value is refused with a 400 naming the parameter, never dropped.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "echo": (False,),
    "best_of": (1,),
    "suffix": (None,),
    "logit_bias": (None, {}),
    "store": (None, False),
}
IGNORED = ("user", "metadata", "stream_options")  # they do not shape the output
_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class LlmRequestError(ValueError):
    """A request the OpenAI API would refuse; `param` names the field at fault."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.code = param, code


@dataclass(frozen=True)
class ChatMessage:
    """One message of a chat: its role and text; an assistant's earlier tool calls, or the id of
    the call a tool message answers."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            doc["tool_calls"] = [c.to_json() for c in self.tool_calls]
        if self.tool_call_id:
            doc["tool_call_id"] = self.tool_call_id
        return doc


@dataclass(frozen=True)
class LlmRequest:
    """One chat or text completion: `messages` for chat, `prompt` for a completion."""

    kind: str  # "chat" | "completion"
    model: str
    messages: tuple[ChatMessage, ...] = ()
    prompt: str = ""
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # None: free text; {"type": "json_object"} or {"type": "json_schema", "json_schema": {...}}:
    # the output is constrained by a grammar from it (haca.runtime.llm.grammar_for)
    response_format: dict[str, Any] | None = None
    tools: tuple[FunctionTool, ...] = ()
    tool_choice: str = "none"  # "auto" | "none" | "required" | "function:<name>"
    parallel_tool_calls: bool | None = None
    # None: no log probabilities; k: each generated token's, with the k most likely alternatives
    # (chat: logprobs true and top_logprobs k; completion: logprobs k)
    logprobs: int | None = None

    @property
    def callable_tools(self) -> tuple[FunctionTool, ...]:
        """The functions the model may call in its answer (none under tool_choice "none")."""
        return callable_tools(self.tools, self.tool_choice)

    def params(self) -> dict[str, Any]:
        """The sampling parameters, as llama-cpp-python takes them."""
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": list(self.stop) or None,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
        }

    def response_format_text(self) -> str:
        """The response format as canonical JSON text ("" for free text): what the request hash
        covers and what the grammar is built from (floats in a schema as Python writes them)."""
        if self.response_format is None:
            return ""
        return json.dumps(self.response_format, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def hash(self, model_id: str) -> str:
        """0x sha256 of the canonical request: what a receipt's input hash is. Floats are written
        as Python's shortest repr, so the client and the node write the same bytes."""
        doc: dict[str, Any] = {
            "kind": self.kind,
            "model_id": model_id,
            "max_tokens": self.max_tokens,
            "temperature": repr(self.temperature),
            "top_p": repr(self.top_p),
            "seed": self.seed,
            "stop": list(self.stop),
        }
        # added only when set, so a plain request hashes as it always did
        if self.frequency_penalty:
            doc["frequency_penalty"] = repr(self.frequency_penalty)
        if self.presence_penalty:
            doc["presence_penalty"] = repr(self.presence_penalty)
        if self.response_format is not None:
            doc["response_format"] = self.response_format_text()
        if self.tools:
            doc["tools"] = tools_text(self.tools)
            doc["tool_choice"] = self.tool_choice
        if self.parallel_tool_calls is not None:
            doc["parallel_tool_calls"] = self.parallel_tool_calls
        if self.logprobs is not None:
            doc["logprobs"] = self.logprobs
        if self.kind == "chat":
            doc["messages"] = [m.to_json() for m in self.messages]
        else:
            doc["prompt"] = self.prompt
        return "0x" + hashlib.sha256(b"haca/llm-request\x00" + canonical_json(doc)).hexdigest()

    def to_openai(self) -> dict[str, Any]:
        """The request body to send (the SDK's side)."""
        body: dict[str, Any] = {"model": self.model, **self.params(), "stream": self.stream}
        if body["stop"] is None:
            del body["stop"]
        if self.seed is None:
            del body["seed"]
        for name in ("frequency_penalty", "presence_penalty"):
            if not body[name]:
                del body[name]
        if self.response_format is not None:
            body["response_format"] = self.response_format
        if self.tools:
            body["tools"] = [t.to_json() for t in self.tools]
            choice = self.tool_choice
            named = {"type": "function", "function": {"name": choice.removeprefix("function:")}}
            body["tool_choice"] = named if choice.startswith("function:") else choice
        if self.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = self.parallel_tool_calls
        if self.logprobs is not None:
            body |= (
                {"logprobs": True, "top_logprobs": self.logprobs}
                if self.kind == "chat"
                else {"logprobs": self.logprobs}
            )
        if self.kind == "chat":
            body["messages"] = [m.to_json() for m in self.messages]
        else:
            body["prompt"] = self.prompt
        return body


def text_hash(text: str) -> str:
    """0x sha256 of an output text: what an LLM receipt's output hash is."""
    return "0x" + hashlib.sha256(b"haca/llm-text\x00" + text.encode("utf-8")).hexdigest()


def parse_request(body: Any, kind: str) -> LlmRequest:
    """An OpenAI chat (`kind` "chat"), completion, or Responses API ("response": read as the chat
    it means, haca.types.responses) request body, checked as the API does."""
    if _deeper_than(body, MAX_DEPTH):
        raise LlmRequestError(f"the request body nests JSON deeper than {MAX_DEPTH} levels")
    if kind == "response":
        try:
            body, kind = chat_body_of(body), "chat"
        except ResponsesRequestError as exc:
            raise LlmRequestError(str(exc), exc.param) from exc
    if not isinstance(body, dict):
        raise LlmRequestError("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise LlmRequestError("you must provide a model parameter", "model")
    known = {"model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "stream"}
    known |= {"frequency_penalty", "presence_penalty", "logprobs", "top_logprobs"}
    chat_only = {"messages", "response_format", "tools", "tool_choice", "parallel_tool_calls"}
    known |= chat_only if kind == "chat" else {"prompt"}
    for name, value in body.items():
        if name in known or name in IGNORED:
            continue
        if name in NEUTRAL:
            if value not in NEUTRAL[name]:
                raise LlmRequestError(f"{name}={value!r} is not supported by this node", name)
            continue
        raise LlmRequestError(f"Unrecognized request argument supplied: {name}", name)
    messages: tuple[ChatMessage, ...] = ()
    prompt = ""
    if kind == "chat":
        messages = _messages(body.get("messages"))
    else:
        prompt = _prompt(body.get("prompt"))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    elif not _is_int(max_tokens) or max_tokens < 1:
        raise LlmRequestError(f"max_tokens must be a positive integer, not {max_tokens!r}", "max_tokens")
    return LlmRequest(
        kind,
        model,
        messages,
        prompt,
        int(max_tokens),
        _number(body.get("temperature", 1.0), "temperature", 0.0, 2.0),
        _number(body.get("top_p", 1.0), "top_p", 0.0, 1.0),
        _seed(body.get("seed")),
        _stop(body.get("stop")),
        _flag(body.get("stream", False), "stream"),
        _number(body.get("frequency_penalty", 0.0), "frequency_penalty", -2.0, 2.0),
        _number(body.get("presence_penalty", 0.0), "presence_penalty", -2.0, 2.0),
        _response_format(body.get("response_format")),
        *_tools(body),
        _logprobs(body, kind),
    )


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` (decoded JSON) nests objects and arrays more than `limit` deep; iterative,
    so any depth is measured without recursing."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _logprobs(body: dict[str, Any], kind: str) -> int | None:
    """How many alternatives to report per generated token (None: no log probabilities)."""
    most = MAX_TOP_LOGPROBS[kind]
    if kind == "completion":
        value = body.get("logprobs")
        if value is not None and (not _is_int(value) or not 0 <= value <= most):
            raise LlmRequestError(f"logprobs must be an integer from 0 to {most}", "logprobs")
        return value if value is None else int(value)
    wanted, top = body.get("logprobs"), body.get("top_logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise LlmRequestError("logprobs must be a boolean", "logprobs")
    if top is not None and (not _is_int(top) or not 0 <= top <= most):
        raise LlmRequestError(f"top_logprobs must be an integer from 0 to {most}", "top_logprobs")
    if top is not None and not wanted:
        raise LlmRequestError("top_logprobs needs logprobs: true", "top_logprobs")
    return (top or 0) if wanted else None


def _tools(body: dict[str, Any]) -> tuple[tuple[FunctionTool, ...], str, bool | None]:
    try:
        tools = parse_tools(body.get("tools"))
        choice = parse_tool_choice(body.get("tool_choice"), tools)
    except ToolError as exc:
        raise LlmRequestError(str(exc), exc.param) from exc
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise LlmRequestError("parallel_tool_calls must be a boolean", "parallel_tool_calls")
    if callable_tools(tools, choice) and body.get("response_format") not in (None, {"type": "text"}):
        # the answer is either a call or text in that format: one grammar cannot say both yet
        raise LlmRequestError("response_format together with callable tools is not supported", "response_format")
    return tools, choice, parallel


def _response_format(value: Any) -> dict[str, Any] | None:
    """`response_format`: text (None), JSON mode, or a JSON schema the output must follow."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object", "json_schema"):
        raise LlmRequestError(
            "response_format must be {'type': 'text' | 'json_object' | 'json_schema', ...}", "response_format"
        )
    kind = value["type"]
    extra = sorted(set(value) - ({"type", "json_schema"} if kind == "json_schema" else {"type"}))
    if extra:
        raise LlmRequestError(f"response_format: unexpected fields {extra}", f"response_format.{extra[0]}")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    spec = value.get("json_schema")
    param = "response_format.json_schema"
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not _SCHEMA_NAME.fullmatch(spec["name"]):
        raise LlmRequestError("json_schema needs a name of 1-64 letters, digits, '_' or '-'", f"{param}.name")
    unknown = sorted(set(spec) - {"name", "schema", "strict", "description"})
    if unknown:
        raise LlmRequestError(f"json_schema: unexpected fields {unknown}", f"{param}.{unknown[0]}")
    if not isinstance(spec.get("schema"), dict):
        raise LlmRequestError("json_schema.schema must be a JSON schema object", f"{param}.schema")
    if "strict" in spec and not isinstance(spec["strict"], bool | None):
        raise LlmRequestError("json_schema.strict must be a boolean", f"{param}.strict")
    if "description" in spec and not isinstance(spec["description"], str):
        raise LlmRequestError("json_schema.description must be a string", f"{param}.description")
    try:
        text = json.dumps(spec["schema"], allow_nan=False)
    except ValueError as exc:
        raise LlmRequestError(f"json_schema.schema: {exc}", f"{param}.schema") from exc
    if len(text) > MAX_SCHEMA_CHARS:
        raise LlmRequestError(f"json_schema.schema: at most {MAX_SCHEMA_CHARS} characters of JSON", f"{param}.schema")
    return {"type": "json_schema", "json_schema": {k: spec[k] for k in sorted(spec) if spec[k] is not None}}


def _messages(value: Any) -> tuple[ChatMessage, ...]:
    if not isinstance(value, list) or not value:
        raise LlmRequestError("messages must be a non-empty array", "messages")
    if len(value) > MAX_MESSAGES:
        raise LlmRequestError(f"at most {MAX_MESSAGES} messages", "messages")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise LlmRequestError(f"messages[{i}] must be an object", f"messages[{i}]")
        role = message.get("role")
        if role not in ROLES:
            raise LlmRequestError(
                f"Invalid value for 'messages[{i}].role': {role!r}; supported: {list(ROLES)}", f"messages[{i}].role"
            )
        out.append(_message(message, str(role), f"messages[{i}]"))
    return tuple(out)


def _message(message: dict[str, Any], role: str, param: str) -> ChatMessage:
    unknown = sorted(set(message) - {"role", "content", "name", "tool_calls", "tool_call_id", "refusal"})
    if unknown:
        raise LlmRequestError(f"unexpected fields {unknown}", f"{param}.{unknown[0]}")
    calls: tuple[ToolCall, ...] = ()
    if role == "assistant" and message.get("tool_calls"):
        value = message["tool_calls"]
        if not isinstance(value, list):
            raise LlmRequestError("tool_calls must be an array", f"{param}.tool_calls")
        try:
            calls = tuple(ToolCall.from_json(c, f"{param}.tool_calls[{j}]") for j, c in enumerate(value))
        except ToolError as exc:
            raise LlmRequestError(str(exc), exc.param) from exc
    elif message.get("tool_calls"):
        raise LlmRequestError("only an assistant message has tool_calls", f"{param}.tool_calls")
    call_id = message.get("tool_call_id", "")
    if role == "tool" and (not isinstance(call_id, str) or not call_id):
        raise LlmRequestError("a tool message names the tool_call_id it answers", f"{param}.tool_call_id")
    if role != "tool" and call_id:
        raise LlmRequestError("only a tool message has a tool_call_id", f"{param}.tool_call_id")
    content = message.get("content")
    text = "" if content is None and calls else _content(content, f"{param}.content")
    return ChatMessage(role, text, calls, call_id)


def _content(value: Any, param: str) -> str:
    """A message's content: a string, or an array of text parts (joined, as the API reads them)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value
    ):
        return "".join(p["text"] for p in value)
    raise LlmRequestError(f"{param} must be a string or an array of text parts", param)


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise LlmRequestError("prompt must be a string (one prompt per request)", "prompt")
    return value


def _number(value: Any, param: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LlmRequestError(f"{param} must be a number", param)
    if not low <= value <= high:
        raise LlmRequestError(f"{param} must be between {low:g} and {high:g}, not {value!r}", param)
    return float(value)


def _seed(value: Any) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or not 0 <= value < 1 << 32:
        raise LlmRequestError("seed must be an integer from 0 to 2^32 - 1", "seed")
    return int(value)


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOP
        or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_LENGTH for s in stops)
    ):
        raise LlmRequestError(f"stop must be a string or up to {MAX_STOP} non-empty strings", "stop")
    return tuple(stops)


def _flag(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise LlmRequestError(f"{param} must be a boolean", param)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
