"""The node's HTTP API (FastAPI): POST /v1/infer, GET /v1/receipts/{id}, GET /v1/models,
/healthz, /metrics. Errors are JSON `{"error": {"code", "message"}}`; 402 is x402-shaped."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from haca.client.errors import ChainUnavailable, HacaError
from haca.node.context import (
    NodeContext,
    ServedModel,
    ZkAnswer,
    current_quotes,
    enclave_of,
    queue_receipt,
    read_body,
    route_quotes,
    zk_answer,
)
from haca.node.errors import (
    InvalidInputError,
    InvalidRequest,
    ModelNotFound,
    ModeNotSupported,
    NodeError,
    Overloaded,
    PaymentRequired,
    ReceiptNotFound,
    RequestTimeout,
    TooManyRows,
    error_body,
)
from haca.node.openai_api import OPENAI_ROUTES, add_openai_routes
from haca.node.payments import AcceptedPayment, Quote, payment_response_headers, settle_reads
from haca.node.x402v2 import payment_required_header
from haca.proofs.zk.proof import ProofError
from haca.runtime.onnx import InvalidInput, OnnxModel
from haca.types.modes import Mode, Status
from haca.types.registry import model_kind, request_rows
from haca.types.tensor import Tensor, tensors_hash, tensors_to_json
from haca.types.x402 import PAYMENT_REQUIRED_HEADER

BODY_DEADLINE_S = 10.0
INLINE_PARSE_BYTES = 16 << 10  # bodies up to this size are parsed on the event loop (cheaper than a thread hop)


def describe(served: ServedModel, quotes: dict[tuple[str, str], Quote]) -> dict[str, Any]:
    m = served.manifest
    offered = [q for (model_id, _), q in quotes.items() if model_id == served.model_id]
    terms = offered[0] if offered else None
    return {
        "id": m["model_id"],
        "name": m["name"],
        "version": m["version"],
        "modes": [q.mode for q in offered],
        "price": terms.unit_price if terms else None,
        "price_unit": terms.price_unit if terms else m["price_unit"],
        "max_rows": terms.max_rows if terms else m["max_rows"],
        "input_schema": m["input_schema"],
        "output_schema": m["output_schema"],
        "provider": served.model.provider,
        "kind": model_kind(m),
        "object": "model",  # the OpenAI API's fields
        "created": 0,
        "owned_by": m.get("owner", ""),
    }


def create_app(ctx: NodeContext) -> FastAPI:
    app = FastAPI(title="HACA inference node", version="1")
    app.state.context = ctx
    metrics = ctx.metrics
    add_openai_routes(app, ctx, {})

    @app.exception_handler(NodeError)
    async def node_error(request: Request, exc: NodeError) -> JSONResponse:
        metrics.rejected.labels(str(exc.status)).inc()
        if isinstance(exc, PaymentRequired):
            # x402 v2 reads the requirements from the header; v1 (and our SDK) from the body,
            # except on the OpenAI routes, whose body is an OpenAI error object.
            requirements = exc.requirements or {"x402Version": 1, "error": str(exc), "accepts": []}
            headers = {PAYMENT_REQUIRED_HEADER: payment_required_header(requirements, str(request.url))}
            body = error_body(402, exc.code, str(exc)) if request.url.path in OPENAI_ROUTES else requirements
            return JSONResponse(body, 402, headers)
        retry = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Overloaded) else None
        return JSONResponse(error_body(exc.status, exc.code, str(exc), exc.param), exc.status, retry)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(exc.status_code, "http_error", str(exc.detail)), exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(422, "invalid_request", str(exc.errors())), 422)

    @app.exception_handler(HacaError)
    async def chain_error(request: Request, exc: HacaError) -> JSONResponse:
        """A chain read failed: 503 when no RPC endpoint answers, 502 for any other chain error."""
        if isinstance(exc, ChainUnavailable):
            metrics.rejected.labels("503").inc()
            message = "the node cannot reach the chain: no RPC endpoint answered; retry shortly"
            return JSONResponse(error_body(503, exc.code, message), 503, {"Retry-After": "3"})
        metrics.rejected.labels("502").inc()
        return JSONResponse(error_body(502, "chain_error", f"chain read failed ({exc.code})"), 502)

    @app.post("/v1/infer")
    async def infer(request: Request) -> Response:
        started = time.perf_counter()
        quotes = await settle_reads(route_quotes, ctx, llm=False)
        try:
            # Payment first, from the headers alone: an unpaid (or replayed) request never has its
            # body read. The chain reads it needs are awaited off the event loop.
            pending = await ctx.gate.check_async(request.headers, quotes)
        except PaymentRequired as exc:
            raise await _with_requirements(exc, quotes, request) from None
        accepted: AcceptedPayment | None = None
        try:
            try:
                async with asyncio.timeout(BODY_DEADLINE_S):  # a paid body trickled in cannot outlive its payment
                    raw = await read_body(request)
            except TimeoutError:
                raise RequestTimeout(f"the body did not arrive within {BODY_DEADLINE_S:.0f} s") from None
            metrics.bodies_parsed.labels("small" if len(raw) <= INLINE_PARSE_BYTES else "large").inc()
            if len(raw) <= INLINE_PARSE_BYTES:
                served, mode, inputs = _parse_request(ctx, raw)
            else:  # a large body is parsed off the event loop, so other requests go on meanwhile
                served, mode, inputs = await run_in_threadpool(_parse_request, ctx, raw)
            quote = quotes.get((served.model_id, mode))
            if quote is None:
                raise ModeNotSupported(f"{served.name!r} is not offered in mode {mode!r} at this height")
            if mode == Mode.TEE:  # before the work: an enclave that cannot sign must not be charged for
                enclave_of(ctx).require_covered(quote.height)
            rows = request_rows([t.shape for t in inputs.values()])
            if mode == Mode.ZKML and rows != 1:
                raise TooManyRows(f"{rows} rows; a zkml circuit proves one row per request")
            if rows == 0:  # nothing to run and nothing to charge: a receipt for 0 would never settle
                raise InvalidInputError("the input has no rows")
            if rows > quote.max_rows:
                raise TooManyRows(f"{rows} rows; {quote.model_name!r} takes at most {quote.max_rows} per request")
            accepted = await settle_reads(ctx.gate.charge, pending, quote, rows)
        except PaymentRequired as exc:
            raise await _with_requirements(exc, quotes, request) from None
        finally:
            if accepted is None:  # refused before the work: the same payment may be sent again
                ctx.gate.abandon(pending)
        try:
            assert isinstance(served.model, OnnxModel)
            outputs = await run_in_threadpool(served.model.run, inputs)
            zk: ZkAnswer | None = None
            if mode == Mode.ZKML:  # the answer is what the circuit computes, committed before it is proved
                try:
                    zk = await run_in_threadpool(zk_answer, served, inputs, outputs)
                except ProofError as exc:  # e.g. an input far outside the range the circuit was calibrated on
                    raise InvalidInputError(
                        f"this input cannot be proved by {served.name!r}'s circuit: {exc}"
                    ) from None
                outputs = zk.outputs
            signed = await queue_receipt(ctx, quote, accepted, tensors_hash(inputs), tensors_hash(outputs), zk)
        finally:
            ctx.gate.release(accepted)  # the receipt now counts as unsettled, or the request failed
        if ctx.on_receipt is not None:
            ctx.on_receipt()
        metrics.inferences.labels(quote.model_name, mode).inc()
        metrics.latency.observe(time.perf_counter() - started)
        answer: dict[str, Any] = {"output": tensors_to_json(outputs), "receipt": signed.to_json()}
        answer["status"] = Status.PROVING if zk else Status.PENDING
        if zk is not None:
            answer["zk"] = {"instances": [list(row) for row in zk.instances]}
            if ctx.on_proof_job is not None:
                ctx.on_proof_job()
        headers = payment_response_headers(accepted, ctx.chain_id, signed.id)
        return Response(orjson.dumps(answer), media_type="application/json", headers=headers)

    async def _with_requirements(
        exc: PaymentRequired, quotes: dict[tuple[str, str], Quote], request: Request
    ) -> PaymentRequired:
        requirements = await settle_reads(ctx.gate.requirements, quotes.values(), str(exc), str(request.url))
        return PaymentRequired(str(exc), requirements)

    @app.get("/v1/receipts/{receipt_id}")
    async def get_receipt(receipt_id: str) -> dict[str, Any]:
        stored = ctx.store.get(receipt_id.lower())
        if stored is None:
            raise ReceiptNotFound(f"this node has no receipt {receipt_id}")
        return stored.to_json()

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        unique = {s.model_id: s for s in ctx.models.values()}
        quotes = await settle_reads(current_quotes, ctx)
        return {"object": "list", "data": [describe(s, quotes) for s in unique.values()]}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "node": ctx.key.address,
            "chain_id": ctx.chain_id,
            "pending_receipts": ctx.store.unsettled_count(),
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics.pending.set(ctx.store.unsettled_count())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _parse_request(ctx: NodeContext, raw: bytes) -> tuple[ServedModel, str, dict[str, Tensor]]:
    """The body as (model, mode, input tensors); a NodeError (4xx) when it is not a valid request."""
    try:
        body = orjson.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest('body must be a JSON object {"model", "mode", "input"}')
    missing = {"model", "input"} - set(body)
    if missing or set(body) - {"model", "mode", "input"}:
        raise InvalidRequest(f'body must have "model" and "input" (and optional "mode"); missing {sorted(missing)}')
    served, mode = _resolve(ctx, body)
    if not isinstance(served.model, OnnxModel):
        raise InvalidRequest(f"{served.name!r} is a language model: use POST /v1/chat/completions or /v1/completions")
    try:
        return served, mode, served.model.prepare(body["input"])
    except InvalidInput as exc:
        raise InvalidInputError(str(exc)) from exc


def _resolve(ctx: NodeContext, body: dict[str, Any]) -> tuple[ServedModel, str]:
    name, mode = body["model"], body.get("mode", Mode.VANILLA)
    if not isinstance(name, str) or name not in ctx.models:
        names = sorted({s.manifest["name"] for s in ctx.models.values()})
        raise ModelNotFound(f"model {name!r} is not served here; models: {names}")
    served = ctx.models[name]
    if not isinstance(mode, str) or mode not in ctx.modes:
        raise ModeNotSupported(f"mode {mode!r} is not offered for {served.name!r}; node modes {list(ctx.modes)}")
    return served, mode
