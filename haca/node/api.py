"""The node's HTTP API (FastAPI): POST /v1/infer, GET /v1/receipts/{id}, GET /v1/models,
/healthz, /metrics. Errors are JSON `{"error": {"code", "message"}}`; 402 is x402-shaped."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from haca.client.errors import ChainUnavailable, HacaError
from haca.crypto.keys import PrivateKey
from haca.node.errors import (
    InvalidInputError,
    InvalidRequest,
    ModelNotFound,
    ModeNotSupported,
    NodeError,
    PayloadTooLarge,
    PaymentRequired,
    ReceiptNotFound,
    RequestConflict,
)
from haca.node.payments import (
    PAYMENT_RESPONSE_HEADER,
    AcceptedPayment,
    PaymentGate,
    Quote,
    payment_response_header,
)
from haca.node.receipts import DuplicateRequest, ReceiptStore
from haca.runtime.onnx import InvalidInput, OnnxModel
from haca.types.receipt import Receipt, SignedReceipt
from haca.types.tensor import tensors_hash, tensors_to_json

MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class ServedModel:
    manifest: dict[str, Any]  # the on-chain manifest
    model: OnnxModel
    fee: int  # max(node price, model price)

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "id": m["model_id"],
            "name": m["name"],
            "version": m["version"],
            "modes": m["modes"],
            "price": self.fee,
            "input_schema": m["input_schema"],
            "output_schema": m["output_schema"],
            "provider": self.model.provider,
        }


@dataclass
class NodeContext:
    key: PrivateKey
    chain_id: str
    models: dict[str, ServedModel]  # by name and by id
    modes: tuple[str, ...]
    gate: PaymentGate
    store: ReceiptStore
    on_receipt: Any = None  # called after a receipt is queued (wakes the settler)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.inferences = Counter("haca_inferences", "inferences served", ["model", "mode"], registry=self.registry)
        self.latency = Histogram("haca_inference_seconds", "time to answer /v1/infer", registry=self.registry)
        self.rejected = Counter("haca_requests_rejected", "requests refused", ["status"], registry=self.registry)
        self.pending = Gauge("haca_receipts_pending", "receipts not yet settled", registry=self.registry)


def create_app(ctx: NodeContext) -> FastAPI:
    app = FastAPI(title="HACA inference node", version="1")
    metrics = Metrics()

    @app.exception_handler(NodeError)
    async def node_error(request: Request, exc: NodeError) -> JSONResponse:
        metrics.rejected.labels(str(exc.status)).inc()
        if isinstance(exc, PaymentRequired):
            return JSONResponse(exc.requirements or {"x402Version": 1, "error": str(exc), "accepts": []}, 402)
        return JSONResponse({"error": {"code": exc.code, "message": str(exc)}}, exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": {"code": "http_error", "message": str(exc.detail)}}, exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": {"code": "invalid_request", "message": str(exc.errors())}}, 422)

    @app.exception_handler(HacaError)
    async def chain_error(request: Request, exc: HacaError) -> JSONResponse:
        """A chain read failed: 503 when no RPC endpoint answers, 502 for any other chain error."""
        if isinstance(exc, ChainUnavailable):
            metrics.rejected.labels("503").inc()
            message = "the node cannot reach the chain: no RPC endpoint answered; retry shortly"
            return JSONResponse({"error": {"code": exc.code, "message": message}}, 503, {"Retry-After": "3"})
        metrics.rejected.labels("502").inc()
        return JSONResponse({"error": {"code": "chain_error", "message": f"chain read failed ({exc.code})"}}, 502)

    @app.post("/v1/infer")
    async def infer(request: Request) -> Response:
        started = time.perf_counter()
        body = await _json_body(request)
        served, mode = _resolve(ctx, body)
        try:
            inputs = served.model.prepare(body["input"])
        except InvalidInput as exc:
            raise InvalidInputError(str(exc)) from exc
        quote = Quote(served.manifest["model_id"], served.manifest["name"], mode, served.fee, str(request.url))
        accepted = ctx.gate.authorize(request.headers, quote)
        try:
            outputs = await run_in_threadpool(served.model.run, inputs)
            signed = _queue_receipt(ctx, quote, accepted, tensors_hash(inputs), tensors_hash(outputs))
        finally:
            ctx.gate.release(accepted)  # the receipt now counts as unsettled, or the request failed
        if ctx.on_receipt is not None:
            ctx.on_receipt()
        metrics.inferences.labels(quote.model_name, mode).inc()
        metrics.latency.observe(time.perf_counter() - started)
        answer = {"output": tensors_to_json(outputs), "receipt": signed.to_json(), "status": "pending"}
        headers = {PAYMENT_RESPONSE_HEADER: payment_response_header(accepted, ctx.chain_id, signed.id)}
        return Response(orjson.dumps(answer), media_type="application/json", headers=headers)

    @app.get("/v1/receipts/{receipt_id}")
    async def get_receipt(receipt_id: str) -> dict[str, Any]:
        stored = ctx.store.get(receipt_id.lower())
        if stored is None:
            raise ReceiptNotFound(f"this node has no receipt {receipt_id}")
        return stored.to_json()

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        unique = {s.manifest["model_id"]: s for s in ctx.models.values()}
        return {"object": "list", "data": [s.describe() for s in unique.values()]}

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


def _queue_receipt(
    ctx: NodeContext, quote: Quote, accepted: AcceptedPayment, input_hash: str, output_hash: str
) -> SignedReceipt:
    """Sign the receipt and write it to the durable queue before the answer leaves."""
    receipt = Receipt(
        chain_id=ctx.chain_id,
        node=ctx.key.address,
        client=accepted.client,
        request_id=accepted.request_id,
        model_id=quote.model_id,
        mode=quote.mode,
        input_hash=input_hash,
        output_hash=output_hash,
        fee=quote.fee,
        height_hint=ctx.gate.chain.height(),
        timestamp=int(time.time()),
    )
    signed = SignedReceipt(receipt, receipt.sign(ctx.key))
    try:
        ctx.store.add(signed, accepted.payment)
    except DuplicateRequest as exc:
        raise RequestConflict(str(exc)) from exc
    return signed


async def _json_body(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"body is {declared} bytes; the limit is {MAX_BODY_BYTES}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"body exceeds the {MAX_BODY_BYTES}-byte limit")
        chunks.append(chunk)
    try:
        body = orjson.loads(b"".join(chunks))
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest('body must be a JSON object {"model", "mode", "input"}')
    missing = {"model", "input"} - set(body)
    if missing or set(body) - {"model", "mode", "input"}:
        raise InvalidRequest(f'body must have "model" and "input" (and optional "mode"); missing {sorted(missing)}')
    return body


def _resolve(ctx: NodeContext, body: dict[str, Any]) -> tuple[ServedModel, str]:
    name, mode = body["model"], body.get("mode", "vanilla")
    if not isinstance(name, str) or name not in ctx.models:
        names = sorted({s.manifest["name"] for s in ctx.models.values()})
        raise ModelNotFound(f"model {name!r} is not served here; models: {names}")
    served = ctx.models[name]
    if mode not in ctx.modes or mode not in served.manifest["modes"]:
        raise ModeNotSupported(
            f"mode {mode!r} is not offered for {served.manifest['name']!r}; "
            f"node modes {list(ctx.modes)}, model modes {served.manifest['modes']}"
        )
    return served, mode
