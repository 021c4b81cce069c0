"""The node's OpenAI-compatible routes for LLMs: POST /v1/chat/completions and /v1/completions
(with `stream` as server-sent events). GET /v1/models is shared with the rest of the API.

A request is paid like any other (X-PAYMENT, PAYMENT-SIGNATURE or an allowance API key as the
bearer token), before its body is read. Its cost is not known until the model has run, so the
gate holds the most it may cost (the prompt as long as the context allows, plus max_tokens) or
what the payment covers, whichever is less; generation stops at what is held, and the receipt
charges the tokens used at the manifest's per-token prices. The receipt commits to the hash of the
request (haca.types.llm) and of the whole output text, and travels in the `x-haca-receipt` header
and a `haca` field of the body (in the last chunk when streaming).

The mode comes from the payment authorisation, else from an `x-haca-mode` header, else the best
the node offers for the model (tee before vanilla). Requests beyond the model's slots wait in a
bounded queue; past it, 429. A client that goes away mid-stream frees its slot at the next token
and is charged for the prompt and the tokens produced until then.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from haca.enclave.client import EnclaveError, EnclaveRefusal, Generation
from haca.node.context import MAX_BODY_BYTES, NodeContext, ServedModel, enclave_of, route_quotes
from haca.node.errors import (
    ContextLengthExceeded,
    EnclaveUnavailable,
    InvalidRequest,
    ModelNotFound,
    ModeNotSupported,
    NodeError,
    PaymentRequired,
    TooManyRequests,
)
from haca.node.payments import AcceptedPayment, PaymentGate, Quote, payment_response_headers, settle_reads
from haca.node.pipeline import PaidRequest, keep, kept, local_receipt, tee_terms
from haca.runtime.llm import BudgetExhausted, ContextExceeded, GrammarError, LlmModel, Outcome, grammar_for
from haca.types.llm import LlmRequest, LlmRequestError, parse_request, text_hash
from haca.types.modes import Mode, Status
from haca.types.receipt import SignedReceipt
from haca.types.registry import PriceUnit
from haca.types.tools import ToolCall, tool_calls_of

log = structlog.get_logger("haca.node.llm")

OPENAI_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
RECEIPT_HEADER = "x-haca-receipt"
MODE_HEADER = "x-haca-mode"
MODE_PREFERENCE = (Mode.TEE, Mode.VANILLA)
DEFAULT_QUEUE = 8


class Admission:
    """At most `slots` requests run on a model; `queue` more wait; the rest get 429. The model runs
    on this admission's own `slots` threads, never the event loop's shared pool: llama.cpp keeps a
    team of compute threads per calling thread, and an idle team spin-waits, so generation moving
    between pool threads left a second team spinning against the working one (the node's decode
    fell to ~0.65x of bare llama-cpp-python on 2 cores once a burst had used two pool threads)."""

    def __init__(self, slots: int, queue: int = DEFAULT_QUEUE) -> None:
        self.slots, self.queue = slots, queue
        self._semaphore = asyncio.Semaphore(slots)
        self.waiting = 0
        self.running = 0
        self.executor = ThreadPoolExecutor(slots, thread_name_prefix="llm")

    async def enter(self) -> None:
        if self._semaphore.locked() and self.waiting >= self.queue:
            raise TooManyRequests(f"all {self.slots} slots are busy and {self.waiting} requests wait; retry shortly")
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        self.running += 1

    def leave(self) -> None:
        self.running -= 1
        self._semaphore.release()


@dataclass
class LlmCall:
    """One paid LLM request on its way: what runs, on what terms, held against what payment."""

    served: ServedModel
    llm: LlmModel
    request: LlmRequest
    quote: Quote
    accepted: AcceptedPayment
    created: int
    deadline: float  # monotonic time generation stops, so the receipt settles before the authorisation expires
    body: Any = None  # the request body as the client sent it (tee: what the enclave parses and hashes)
    api: str = "chat"  # the route's API: "chat" | "completion" | "response" (the enclave parses the body as it)


def add_openai_routes(app: FastAPI, ctx: NodeContext, admissions: dict[str, Admission]) -> None:
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _serve(ctx, admissions, request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _serve(ctx, admissions, request, "completion")


async def _serve(ctx: NodeContext, admissions: dict[str, Admission], http: Request, kind: str) -> Response:
    return await serve_llm(ctx, admissions, http, kind, _completion_body, _sse)


async def serve_llm(
    ctx: NodeContext,
    admissions: dict[str, Admission],
    http: Request,
    kind: str,
    body_of: Callable[[LlmCall, Outcome, SignedReceipt], dict[str, Any]],
    events_of: Callable[[LlmCall, Run, str | Outcome | Exception], AsyncIterator[bytes]],
) -> Response:
    """One paid LLM request through an OpenAI route: accepted and held, queued for a slot, run (here
    or in the enclave), answered whole by `body_of` or streamed by `events_of`."""
    call = await _accept(ctx, http, kind)
    admission = admissions.setdefault(call.served.model_id, Admission(call.llm.slots, ctx.llm_queue))
    try:
        await admission.enter()
    except TooManyRequests:
        ctx.gate.release(call.accepted, spent=False)  # nothing ran: the payment may be sent again
        raise
    ctx.metrics.llm_queue.set(sum(a.running + a.waiting for a in admissions.values()))
    run = Run(ctx, call, admission)
    run.start()
    if not call.request.stream:
        outcome, signed = await run.finished()
        body = body_of(call, outcome, signed)
        return Response(orjson.dumps(body), media_type="application/json", headers=_paid_headers(ctx, call, signed))
    first = await run.next_event()  # a prompt refused (too long, not covered) is an error answer, not a stream
    if isinstance(first, Exception):
        await run.finished()
        raise first
    return StreamingResponse(
        events_of(call, run, first),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "x-haca-request-id": call.accepted.request_id},
    )


# A request body an LLM's context could hold: this many bytes a token (escaped unicode in JSON is up
# to 12 a token) plus room for the JSON around the messages. A prompt past it is refused (413)
# before it is read whole or tokenised: one cheap payment replayed with a 1 MB prompt held a slot
# for the tokeniser each time and was never charged (its tokens did not fit the context).
BODY_BYTES_PER_TOKEN = 16
BODY_SLACK_BYTES = 16 * 1024


def llm_body_limit(quotes: Iterable[Quote]) -> int:
    """The largest request body any served LLM could take (context tokens = a quote's max_rows)."""
    most = max((q.max_rows for q in quotes if q.price_unit == PriceUnit.TOKEN), default=0)
    return min(MAX_BODY_BYTES, BODY_SLACK_BYTES + BODY_BYTES_PER_TOKEN * most)


async def _accept(ctx: NodeContext, http: Request, kind: str) -> LlmCall:
    """Payment from the headers, then the body; the most the request may cost is held, and the
    moment generation must stop for the receipt to settle before the authorisation expires."""
    llm_quotes = await settle_reads(route_quotes, ctx, llm=True)
    async with PaidRequest(ctx, http, llm_quotes, _offered_first) as paid:
        raw = await paid.body(llm_body_limit(llm_quotes.values()))
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"We could not parse the JSON body of your request: {exc}") from exc
        try:
            request = parse_request(body, kind)
            grammar_for(request)  # a schema that cannot constrain generation is refused before any charge
        except LlmRequestError as exc:
            raise InvalidRequest(str(exc)).with_param(exc.param) from exc
        except GrammarError as exc:
            raise InvalidRequest(str(exc)).with_param(exc.param) from exc
        served = ctx.models.get(request.model)
        if served is None or served.llm is None:
            names = sorted({s.name for s in ctx.models.values() if s.llm is not None})
            raise ModelNotFound(f"The model {request.model!r} does not exist on this node; models: {names}").with_param(
                "model"
            )
        llm = served.llm
        authorization = paid.payment.authorization
        mode = _mode(ctx, http, authorization.mode if authorization else None, served, llm_quotes)
        quote = paid.quote(served.model_id, served.name, mode)
        # a request's prompt and completion take at most the model's context, and what its terms
        # in effect allow (max_rows): the chain refuses a receipt counting more
        context = min(llm.context, quote.max_rows)
        if request.max_tokens >= context:
            raise ContextLengthExceeded(
                f"max_tokens is {request.max_tokens}; this model's maximum context length is {context} tokens"
            ).with_param("max_tokens")
        # The receipt must be signed while the authorisation can still settle: generation (and
        # the wait for a slot) stops in time, whatever max_tokens asked for.
        deadline = time.monotonic() + await settle_reads(ctx.gate.seconds_left, paid.payment.payment.value.expiry)
        worst = quote.token_fee(context - request.max_tokens, request.max_tokens)
        accepted = await paid.hold(ctx.gate.charge_up_to, quote, worst)
    return LlmCall(served, llm, request, quote, accepted, int(time.time()), deadline, body, kind)


