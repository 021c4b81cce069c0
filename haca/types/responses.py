"""The OpenAI Responses API (`POST /v1/responses`) as a chat completion: its `input` items,
`instructions`, function `tools`, `tool_choice` and `text.format` become the chat request they mean,
which is then read, hashed and run as any chat (haca.types.llm). The node, its enclave and the
SDK translate with this one function, so a receipt's request hash is the same for all of them.

Stateless: a node keeps no conversation, so `previous_response_id` and `store: true` are refused
(send the whole conversation as `input`)."""

from __future__ import annotations

from typing import Any

MESSAGE_ROLES = ("user", "assistant", "system", "developer")
IGNORED = ("user", "metadata", "truncation", "include", "service_tier")
NEUTRAL: dict[str, tuple[Any, ...]] = {"store": (None, False), "reasoning": (None, {}), "background": (None, False)}


class ResponsesRequestError(ValueError):
    """A Responses request the node refuses; `param` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def chat_body_of(body: Any) -> dict[str, Any]:
    """The chat completion body a Responses request means (checked as the API does)."""
    if not isinstance(body, dict):
        raise ResponsesRequestError("the request body must be a JSON object", "body")
    if body.get("previous_response_id") is not None:
        raise ResponsesRequestError(
            "previous_response_id is not supported: this node keeps no responses (send the conversation as input)",
            "previous_response_id",
        )
    known = {"model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "stream", "tools"}
    known |= {"tool_choice", "parallel_tool_calls", "text", "previous_response_id"}
    for name, value in body.items():
        if name in known or name in IGNORED:
            continue
        if name in NEUTRAL:
            if value not in NEUTRAL[name]:
                why = " (this node keeps no responses)" if name == "store" else ""
                raise ResponsesRequestError(f"{name}={value!r} is not supported{why}", name)
            continue
        raise ResponsesRequestError(f"Unrecognized request argument supplied: {name}", name)
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise ResponsesRequestError("instructions must be a string", "instructions")
        messages.append({"role": "developer", "content": instructions})
    messages += _items(body.get("input"))
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    for name, chat_name in (("temperature", "temperature"), ("top_p", "top_p"), ("stream", "stream")):
        if body.get(name) is not None:
            chat[chat_name] = body[name]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    if body.get("tools"):
        chat["tools"] = [_tool(t, i) for i, t in enumerate(_list(body["tools"], "tools"))]
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    if body.get("parallel_tool_calls") is not None:
        chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    if body.get("text") is not None:
        chat["response_format"] = _format(body["text"])
    return chat


def _list(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise ResponsesRequestError(f"{param} must be an array", param)
    return value


def _items(value: Any) -> list[dict[str, Any]]:
    """`input`: a string (one user message) or items: messages, function calls and their outputs."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(_list(value, "input")):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise ResponsesRequestError("an input item must be an object", param)
        kind = item.get("type", "message")
        if kind == "message":
            if item.get("role") not in MESSAGE_ROLES:
                raise ResponsesRequestError(f"role must be one of {list(MESSAGE_ROLES)}", f"{param}.role")
            messages.append({"role": item["role"], "content": _content(item.get("content"), f"{param}.content")})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function"}
            call["function"] = {"name": item.get("name"), "arguments": item.get("arguments")}
            if messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls"):
                messages[-1]["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(output, str):
                raise ResponsesRequestError("a function_call_output's output must be a string", f"{param}.output")
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": output})
        else:
            raise ResponsesRequestError(f"input items of type {kind!r} are not supported", f"{param}.type")
    if not messages:
        raise ResponsesRequestError("input must not be empty", "input")
    return messages


def _content(value: Any, param: str) -> Any:
    """A message's content: a string, or input/output text parts (other parts are not supported)."""
    if isinstance(value, str):
        return value
    parts = _list(value, param)
    if not all(isinstance(p, dict) and p.get("type") in ("input_text", "output_text") for p in parts):
        raise ResponsesRequestError("content parts must be input_text or output_text", param)
    return [{"type": "text", "text": p.get("text")} for p in parts]


def _tool(tool: Any, index: int) -> dict[str, Any]:
    """A Responses function tool (flat) as a chat tool (nested under "function")."""
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise ResponsesRequestError("only function tools are supported", f"tools[{index}].type")
    function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
    unknown = sorted(set(tool) - {"type", "name", "description", "parameters", "strict"})
    if unknown:
        raise ResponsesRequestError(f"unexpected fields {unknown}", f"tools[{index}].{unknown[0]}")
    return {"type": "function", "function": function}


def _tool_choice(value: Any) -> Any:
    if isinstance(value, dict) and value.get("type") == "function":
        return {"type": "function", "function": {"name": value.get("name")}}
    return value


def _format(text: Any) -> dict[str, Any]:
    """`text.format` as a chat response_format."""
    if not isinstance(text, dict) or set(text) - {"format", "verbosity"}:
        raise ResponsesRequestError("text must be {'format': {...}}", "text")
    fmt = text.get("format")
    if fmt is None:
        return {"type": "text"}
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise ResponsesRequestError("text.format.type must be text, json_object or json_schema", "text.format")
    if fmt["type"] != "json_schema":
        return {"type": fmt["type"]}
    spec = {k: v for k, v in fmt.items() if k != "type"}
    return {"type": "json_schema", "json_schema": spec}
