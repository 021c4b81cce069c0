"""The node's HTTP API (FastAPI): POST /v1/infer, GET /v1/receipts/{id}, GET /v1/models,
/healthz, /metrics. Errors are JSON `{"error": {"code", "message"}}`; 402 is x402-shaped."""

from __future__ import annotations

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
from haca.enclave.client import EnclaveRefusal
from haca.enclave.runtime import Terms
from haca.node.context import (
    MAX_BODY_BYTES,
    NodeContext,
    ServedModel,
    ZkAnswer,
    current_quotes,
    enclave_of,
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
    TooManyRows,
    error_body,
)
from haca.node.openai_api import OPENAI_ROUTES, Admission, add_openai_routes
from haca.node.outputs import output_answer
from haca.node.payments import AcceptedPayment, Quote, payment_response_headers, settle_reads
from haca.node.pipeline import PaidRequest, keep, kept, local_receipt, tee_terms
from haca.node.responses_api import add_responses_route
from haca.node.x402v2 import payment_required_header
from haca.proofs.zk.proof import ProofError
from haca.runtime.onnx import InvalidInput, OnnxModel
from haca.types.modes import Mode, Status
from haca.types.receipt import SignedReceipt
from haca.types.registry import request_rows
from haca.types.tensor import Tensor, tensors_hash, tensors_to_json
from haca.types.x402 import PAYMENT_REQUIRED_HEADER

INLINE_PARSE_BYTES = 16 << 10  # bodies up to this size are parsed on the event loop (cheaper than a thread hop)


def describe(served: ServedModel, quotes: dict[tuple[str, str], Quote]) -> dict[str, Any]:
    m = served.manifest
    offered = [q for (model_id, _), q in quotes.items() if model_id == served.model_id]
    terms = offered[0] if offered else None
    # `id` is what requests name (an OpenAI client's models.list shows it); the content hash, also
    # accepted as `model`, is `model_id`
    llm = {"completion_price": terms.completion_price if terms else m.completion_price} if m.kind == "gguf" else {}
    return {
        "id": m.name,
        "model_id": m.model_id,
        "name": m.name,
        "version": m.version,
        "modes": [q.mode for q in offered],
        "price": terms.unit_price if terms else None,
        "price_unit": terms.price_unit if terms else m.price_unit,
        **llm,
        "max_rows": terms.max_rows if terms else m.max_rows,
        "input_schema": m.input_schema,
        "output_schema": m.output_schema,
        "provider": served.model.provider,
        "kind": m.kind,
        "object": "model",  # the OpenAI API's fields
        "created": 0,
        "owned_by": m.owner,
    }


