"""The node's HTTP API (FastAPI): POST /v1/infer, GET /v1/receipts/{id}, GET /v1/models,
/healthz, /metrics. Errors are JSON `{"error": {"code", "message"}}`; 402 is x402-shaped."""

from __future__ import annotations

import asyncio
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
from haca.node.enclave import EnclaveKey
from haca.node.errors import (
    EnclaveUnavailable,
    InvalidInputError,
    InvalidRequest,
    ModelNotFound,
    ModeNotSupported,
    NodeError,
    PayloadTooLarge,
    PaymentRequired,
    ReceiptNotFound,
    RequestConflict,
    RequestTimeout,
    TooManyRows,
)
from haca.node.payments import (
    PAYMENT_RESPONSE_HEADER,
    AcceptedPayment,
    PaymentGate,
    Quote,
    payment_response_header,
)
from haca.node.receipts import DuplicateRequest, ProofJob, ReceiptStore
from haca.proofs.zk.circuit import Circuit
from haca.proofs.zk.instances import dequantized_outputs
from haca.proofs.zk.proof import Instances, instances_commitment, witness_instances
from haca.runtime.onnx import InvalidInput, OnnxModel
from haca.types.modes import Mode, Status
from haca.types.receipt import NO_INSTANCES, Receipt, SignedReceipt
from haca.types.registry import request_rows
from haca.types.tensor import Tensor, tensors_hash, tensors_to_json

MAX_BODY_BYTES = 1 << 20
BODY_DEADLINE_S = 10.0
INLINE_PARSE_BYTES = 16 << 10  # bodies up to this size are parsed on the event loop (cheaper than a thread hop)


@dataclass(frozen=True)
class ServedModel:
    manifest: dict[str, Any]  # the on-chain manifest the node loaded (its terms come from the chain per height)
    model: OnnxModel
    circuit: Circuit | None = None  # zkml: this model's EZKL circuit (its vk matching the manifest's)

    @property
    def model_id(self) -> str:
        return str(self.manifest["model_id"])

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def proves(self) -> bool:
        """zkml is offered for a circuit of one input whose outputs come in name order: a client
        reads the instances in the order of the answer's (sorted) output names."""
        names = self.model.output_names
        return self.circuit is not None and len(self.model.inputs) == 1 and names == sorted(names)


@dataclass
class NodeContext:
    key: PrivateKey
    chain_id: str
    models: dict[str, ServedModel]  # by name and by id
    modes: tuple[str, ...]
    gate: PaymentGate
    store: ReceiptStore
    on_receipt: Any = None  # called after a receipt is queued (wakes the settler)
    price: int = 0  # the node's own price per unit; the fee is max(this, the model's price)
    quotes: tuple[int, dict[tuple[str, str], Quote]] | None = None  # (height, quotes) last computed
    enclave: EnclaveKey | None = None  # tee: the attested key in the enclave that signs tee receipts
    on_proof_job: Any = None  # zkml: called after a receipt is queued for proving (wakes the prover)


def current_quotes(ctx: NodeContext) -> dict[tuple[str, str], Quote]:
    """What every served (model id, mode) costs now: the terms in effect on chain at the current
    height, recomputed once per block."""
    height = ctx.gate.chain.height()
    if ctx.quotes is not None and ctx.quotes[0] == height:
        return ctx.quotes[1]
    quotes: dict[tuple[str, str], Quote] = {}
    for served in {s.model_id: s for s in ctx.models.values()}.values():
        manifest = ctx.gate.chain.manifest_in_effect(served.model_id, height)
        if manifest is None:
            continue
        for mode in sorted(set(manifest["modes"]) & set(ctx.modes)):
            if mode == Mode.ZKML and not served.proves:
                continue  # a proof needs the circuit: without it the node does not offer zkml
            quotes[(served.model_id, mode)] = Quote(
                served.model_id,
                manifest["name"],
                mode,
                max(ctx.price, int(manifest["price"])),
                manifest["price_unit"],
                int(manifest["max_rows"]),
                height,
            )
    ctx.quotes = (height, quotes)
    return quotes


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
    }


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.inferences = Counter("haca_inferences", "inferences served", ["model", "mode"], registry=self.registry)
        self.latency = Histogram("haca_inference_seconds", "time to answer /v1/infer", registry=self.registry)
        self.rejected = Counter("haca_requests_rejected", "requests refused", ["status"], registry=self.registry)
        self.pending = Gauge("haca_receipts_pending", "receipts not yet settled", registry=self.registry)
        self.bodies_parsed = Counter(
            "haca_request_bodies_parsed",
            "request bodies parsed (only paid requests get that far)",
            ["size"],
            registry=self.registry,
        )


