"""What the node's HTTP routes share: the node's context (key, models, payment gate, receipt
store, enclave), the quotes in effect, and the body reader."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request

from haca.crypto.keys import PrivateKey
from haca.node.chainview import ReadPending
from haca.node.enclave import EnclaveKey
from haca.node.errors import EnclaveUnavailable, PayloadTooLarge
from haca.node.metrics import Metrics
from haca.node.payments import PaymentGate, Quote
from haca.node.receipts import ReceiptQueue
from haca.proofs.zk.circuit import Circuit
from haca.proofs.zk.instances import dequantized_outputs
from haca.proofs.zk.proof import Instances, witness_instances
from haca.runtime.llm import LlmModel
from haca.runtime.onnx import OnnxModel
from haca.types.modes import Mode
from haca.types.registry import ModelManifest, PriceUnit
from haca.types.tensor import Tensor

MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class ServedModel:
    manifest: ModelManifest  # the on-chain manifest the node loaded (its terms come from the chain per height)
    model: OnnxModel | LlmModel  # an ONNX graph, or (kind gguf) a language model
    circuit: Circuit | None = None  # zkml: this model's EZKL circuit (its vk matching the manifest's)

    @property
    def llm(self) -> LlmModel | None:
        return self.model if isinstance(self.model, LlmModel) else None

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def proves(self) -> bool:
        """zkml is offered for a circuit of one input whose outputs come in name order: a client
        reads the instances in the order of the answer's (sorted) output names."""
        if not isinstance(self.model, OnnxModel):
            return False
        names = self.model.output_names
        return self.circuit is not None and len(self.model.inputs) == 1 and names == sorted(names)


@dataclass
class NodeContext:
    key: PrivateKey
    chain_id: str
    models: dict[str, ServedModel]  # by name and by id
    modes: tuple[str, ...]
    gate: PaymentGate
    store: ReceiptQueue
    on_receipt: Callable[[], None] | None = None  # called after a receipt is queued (wakes the settler)
    price: int = 0  # the node's own price per unit; the fee is max(this, the model's price)
    quotes: tuple[int, dict[tuple[str, str], Quote]] | None = None  # (height, quotes) last computed
    enclave: EnclaveKey | None = None  # tee: the enclave that runs tee requests and signs their receipts
    on_proof_job: Callable[[], None] | None = None  # zkml: called after a proof job is queued (wakes the prover)
    llm_queue: int = 8  # LLM requests that may wait for a slot (per model); more get 429
    # (height, tensor models' quotes, LLMs' quotes): current_quotes split per route
    split_quotes: tuple[int, dict[tuple[str, str], Quote], dict[tuple[str, str], Quote]] | None = None
    metrics: Metrics = field(default_factory=Metrics)  # GET /metrics; the settler and prover count here too


def current_quotes(ctx: NodeContext) -> dict[tuple[str, str], Quote]:
    """What every served (model id, mode) costs now: the terms in effect on chain at the current
    height, recomputed once per block. On the event loop, while the terms of a new height are
    still being read (ReadPending), those of the height before are used: a receipt's height hint
    names the terms it was priced by, and the chain judges it by them."""
    height = ctx.gate.chain.height()
    if ctx.quotes is not None and ctx.quotes[0] == height:
        return ctx.quotes[1]
    try:
        return _quotes_at(ctx, height)
    except ReadPending:
        if ctx.quotes is None:
            raise
        return ctx.quotes[1]


def _quotes_at(ctx: NodeContext, height: int) -> dict[tuple[str, str], Quote]:
    quotes: dict[tuple[str, str], Quote] = {}
    for served in {s.model_id: s for s in ctx.models.values()}.values():
        manifest = ctx.gate.chain.manifest_in_effect(served.model_id, height)
        if manifest is None:
            continue
        unit = manifest.price_unit
        completion = max(ctx.price, manifest.completion_price) if unit == PriceUnit.TOKEN else 0
        for mode in sorted(set(manifest.modes) & set(ctx.modes)):
            if mode == Mode.ZKML and not served.proves:
                continue  # a proof needs the circuit: without it the node does not offer zkml
            quotes[(served.model_id, mode)] = Quote(
                served.model_id,
                manifest.name,
                mode,
                max(ctx.price, manifest.price),
                unit,
                manifest.max_rows,
                height,
                completion,
            )
    ctx.quotes = (height, quotes)
    return quotes


def route_quotes(ctx: NodeContext, llm: bool) -> dict[tuple[str, str], Quote]:
    """The quotes one route serves: the tensor models' for /v1/infer, the LLMs' (priced per
    token) for the OpenAI routes; each route's 402 lists and accepts only those."""
    quotes = current_quotes(ctx)
    height = ctx.quotes[0] if ctx.quotes else 0
    if ctx.split_quotes is None or ctx.split_quotes[0] != height:  # split once per block, as the quotes are
        ctx.split_quotes = (
            height,
            {k: q for k, q in quotes.items() if q.price_unit != PriceUnit.TOKEN},
            {k: q for k, q in quotes.items() if q.price_unit == PriceUnit.TOKEN},
        )
    return ctx.split_quotes[2] if llm else ctx.split_quotes[1]


@dataclass(frozen=True)
class ZkAnswer:
    instances: Instances  # the public instances the proof will carry
    outputs: dict[str, Tensor]  # the circuit's outputs, dequantized (float32)
    inputs: list[list[float]]  # the proof job's input, in the circuit's input order


def zk_answer(served: ServedModel, inputs: dict[str, Tensor], outputs: dict[str, Tensor]) -> ZkAnswer:
    """The witness of this input (milliseconds): its instances and the outputs they stand for."""
    assert served.circuit is not None and isinstance(served.model, OnnxModel)
    flat = [[float(v) for v in inputs[name].values] for name in served.model.inputs]
    instances = witness_instances(served.circuit, flat)
    names = served.model.output_names
    sizes = [len(outputs[name].values) for name in names]
    values = dequantized_outputs(instances, served.circuit, sizes)
    circuit_outputs = {
        name: Tensor("float32", outputs[name].shape, tuple(float(v) for v in array))
        for name, array in zip(names, values, strict=True)
    }
    return ZkAnswer(instances, circuit_outputs, flat)


def enclave_of(ctx: NodeContext) -> EnclaveKey:
    if ctx.enclave is None:
        raise EnclaveUnavailable("this node has no enclave for tee mode")
    return ctx.enclave


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)
