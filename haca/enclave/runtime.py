"""The enclave's work: it runs the model and signs only receipts it produced.

The host (the inference node) keeps HTTP, payments, the receipt store and the settler. For a tee
request it hands the enclave the client's request as it arrived and the terms it quoted; the
enclave parses the request itself, runs its own copy of the model (loaded by id, see
`haca.enclave.models`), and computes everything the receipt says: the input hash from the request
it received, the output hash from what it computed, rows or prompt/completion tokens, the fee
from the terms (the chain checks that fee against the terms in effect at the height hint). Then it
signs. There is no operation that signs a receipt the host built, and a batch root is signed only
over receipts this enclave produced (kept in its memory; after a restart, older receipts settle
one by one on their own signatures).

The receipt key is generated in memory at start and never leaves the process: a restart is a new
key that must be registered again with fresh evidence.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import coincurve

from haca.crypto.keys import PrivateKey
from haca.enclave.evidence import CpuPlatform, GpuPlatform
from haca.enclave.models import LoadedModel, ModelRefused, ModelStore
from haca.proofs.tee.attestation import Attestation
from haca.proofs.tee.binding import gpu_report_nonce, key_binding
from haca.runtime.llm import ContextExceeded, LlmModel, Outcome
from haca.runtime.onnx import InvalidInput, OnnxModel
from haca.types import fields
from haca.types.batch import MsgSettleBatch
from haca.types.llm import LlmRequest, parse_request, text_hash
from haca.types.modes import Mode
from haca.types.receipt import Receipt, SignedReceipt
from haca.types.registry import PRICE_UNITS, PriceUnit, request_fee, request_rows, token_fee
from haca.types.tee import GpuEvidence
from haca.types.tensor import Tensor, tensors_hash

PRODUCED_LIMIT = 1 << 18  # receipt ids remembered for batch roots (~40 MB); older ones settle alone


class EnclaveRefused(ValueError):
    """A request the enclave will not serve or sign; the message says why."""


class InputRefused(EnclaveRefused):
    """The request's input does not fit the model or the terms (the client's fault, a 4xx)."""


@dataclass(frozen=True)
class Terms:
    """What the host quoted for one request. The enclave takes the prices as given: the chain
    refuses a receipt whose fee does not match the terms in effect at `height_hint`."""

    chain_id: str
    node: str
    client: str
    request_id: str
    height_hint: int
    unit_price: int  # per request, row, or prompt token
    price_unit: str  # "request" | "row" | "token"
    max_rows: int  # rows a request may have; an LLM: context tokens
    completion_price: int = 0  # LLM: per completion token
    budget: int = 0  # LLM: the most the payment held covers (generation stops before it is passed)

    @classmethod
    def from_json(cls, doc: Any) -> Terms:
        doc = fields.require_fields(
            doc,
            {
                "chain_id",
                "node",
                "client",
                "request_id",
                "height_hint",
                "unit_price",
                "price_unit",
                "max_rows",
                "completion_price",
                "budget",
            },
            "terms",
        )
        if doc["price_unit"] not in PRICE_UNITS:
            raise EnclaveRefused(f"terms.price_unit: expected one of {list(PRICE_UNITS)}")
        return cls(
            fields.text(doc["chain_id"], "terms.chain_id", 64),
            fields.address(doc["node"], "terms.node"),
            fields.address(doc["client"], "terms.client"),
            fields.bytes32(doc["request_id"], "terms.request_id"),
            fields.uint(doc["height_hint"], "terms.height_hint", 64),
            fields.uint(doc["unit_price"], "terms.unit_price", 128),
            str(doc["price_unit"]),
            fields.uint(doc["max_rows"], "terms.max_rows", 32),
            fields.uint(doc["completion_price"], "terms.completion_price", 128),
            fields.uint(doc["budget"], "terms.budget", 128),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "node": self.node,
            "client": self.client,
            "request_id": self.request_id,
            "height_hint": self.height_hint,
            "unit_price": self.unit_price,
            "price_unit": self.price_unit,
            "max_rows": self.max_rows,
            "completion_price": self.completion_price,
            "budget": self.budget,
        }

    def completion_budget(self, prompt_tokens: int) -> int:
        """The completion tokens the budget covers after a prompt of `prompt_tokens` tokens, and the
        terms allow (a request's prompt and completion together take at most `max_rows` tokens:
        the chain refuses a receipt counting more). ContextExceeded when the prompt alone does not fit."""
        room = self.max_rows - prompt_tokens
        if room < 1:
            raise ContextExceeded(
                f"the prompt is {prompt_tokens} tokens; this model's terms allow {self.max_rows} tokens a request"
                " (prompt and completion)"
            )
        left = self.budget - prompt_tokens * self.unit_price
        if left < 0:
            return 0
        return min(room, left // self.completion_price if self.completion_price else room)


@dataclass(frozen=True)
class EvidenceBundle:
    """What one key registration carries: the CPU document and the GPU reports, all bound to it."""

    cpu: Attestation
    gpus: tuple[GpuEvidence, ...]
    report_data: bytes


class Enclave:
    def __init__(
        self,
        platform: CpuPlatform,
        measurement: bytes,
        models: ModelStore,
        gpus: GpuPlatform | None = None,
        produced_limit: int = PRODUCED_LIMIT,
    ) -> None:
        self.platform, self.measurement, self.models, self.gpus = platform, measurement, models, gpus
        self._key = PrivateKey.generate()
        # Built once: making the libsecp256k1 key object costs more than a signature with it.
        self._signer = coincurve.PrivateKey(self._key.secret)
        self.address = self._key.address
        self._attested: set[tuple[str, str]] = set()  # (chain id, node) this key has evidence for
        self._produced: OrderedDict[bytes, None] = OrderedDict()
        self._answered: OrderedDict[tuple[str, str, str, str], None] = OrderedDict()  # request ids served
        self._produced_limit = produced_limit
        self._lock = threading.Lock()

    # --- key and evidence ---------------------------------------------------------------------

    def attest(self, chain_id: str, node: str, nonce: bytes) -> EvidenceBundle:
        """Evidence binding this key to `node` on `chain_id` after `nonce` (a block hash): the CPU
        document over the key binding, and each GPU's report over a nonce derived from it."""
        if not isinstance(chain_id, str) or not chain_id:
            raise EnclaveRefused("chain_id must be a non-empty string")
        node = fields.address(node, "node")
        gpus: tuple[GpuEvidence, ...] = ()
        if self.gpus is not None:  # its own GPUs first: the CPU evidence then binds exactly these reports
            gpus = tuple(self.gpus.reports(gpu_report_nonce(chain_id, node, self.address, bytes(nonce))))
        report_data = key_binding(chain_id, node, self.address, bytes(nonce), gpus)
        cpu = self.platform.attest(report_data)
        with self._lock:
            self._attested.add((chain_id, node))
        return EvidenceBundle(cpu, gpus, report_data)

    def _require_attested(self, chain_id: str, node: str) -> None:
        with self._lock:
            if (chain_id, node) not in self._attested:
                raise EnclaveRefused(
                    f"the enclave has not attested for node {node} on chain {chain_id!r}; call attest first"
                )

    # --- inference ----------------------------------------------------------------------------

    def load(self, model_id: str, kind: str, context: int, slots: int) -> LoadedModel:
        try:
            return self.models.load(model_id, kind, context, slots)
        except ModelRefused as exc:
            raise EnclaveRefused(str(exc)) from exc

    def _model(self, model_id: str) -> LoadedModel:
        try:
            return self.models.get(model_id)
        except ModelRefused as exc:
            raise EnclaveRefused(str(exc)) from exc

    def _answer_once(self, terms: Terms) -> None:
        """Each request id is served once: a host that could run one paid request again and again
        could keep the answer it likes best (an LLM samples) and throw the others away."""
        request = (terms.chain_id, terms.node, terms.client, terms.request_id)
        with self._lock:
            if request in self._answered:
                raise EnclaveRefused(f"request {terms.request_id} of client {terms.client} was already run here")
            self._answered[request] = None
            while len(self._answered) > self._produced_limit:
                self._answered.popitem(last=False)

    def infer(self, model_id: str, raw_input: Any, terms: Terms) -> tuple[dict[str, Tensor], SignedReceipt]:
        """Run a tensor model on the request's input as the client sent it; the outputs and the
        receipt this enclave signed for them."""
        self._require_attested(terms.chain_id, terms.node)
        loaded = self._model(model_id)
        if not isinstance(loaded.runtime, OnnxModel):
            raise EnclaveRefused(f"model {model_id} is a language model: use generate")
        if terms.price_unit == PriceUnit.TOKEN:
            raise EnclaveRefused("a tensor model is priced per request or per row, not per token")
        try:
            inputs = loaded.runtime.prepare(raw_input)
        except InvalidInput as exc:
            raise InputRefused(str(exc)) from exc
        rows = request_rows([t.shape for t in inputs.values()])
        if not 1 <= rows <= terms.max_rows:
            raise InputRefused(f"{rows} rows; the terms allow 1 to {terms.max_rows}")
        self._answer_once(terms)
        outputs = loaded.runtime.run(inputs)
        fee = request_fee(terms.unit_price, terms.price_unit, rows)
        receipt = self._receipt(terms, model_id, tensors_hash(inputs), tensors_hash(outputs), fee, (0, 0))
        return outputs, self._sign(receipt)

    def parse_llm(self, model_id: str, body: Any, kind: str) -> tuple[LlmModel, LlmRequest]:
        loaded = self._model(model_id)
        if not isinstance(loaded.runtime, LlmModel):
            raise EnclaveRefused(f"model {model_id} is not a language model")
        return loaded.runtime, parse_request(body, kind)

    def generate(
        self,
        model_id: str,
        body: Any,
        kind: str,
        terms: Terms,
        emit: Callable[[str], None],
        cancelled: threading.Event | None = None,
        deadline: float | None = None,
    ) -> tuple[Outcome, SignedReceipt]:
        """Run an LLM request (the OpenAI body as the client sent it), calling `emit` with each
        piece of text; the outcome and the receipt this enclave signed for it. Generation stops
        where the budget would be exceeded, at `deadline` (time.monotonic()), or when cancelled;
        LlmError (ContextExceeded, BudgetExhausted) when it cannot start."""
        self._require_attested(terms.chain_id, terms.node)
        if terms.price_unit != PriceUnit.TOKEN:
            raise EnclaveRefused("a language model is priced per token")
        llm, request = self.parse_llm(model_id, body, kind)
        input_hash = request.hash(model_id)
        self._answer_once(terms)
        # Without a client seed, the seed is derived from the request: run again (after a restart,
        # say) it samples the same text, so the host has no draws to choose from.
        seed = request.seed if request.seed is not None else _derived_seed(terms, input_hash)
        outcome = llm.generate(request, emit, terms.completion_budget, cancelled, deadline, seed=seed)
        fee = token_fee(terms.unit_price, terms.completion_price, outcome.prompt_tokens, outcome.completion_tokens)
        receipt = self._receipt(
            terms,
            model_id,
            input_hash,
            text_hash(outcome.text),
            fee,
            (outcome.prompt_tokens, outcome.completion_tokens),
        )
        return outcome, self._sign(receipt)

    def _receipt(
        self, terms: Terms, model_id: str, input_hash: str, output_hash: str, fee: int, tokens: tuple[int, int]
    ) -> Receipt:
        return Receipt(
            chain_id=terms.chain_id,
            node=terms.node,
            client=terms.client,
            request_id=terms.request_id,
            model_id=model_id,
            mode=Mode.TEE,
            input_hash=input_hash,
            output_hash=output_hash,
            fee=fee,
            height_hint=terms.height_hint,
            timestamp=int(time.time()),
            prompt_tokens=tokens[0],
            completion_tokens=tokens[1],
        )

    def _signature(self, digest: bytes) -> bytes:
        """65 bytes r‖s‖v over an EIP-712 digest (what `PrivateKey.sign` gives, without rebuilding the key)."""
        signature = self._signer.sign_recoverable(digest, hasher=None)
        return signature[:64] + bytes([signature[64] + 27])

    def _sign(self, receipt: Receipt) -> SignedReceipt:
        digest = receipt.digest
        signature = self._signature(digest)
        with self._lock:
            self._produced[digest] = None
            while len(self._produced) > self._produced_limit:
                self._produced.popitem(last=False)
        return SignedReceipt(receipt, signature)

    # --- batch roots --------------------------------------------------------------------------

    def sign_batch(self, chain_id: str, node: str, batch: MsgSettleBatch) -> bytes:
        """Sign the root of a batch (ReceiptBatch) only when every receipt in it is one this
        enclave produced and still remembers: the enclave hashes each receipt itself."""
        if batch.mode != Mode.TEE:
            raise EnclaveRefused(f"the enclave signs only tee batches, not {batch.mode!r} ones")
        self._require_attested(chain_id, node)
        ids = batch.receipt_ids(chain_id, node)
        with self._lock:
            unknown = [i for i, rid in enumerate(ids) if rid not in self._produced]
        if unknown:
            more = f" ({len(unknown) - 1} more items likewise)" if len(unknown) > 1 else ""
            raise EnclaveRefused(
                f"item {unknown[0]} (receipt 0x{ids[unknown[0]].hex()}) is not a receipt this enclave produced"
                f" (or remembers){more}: it signs no root over it; settle such receipts alone"
            )
        return self._signature(batch.header(chain_id, node).digest)

    def produced(self, receipt_id: bytes) -> bool:
        with self._lock:
            return receipt_id in self._produced


def _derived_seed(terms: Terms, input_hash: str) -> int:
    """A sampling seed fixed by the request (its chain, node, client, request id and hash)."""
    parts = (terms.chain_id, terms.node, terms.client, terms.request_id, input_hash)
    digest = hashlib.sha256(b"HACA-ENCLAVE-SEED/v1\x00" + "\x00".join(parts).encode()).digest()
    return int.from_bytes(digest[:4], "big")