def _mode(
    ctx: NodeContext, http: Request, authorized: str | None, served: ServedModel, quotes: dict[tuple[str, str], Quote]
) -> str:
    if authorized is not None:
        return authorized
    asked = http.headers.get(MODE_HEADER)
    if asked:
        return asked
    for mode in MODE_PREFERENCE:
        if (served.model_id, mode) in quotes:
            return mode
    raise ModeNotSupported(f"{served.name!r} is offered in no mode at this height")


def _offered_first(quotes: Mapping[tuple[str, str], Quote]) -> list[Quote]:
    """The 402's offers, the preferred mode of each model first (x402 clients take the first
    one they can pay)."""
    rank = {str(mode): i for i, mode in enumerate(MODE_PREFERENCE)}
    return sorted(quotes.values(), key=lambda q: (q.model_name, rank.get(q.mode, len(rank))))


class Run:
    """The model running — in a worker thread (vanilla), or in the enclave (tee) — its text coming
    back to the event loop as events; the receipt is queued when it ends, whether or not anyone is
    still listening."""

    def __init__(self, ctx: NodeContext, call: LlmCall, admission: Admission) -> None:
        self.ctx, self.call, self.admission = ctx, call, admission
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[str | Outcome | Exception] = asyncio.Queue()
        self.cancelled = threading.Event()
        self._generation: Generation | None = None
        self._done: asyncio.Future[tuple[Outcome, SignedReceipt]] = self.loop.create_future()
        self._started, self._first_token = time.perf_counter(), False

    def start(self) -> None:
        if self.call.quote.mode == Mode.TEE:
            self.loop.create_task(self._in_enclave())
        else:
            self.loop.run_in_executor(self.admission.executor, self._work)

    def cancel(self) -> None:
        self.cancelled.set()
        if self._generation is not None:
            self.loop.create_task(self._generation.cancel())

    async def next_event(self) -> str | Outcome | Exception:
        return await self.events.get()

    async def finished(self) -> tuple[Outcome, SignedReceipt]:
        return await asyncio.shield(self._done)

    def _emit(self, event: str | Outcome | Exception) -> None:
        if not self._first_token:
            self._first_token = True
            self.ctx.metrics.llm_first_token.observe(time.perf_counter() - self._started)
        self.events.put_nowait(event)

    def _push(self, event: str | Outcome | Exception) -> None:
        self.loop.call_soon_threadsafe(self._emit, event)

    def _work(self) -> None:
        call = self.call
        budget = call.accepted.fee  # what is held: generation stops where it would be exceeded
        try:
            outcome = call.llm.generate(
                call.request,
                self._push,
                lambda prompt_tokens: call.quote.completion_budget(budget, prompt_tokens),
                self.cancelled,
                call.deadline,
            )
        except ContextExceeded as exc:
            error: Exception = ContextLengthExceeded(str(exc)).with_param("messages")
            self._finish_soon(error)
        except BudgetExhausted as exc:
            self._finish_soon(PaymentRequired(f"{exc}: authorise more"))
        except Exception as exc:  # the model failed: nothing is charged
            log.exception("llm_failed", model=call.served.name)
            self._finish_soon(exc)
        else:
            self._finish_soon(outcome)

    async def _in_enclave(self) -> None:
        """tee: the request body as the client sent it goes to the enclave, which parses it, runs
        its own copy of the model, and ends the stream with the receipt it signed."""
        call, ctx = self.call, self.ctx
        terms = tee_terms(ctx, call.quote, call.accepted)
        result: Outcome | Exception
        signed: SignedReceipt | None = None
        try:
            enclave = enclave_of(ctx)
            seconds = max(0.001, call.deadline - time.monotonic())
            generation = enclave.generate(call.served.model_id, call.api, call.body, terms, seconds)
            self._generation = generation
            if self.cancelled.is_set():
                await generation.cancel()
            async for piece in generation:
                self._emit(piece)
            assert generation.result is not None
            done = generation.result
            enclave.check(done.receipt, call.served.model_id, terms)
            result = Outcome(done.text, done.finish_reason, done.prompt_tokens, done.completion_tokens, done.logprobs)
            signed = done.receipt
        except EnclaveRefusal as exc:
            result = _refused(exc)
        except NodeError as exc:
            result = exc
        except EnclaveError as exc:
            result = EnclaveUnavailable(f"the enclave did not run the request: {exc}")
        finally:
            self._generation = None
        await self._finish(result, signed)

    def _finish_soon(self, result: Outcome | Exception) -> None:
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._finish(result)))

    async def _finish(self, result: Outcome | Exception, signed: SignedReceipt | None = None) -> None:
        """Charge what was used, queue the receipt (signed here, or by the enclave), free the slot
        and the hold."""
        call, ctx = self.call, self.ctx
        self.admission.leave()
        ctx.metrics.llm_queue.dec()
        try:
            if isinstance(result, Exception):
                raise result
            if signed is None:
                fee = call.quote.token_fee(result.prompt_tokens, result.completion_tokens)
                charged = PaymentGate.settle_fee(call.accepted, fee)
                signed = local_receipt(
                    ctx,
                    call.quote,
                    charged,
                    call.request.hash(call.served.model_id),
                    text_hash(result.text),
                    tokens=(result.prompt_tokens, result.completion_tokens),
                )
            keep(ctx, signed, call.accepted, {"text": result.text, "finish_reason": result.finish_reason})
        except Exception as exc:
            self.events.put_nowait(exc)
            self._done.set_exception(exc)
            self._done.exception()  # retrieved: a client gone away never awaits it
            return
        finally:
            ctx.gate.release(call.accepted)
        kept(ctx)
        metrics, name, mode = ctx.metrics, call.served.name, call.quote.mode
        metrics.llm_requests.labels(name, mode, result.finish_reason).inc()
        metrics.llm_tokens.labels(name, "prompt").inc(result.prompt_tokens)
        metrics.llm_tokens.labels(name, "completion").inc(result.completion_tokens)
        self.events.put_nowait(result)
        self._done.set_result((result, signed))