def create_app(ctx: NodeContext) -> FastAPI:
    app = FastAPI(title="HACA inference node", version="1")
    app.state.context = ctx
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
        quotes = current_quotes(ctx)
        try:
            # Payment first, from the headers alone: an unpaid request never has its body read.
            pending = ctx.gate.check(request.headers, quotes)
            try:
                async with asyncio.timeout(BODY_DEADLINE_S):  # a paid body trickled in cannot outlive its payment
                    raw = await _read_body(request)
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
                _enclave(ctx).require_covered(quote.height)
            rows = request_rows([t.shape for t in inputs.values()])
            if mode == Mode.ZKML and rows != 1:
                raise TooManyRows(f"{rows} rows; a zkml circuit proves one row per request")
            if rows == 0:  # nothing to run and nothing to charge: a receipt for 0 would never settle
                raise InvalidInputError("the input has no rows")
            if rows > quote.max_rows:
                raise TooManyRows(f"{rows} rows; {quote.model_name!r} takes at most {quote.max_rows} per request")
            accepted = ctx.gate.charge(pending, quote, rows)
        except PaymentRequired as exc:
            raise PaymentRequired(
                str(exc), ctx.gate.requirements(quotes.values(), str(exc), str(request.url))
            ) from None
        try:
            outputs = await run_in_threadpool(served.model.run, inputs)
            zk: ZkAnswer | None = None
            if mode == Mode.ZKML:  # the answer is what the circuit computes, committed before it is proved
                zk = await run_in_threadpool(_zk_answer, served, inputs, outputs)
                outputs = zk.outputs
            signed = await _queue_receipt(ctx, quote, accepted, tensors_hash(inputs), tensors_hash(outputs), zk)
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
        unique = {s.model_id: s for s in ctx.models.values()}
        quotes = current_quotes(ctx)
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


@dataclass(frozen=True)
class ZkAnswer:
    instances: Instances  # the public instances the proof will carry
    outputs: dict[str, Tensor]  # the circuit's outputs, dequantized (float32)
    inputs: list[list[float]]  # the proof job's input, in the circuit's input order


def _zk_answer(served: ServedModel, inputs: dict[str, Tensor], outputs: dict[str, Tensor]) -> ZkAnswer:
    """The witness of this input (milliseconds): its instances and the outputs they stand for."""
    assert served.circuit is not None
    flat = [[float(v) for v in inputs[name].values] for name in served.model.inputs]
    instances = witness_instances(served.circuit, flat)
    facts = {"input_visibility": served.circuit.input_visibility, "output_scales": served.circuit.output_scales}
    names = served.model.output_names
    sizes = [len(outputs[name].values) for name in names]
    values = dequantized_outputs(instances, facts, sizes)
    circuit_outputs = {
        name: Tensor("float32", outputs[name].shape, tuple(float(v) for v in array))
        for name, array in zip(names, values, strict=True)
    }
    return ZkAnswer(instances, circuit_outputs, flat)


async def _queue_receipt(
    ctx: NodeContext,
    quote: Quote,
    accepted: AcceptedPayment,
    input_hash: str,
    output_hash: str,
    zk: ZkAnswer | None = None,
) -> SignedReceipt:
    """Sign the receipt (tee: inside the enclave) and write it to the durable queue before the
    answer leaves."""
    receipt = Receipt(
        chain_id=ctx.chain_id,
        node=ctx.key.address,
        client=accepted.client,
        request_id=accepted.request_id,
        model_id=quote.model_id,
        mode=quote.mode,
        input_hash=input_hash,
        output_hash=output_hash,
        fee=accepted.fee,
        height_hint=quote.height,  # the chain judges the fee by the terms in effect here
        timestamp=int(time.time()),
        instances_hash=instances_commitment(zk.instances) if zk else NO_INSTANCES,
    )
    if quote.mode == Mode.TEE:
        signature = await _enclave(ctx).sign(receipt)
    else:
        signature = receipt.sign(ctx.key)
    signed = SignedReceipt(receipt, signature)
    job = ProofJob(signed.id, quote.model_id, zk.inputs, 0) if zk else None
    try:
        ctx.store.add(signed, accepted.payment, proof_job=job)
    except DuplicateRequest as exc:
        raise RequestConflict(str(exc)) from exc
    return signed


def _enclave(ctx: NodeContext) -> EnclaveKey:
    if ctx.enclave is None:
        raise EnclaveUnavailable("this node has no enclave for tee mode")
    return ctx.enclave


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"body is {declared} bytes; the limit is {MAX_BODY_BYTES}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"body exceeds the {MAX_BODY_BYTES}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


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
