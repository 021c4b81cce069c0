"""Tool calling for the OpenAI chat API, shaped so a receipt can commit to it.

A model that may call a function answers, under a grammar (haca.runtime.llm), with one JSON object
`{"name": <function>, "arguments": {...}}` whose arguments follow that function's JSON schema.
The receipt's output hash covers that text as generated; the answer's `tool_calls` are derived
from it here, the same way on the node and in the client: the call id from the request hash, the
arguments as compact JSON. A client that has the generated text (the answer's
`haca.output_text`) checks both the hash and the calls."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

MAX_TOOLS = 64
MAX_TOOLS_CHARS = 32 << 10  # all function definitions together, as JSON text
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CHOICES = ("auto", "none", "required")


class ToolError(ValueError):
    """A tools request the API would refuse; `param` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str
    parameters: dict[str, Any]  # a JSON schema of the arguments object
    strict: bool | None = None

    def to_json(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        if self.strict is not None:
            function["strict"] = self.strict
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text of the arguments object (compact)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    @classmethod
    def from_json(cls, value: Any, param: str) -> ToolCall:
        function = value.get("function") if isinstance(value, dict) else None
        if (
            not isinstance(function, dict)
            or value.get("type", "function") != "function"
            or not isinstance(value.get("id"), str)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments"), str)
        ):
            raise ToolError("a tool call is {id, type: 'function', function: {name, arguments (a JSON string)}}", param)
        return cls(value["id"], function["name"], function["arguments"])


def parse_tools(value: Any) -> tuple[FunctionTool, ...]:
    """`tools`: function definitions (the only kind of tool a chat completion takes)."""
    if value is None or value == []:
        return ()
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        raise ToolError(f"tools must be an array of at most {MAX_TOOLS} function tools", "tools")
    tools = []
    for i, tool in enumerate(value):
        param = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise ToolError("each tool is {'type': 'function', 'function': {...}}", f"{param}.type")
        function = tool["function"]
        unknown = sorted(set(function) - {"name", "description", "parameters", "strict"})
        if unknown:
            raise ToolError(f"unexpected fields {unknown}", f"{param}.function.{unknown[0]}")
        name = function.get("name")
        if not isinstance(name, str) or not _FUNCTION_NAME.fullmatch(name):
            raise ToolError("a function name is 1-64 letters, digits, '_' or '-'", f"{param}.function.name")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise ToolError("parameters must be a JSON schema object", f"{param}.function.parameters")
        description = function.get("description", "")
        if not isinstance(description, str):
            raise ToolError("description must be a string", f"{param}.function.description")
        strict = function.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise ToolError("strict must be a boolean", f"{param}.function.strict")
        tools.append(FunctionTool(name, description, parameters, strict))
    if len({t.name for t in tools}) != len(tools):
        raise ToolError("two tools have the same name", "tools")
    if len(tools_text(tuple(tools))) > MAX_TOOLS_CHARS:
        raise ToolError(f"the tools take more than {MAX_TOOLS_CHARS} characters of JSON", "tools")
    return tuple(tools)


def parse_tool_choice(value: Any, tools: tuple[FunctionTool, ...]) -> str:
    """`tool_choice`: "auto" (the default with tools), "none", "required", or one named function
    (returned as its name prefixed "function:")."""
    if value is None:
        return "auto" if tools else "none"
    if isinstance(value, str):
        if value not in CHOICES:
            raise ToolError(f"tool_choice must be one of {list(CHOICES)} or a named function", "tool_choice")
        if value != "none" and not tools:
            raise ToolError(f"tool_choice {value!r} needs tools", "tool_choice")
        return value
    function = value.get("function") if isinstance(value, dict) else None
    name = function.get("name") if isinstance(function, dict) else None  # ({"function": "f"}: not a dict)
    if not isinstance(value, dict) or value.get("type") != "function" or not isinstance(name, str):
        raise ToolError("a named tool_choice is {'type': 'function', 'function': {'name': ...}}", "tool_choice")
    if name not in {t.name for t in tools}:
        raise ToolError(f"tool_choice names {name!r}, which is not among the tools", "tool_choice")
    return "function:" + name


def tools_text(tools: tuple[FunctionTool, ...]) -> str:
    """The tools as canonical JSON text (what the request hash covers; floats as Python writes them)."""
    return json.dumps([t.to_json() for t in tools], sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def callable_tools(tools: tuple[FunctionTool, ...], choice: str) -> tuple[FunctionTool, ...]:
    """The functions the model may call under `choice` (none for "none")."""
    if choice == "none":
        return ()
    if choice.startswith("function:"):
        return tuple(t for t in tools if t.name == choice.removeprefix("function:"))
    return tools


def call_schema(tools: tuple[FunctionTool, ...]) -> dict[str, Any]:
    """The JSON schema of one call of any of `tools`: {"name": <its name>, "arguments": <its schema>}."""
    variants = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": t.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def tools_prompt(tools: tuple[FunctionTool, ...], choice: str) -> str:
    """What the model is told (a system message the template renders): the functions and how to
    call one. The tokens it takes are the prompt's, charged as such."""
    listed = "\n".join(
        f"- {t.name}: {t.description or 'no description'}; arguments: {json.dumps(t.parameters)}" for t in tools
    )
    how = 'To call a function, answer with only a JSON object {"name": <function name>, "arguments": {...}}.'
    if choice == "auto":
        how += " If no function is needed, answer the user directly in words."
    return f"You can call these functions:\n{listed}\n{how}"


def call_id(request_hash: str, index: int) -> str:
    """A call's id: from the request hash, so the node and the client derive the same one."""
    return "call_" + hashlib.sha256(f"{request_hash}:{index}".encode()).hexdigest()[:24]


def tool_calls_of(text: str, request_hash: str, tools: tuple[FunctionTool, ...]) -> tuple[ToolCall, ...]:
    """The calls a generated text makes: () when it is not a complete call of one of `tools` (an
    answer in words, or one cut short by max_tokens)."""
    if not tools or not text.lstrip().startswith("{"):
        return ()
    try:
        doc = json.loads(text)
    except ValueError:
        return ()
    if not isinstance(doc, dict) or set(doc) != {"name", "arguments"} or not isinstance(doc["arguments"], dict):
        return ()
    if doc["name"] not in {t.name for t in tools}:
        return ()
    arguments = json.dumps(doc["arguments"], separators=(",", ":"), ensure_ascii=False)
    return (ToolCall(call_id(request_hash, 0), str(doc["name"]), arguments),)