def _refused(exc: EnclaveRefusal) -> Exception:
    """The enclave's refusal as the error the client gets (it judged the request itself)."""
    if exc.code == "context_exceeded":
        return ContextLengthExceeded(exc.reason).with_param("messages")
    if exc.code == "budget_exhausted":
        return PaymentRequired(f"{exc.reason}: authorise more")
    if exc.code == "invalid_request":
        return InvalidRequest(exc.reason).with_param(exc.param)
    return EnclaveUnavailable(f"the enclave did not run the request: {exc.reason}")


async def _sse(call: LlmCall, run: Run, first: str | Outcome | Exception) -> AsyncIterator[bytes]:
    """Server-sent events in the OpenAI shape; the last chunk carries usage and the receipt."""
    event: str | Outcome | Exception = first
    try:
        if call.request.kind == "chat":
            yield sse_event(_chunk(call, {"role": "assistant", "content": ""}, None))
        while isinstance(event, str):
            yield sse_event(_chunk(call, {"content": event} if call.request.kind == "chat" else event, None))
            event = await run.next_event()
        if isinstance(event, Exception):
            yield sse_event(error_event(event))
            return
        outcome, signed = await run.finished()
        calls = tool_calls_for(call, outcome, signed)
        if calls:  # held back while generated: sent whole, as the API's tool_calls delta
            deltas = [{"index": i, **c.to_json()} for i, c in enumerate(calls)]
            yield sse_event(_chunk(call, {"tool_calls": deltas}, None))
        finish = finish_reason_of(outcome, calls)
        last = _chunk(call, {}, finish) if call.request.kind == "chat" else _chunk(call, "", outcome)
        last["choices"][0]["logprobs"] = logprobs_of(call, outcome)  # all of them, with the last chunk
        last["usage"] = usage_of(outcome)
        last["haca"] = haca_of(call, signed, outcome if calls else None)
        yield sse_event(last)
        yield b"data: [DONE]\n\n"
    finally:
        run.cancel()  # the client went away (or the stream ended): stop at the next token