def create_app(ctx: NodeContext) -> FastAPI:
    app = FastAPI(title="HACA inference node", version="1")
    app.state.context = ctx
    metrics = ctx.metrics
    admissions: dict[str, Admission] = {}  # one per LLM, shared by its routes
    add_openai_routes(app, ctx, admissions)
    add_responses_route(app, ctx, admissions)

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
        async with PaidRequest(ctx, request, quotes) as paid:
            raw = await paid.body(MAX_BODY_BYTES)
            metrics.bodies_parsed.labels("small" if len(raw) <= INLINE_PARSE_BYTES else "large").inc()
            if len(raw) <= INLINE_PARSE_BYTES:
                served, mode, inputs, raw_input = _parse_request(ctx, raw)
            else:  # a large body is parsed off the event loop, so other requests go on meanwhile
                served, mode, inputs, raw_input = await run_in_threadpool(_parse_request, ctx, raw)
            quote = paid.quote(served.model_id, served.name, mode)
            rows = request_rows([t.shape for t in inputs.values()])
            if mode == Mode.ZKML and rows != 1:
                raise TooManyRows(f"{rows} rows; a zkml circuit proves one row per request")
            if rows == 0:  # nothing to run and nothing to charge: a receipt for 0 would never settle
                raise InvalidInputError("the input has no rows")
            if rows > quote.max_rows:
                raise TooManyRows(f"{rows} rows; {quote.model_name!r} takes at most {quote.max_rows} per request")
            accepted = await paid.hold(ctx.gate.charge, quote, rows)
        zk: ZkAnswer | None = None
        try:
            if mode == Mode.TEE:  # the enclave runs its own copy of the model and signs what it computed
                output, signed = await _in_enclave(ctx, served, raw_input, tee_terms(ctx, quote, accepted))
            else:
                output, signed, zk = await _locally(ctx, served, quote, accepted, inputs)
            answer: dict[str, Any] = {"output": output}
            if zk is not None:
                answer["zk"] = {"instances": [list(row) for row in zk.instances]}
            keep(ctx, signed, accepted, answer, zk)  # the output kept for the client, as answered
        finally:
            ctx.gate.release(accepted)  # the receipt now counts as unsettled, or the request failed
        kept(ctx, proof_job=zk is not None)
        metrics.inferences.labels(quote.model_name, mode).inc()
        metrics.latency.observe(time.perf_counter() - started)
        answer = {**answer, "receipt": signed.to_json(), "status": Status.PROVING if zk else Status.PENDING}
        headers = payment_response_headers(accepted, ctx.chain_id, signed.id)
        return Response(orjson.dumps(answer), media_type="application/json", headers=headers)

    @app.get("/v1/receipts/{receipt_id}")
    async def get_receipt(receipt_id: str) -> dict[str, Any]:
        stored = ctx.store.get(receipt_id.lower())
        if stored is None:
            raise ReceiptNotFound(f"this node has no receipt {receipt_id}")
        return stored.to_json()

    @app.get("/v1/outputs/{request_id}")
    async def get_output(request_id: str, request: Request) -> Response:
        """The output of a paid request whose answer was lost, for its paying client (haca.node.outputs);
        read and encoded off the event loop (an output may be megabytes)."""
        body = await run_in_threadpool(lambda: orjson.dumps(output_answer(ctx, request.headers, request_id)))
        return Response(body, media_type="application/json")

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


async def _locally(
    ctx: NodeContext, served: ServedModel, quote: Quote, accepted: AcceptedPayment, inputs: dict[str, Tensor]
) -> tuple[Any, SignedReceipt, ZkAnswer | None]:
    """vanilla and zkml: the node's runtime computes; zkml commits to the circuit's answer before proving it."""
    assert isinstance(served.model, OnnxModel)
    outputs = await run_in_threadpool(served.model.run, inputs)
    zk: ZkAnswer | None = None
    if quote.mode == Mode.ZKML:
        try:
            zk = await run_in_threadpool(zk_answer, served, inputs, outputs)
        except ProofError as exc:  # e.g. an input far outside the range the circuit was calibrated on
            raise InvalidInputError(f"this input cannot be proved by {served.name!r}'s circuit: {exc}") from None
        outputs = zk.outputs
    signed = local_receipt(ctx, quote, accepted, tensors_hash(inputs), tensors_hash(outputs), zk)
    return tensors_to_json(outputs), signed, zk


async def _in_enclave(ctx: NodeContext, served: ServedModel, raw_input: Any, terms: Terms) -> tuple[Any, SignedReceipt]:
    """tee: the input exactly as the client sent it goes to the enclave; its outputs and receipt come back."""
    try:
        return await enclave_of(ctx).infer(served.model_id, raw_input, terms)
    except EnclaveRefusal as exc:  # the enclave judged the input itself (the host checked it too)
        raise InvalidInputError(exc.reason) from None


def _parse_request(ctx: NodeContext, raw: bytes) -> tuple[ServedModel, str, dict[str, Tensor], Any]:
    """The body as (model, mode, input tensors, the input as sent); a NodeError (4xx) when it is not
    a valid request."""
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
        return served, mode, served.model.prepare(body["input"]), body["input"]
    except InvalidInput as exc:
        raise InvalidInputError(str(exc)) from exc


def _resolve(ctx: NodeContext, body: dict[str, Any]) -> tuple[ServedModel, str]:
    name, mode = body["model"], body.get("mode", Mode.VANILLA)
    if not isinstance(name, str) or name not in ctx.models:
        names = sorted({s.name for s in ctx.models.values()})
        raise ModelNotFound(f"model {name!r} is not served here; models: {names}")
    served = ctx.models[name]
    if not isinstance(mode, str) or mode not in ctx.modes:
        raise ModeNotSupported(f"mode {mode!r} is not offered for {served.name!r}; node modes {list(ctx.modes)}")
    return served, mode