def _chunk(call: LlmCall, delta: dict[str, Any] | str, finish: str | Outcome | None) -> dict[str, Any]:
    reason = finish.finish_reason if isinstance(finish, Outcome) else finish
    if call.request.kind == "chat":
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        return {**_head(call, "chat.completion.chunk"), "choices": [choice]}
    choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": reason}
    return {**_head(call, "text_completion"), "choices": [choice]}


def sse_event(doc: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\n\n"


def error_event(exc: Exception) -> dict[str, Any]:
    code = getattr(exc, "code", "server_error")
    return {"error": {"message": str(exc), "type": "server_error", "param": None, "code": code}}


def _head(call: LlmCall, obj: str) -> dict[str, Any]:
    prefix = "chatcmpl-" if call.request.kind == "chat" else "cmpl-"
    return {
        "id": prefix + call.accepted.request_id[2:26],
        "object": obj,
        "created": call.created,
        "model": call.served.name,
        "system_fingerprint": None,
    }


def usage_of(outcome: Outcome) -> dict[str, int]:
    prompt, completion = outcome.prompt_tokens, outcome.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def haca_of(call: LlmCall, signed: SignedReceipt, called: Outcome | None = None) -> dict[str, Any]:
    doc = {
        "receipt": signed.to_json(),
        "status": Status.PENDING,
        "mode": call.quote.mode,
        "request_hash": signed.receipt.input_hash,
        "price": {"prompt": str(call.quote.unit_price), "completion": str(call.quote.completion_price)},
    }
    if called is not None:  # the text the receipt's output hash covers, from which the calls derive
        doc["output_text"] = called.text
    return doc


def tool_calls_for(call: LlmCall, outcome: Outcome, signed: SignedReceipt) -> tuple[ToolCall, ...]:
    """The calls the generated text makes; their ids derive from the request hash the receipt
    already carries (computed when it was signed, here or in the enclave)."""
    tools = call.request.callable_tools
    return tool_calls_of(outcome.text, signed.receipt.input_hash, tools) if tools else ()


def logprobs_of(call: LlmCall, outcome: Outcome) -> dict[str, Any] | None:
    """The answer's `logprobs`: the chat shape ({"content": [per token]}) or the completion one
    (tokens, token_logprobs, top_logprobs, text_offset). Not covered by the receipt: they are floats
    of the model's distribution, reported as computed (the node's word, or the enclave's)."""
    if outcome.logprobs is None:
        return None
    if call.request.kind == "chat":
        return {"content": list(outcome.logprobs), "refusal": None}
    offsets, at = [], 0
    for entry in outcome.logprobs:
        offsets.append(at)
        at += len(entry["token"])
    return {
        "tokens": [e["token"] for e in outcome.logprobs],
        "token_logprobs": [e["logprob"] for e in outcome.logprobs],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in outcome.logprobs],
        "text_offset": offsets,
    }


def finish_reason_of(outcome: Outcome, calls: tuple[ToolCall, ...]) -> str:
    return "tool_calls" if calls and outcome.finish_reason == "stop" else outcome.finish_reason


def _completion_body(call: LlmCall, outcome: Outcome, signed: SignedReceipt) -> dict[str, Any]:
    if call.request.kind == "chat":
        calls = tool_calls_for(call, outcome, signed)
        message: dict[str, Any] = {"role": "assistant", "content": None if calls else outcome.text}
        if calls:
            message["tool_calls"] = [c.to_json() for c in calls]
        choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": logprobs_of(call, outcome)}
        choice["finish_reason"] = finish_reason_of(outcome, calls)
        head = _head(call, "chat.completion")
        body = {**head, "choices": [choice], "usage": usage_of(outcome)}
        return body | {"haca": haca_of(call, signed, outcome if calls else None)}
    choice = {"index": 0, "text": outcome.text, "logprobs": logprobs_of(call, outcome)}
    choice["finish_reason"] = outcome.finish_reason
    head = _head(call, "text_completion")
    return {**head, "choices": [choice], "usage": usage_of(outcome), "haca": haca_of(call, signed)}


def receipt_header(signed: SignedReceipt) -> str:
    """The signed receipt as an HTTP header value (base64url of its JSON)."""
    return base64.urlsafe_b64encode(orjson.dumps(signed.to_json())).decode()


def _paid_headers(ctx: NodeContext, call: LlmCall, signed: SignedReceipt) -> dict[str, str]:
    charged = PaymentGate.settle_fee(call.accepted, signed.receipt.fee)
    return {RECEIPT_HEADER: receipt_header(signed), **payment_response_headers(charged, ctx.chain_id, signed.id)}
