"""Client side of paying for an inference: answer a node's 402 by signing an authorisation,
and check what comes back (the receipt's signature, hashes, request and fee) locally."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from haca.client.errors import HacaError, QueryFailed
from haca.client.errors import PaymentRequiredError as PaymentRequiredError  # defined with the node's errors
from haca.client.records import ProvenReader, proven_manifest, proven_node
from haca.crypto.keys import PrivateKey
from haca.proofs.receipt import EvidenceError
from haca.proofs.verifier import EnclaveStanding, VerifyContext, verifiers, verify
from haca.proofs.zk.instances import check_answer_instances
from haca.proofs.zk.proof import instances_commitment, parse_instances
from haca.types.modes import Mode
from haca.types.payment import PaymentAuthorization, SpendingAllowance, encode_api_key
from haca.types.receipt import SignedReceipt
from haca.types.registry import PRICE_UNITS, CircuitRecord, ModelManifest, PriceUnit, request_fee, request_rows
from haca.types.tensor import TensorError, parse_input, schema_from_json, tensors_from_json, tensors_hash

_VERIFIERS = verifiers()
TERMS_LAG_BLOCKS = 5  # how far the quoted terms' height may be from the chain's (proven) height, either way


class InputInvalid(HacaError):
    """The caller's input does not fit the model's input schema."""

    code = "invalid_input"


class ReceiptInvalid(HacaError):
    """A node's answer does not match its receipt: do not trust it."""

    code = "receipt_invalid"


@dataclass(frozen=True)
class PaymentOffer:
    """One entry of a node's 402 answer: a model and mode it serves, and on what terms."""

    chain_id: str
    node: str
    unit_price: int
    price_unit: str  # "request" | "row"
    max_rows: int
    model_id: str
    model: str
    mode: str
    expiry: int
    terms_height: int  # the height whose on-chain terms the node quotes

    def fee(self, rows: int) -> int:
        return request_fee(self.unit_price, self.price_unit, rows)

    @classmethod
    def from_402(cls, body: dict[str, Any], model: str, mode: str) -> PaymentOffer:
        """The offer for `model` (name or id) in `mode` among the node's payment requirements."""
        try:
            offers = [cls._parse(a) for a in body["accepts"] if a["scheme"] == "haca-escrow"]
        except (KeyError, TypeError, ValueError) as exc:
            raise PaymentRequiredError(f"node answered 402 without usable requirements: {exc}") from exc
        for offer in offers:
            if model in (offer.model, offer.model_id) and offer.mode == mode:
                return offer
        served = sorted({f"{o.model} ({o.mode})" for o in offers})
        raise PaymentRequiredError(f"node offers no {model!r} in mode {mode!r}; it offers {served}")

    @classmethod
    def _parse(cls, accept: dict[str, Any]) -> PaymentOffer:
        extra = accept["extra"]
        if extra["price_unit"] not in PRICE_UNITS:
            raise ValueError(f"unknown price unit {extra['price_unit']!r}")
        return cls(
            str(accept["network"]),
            str(accept["payTo"]).lower(),
            int(extra["price"]),
            str(extra["price_unit"]),
            int(extra["max_rows"]),
            str(extra["model_id"]),
            str(extra["model"]),
            str(extra["mode"]),
            int(extra["suggested_expiry"]),
            int(extra["terms_height"]),
        )


def chain_terms(
    chain: ProvenReader, model_id: str, model: str, mode: str, node: str, terms_height: int
) -> ModelManifest:
    """The model's manifest in effect at the quoted `terms_height`, and the node's registration,
    both read with state proofs against light-client-verified headers (recent ones: see
    haca.client.chain), so that neither the node nor the RPC sets the price a payer is bounded by.
    The quoted height must be near the proven one; the manifest must be for `model_id`, named
    `model`, in effect by then, and the chain must register `node` for `mode`."""
    try:
        # under the name this node serves the bytes by
        manifest, height = proven_manifest(chain, model_id, terms_height, node)
        registered = proven_node(chain, node)
    except QueryFailed as exc:
        raise PaymentRequiredError(f"the node's offer is not backed by the chain: {exc}") from exc
    if not height - TERMS_LAG_BLOCKS <= terms_height <= height + TERMS_LAG_BLOCKS:
        raise PaymentRequiredError(f"node quotes the terms of height {terms_height}; the chain is at {height}")
    if manifest.name != model:
        raise ReceiptInvalid(f"node offers {model_id} as {model!r}; the chain names it {manifest.name!r}")
    if mode not in registered.modes:
        raise PaymentRequiredError(f"node {node} is not registered on chain for mode {mode!r}")
    return manifest


def chain_max_amount(manifest: ModelManifest) -> int:
    """The most one request can cost at the model's terms on chain (`manifest`): what a node
    quotes as its x402 amount when it charges exactly the model's prices."""
    if manifest.price_unit == PriceUnit.TOKEN:  # prompt and completion tokens share the context
        return manifest.max_rows * max(manifest.price, manifest.completion_price)
    return manifest.fee(manifest.max_rows)


def accept_fee(offer: PaymentOffer, rows: int, max_fee: int | None, manifest: ModelManifest) -> int:
    """The fee to sign for `rows` rows on `offer`, after checking it is one the caller accepts:
    at most `max_fee`, or, without one, at most the model's price on chain (its terms in effect at
    the quoted height). A node's own registered price can change at once, so it never raises the
    default bound: paying a node above the model's price takes an explicit `max_fee`."""
    if rows > offer.max_rows:
        raise PaymentRequiredError(f"{rows} rows; the node takes at most {offer.max_rows} per request")
    fee = offer.fee(rows)
    if max_fee is not None:
        if fee > max_fee:
            raise PaymentRequiredError(f"node asks {fee}, more than the max fee {max_fee}")
        return fee
    published = manifest.fee(rows)
    if fee > published:
        raise PaymentRequiredError(
            f"node asks {fee}, more than the model's price on chain ({published} for {rows} rows);"
            " pass a max fee to accept"
        )
    return fee


def input_rows(raw_input: Any, input_schema: dict[str, Any]) -> int:
    """The rows a request's input has, as the node counts them for its fee."""
    try:
        inputs = parse_input(raw_input, schema_from_json(input_schema))
    except TensorError as exc:
        raise InputInvalid(f"input does not fit the model: {exc}") from exc
    return request_rows([t.shape for t in inputs.values()])


def sign_payment(key: PrivateKey, offer: PaymentOffer, fee: int) -> tuple[PaymentAuthorization, str]:
    """An X-PAYMENT header value authorising exactly `fee` for one request on this offer."""
    auth = PaymentAuthorization(
        offer.chain_id,
        key.address,
        offer.node,
        "0x" + secrets.token_bytes(32).hex(),
        offer.model_id,
        offer.mode,
        fee,
        offer.expiry,
    )
    payload = {
        "x402Version": 1,
        "scheme": "haca-escrow",
        "network": offer.chain_id,
        "payload": {"authorization": auth.to_json(), "signature": "0x" + auth.sign(key).hex()},
    }
    return auth, base64.b64encode(json.dumps(payload).encode()).decode()


def check_height_hint(height_hint: int, terms_height: int) -> None:
    """A receipt's height hint must be the height the node quoted (within TERMS_LAG_BLOCKS): a
    receipt signed with an old hint leaves its client little or none of the claim window."""
    if abs(height_hint - terms_height) > TERMS_LAG_BLOCKS:
        raise ReceiptInvalid(
            f"answer does not verify: the receipt's height hint {height_hint} is not the quoted height {terms_height}"
            f" (± {TERMS_LAG_BLOCKS}): an old hint would shorten the time to claim it"
        )


def create_api_key(
    key: PrivateKey, chain_id: str, node: str, cap: int, expiry: int, nonce: int, max_per_request: int = 0
) -> str:
    """A bearer API key: an allowance for `node` of `cap` in all and `max_per_request` per request (0: cap only)."""
    allowance = SpendingAllowance(chain_id, key.address, node.lower(), cap, expiry, nonce, max_per_request)
    return encode_api_key(allowance, allowance.sign(key))


def verify_answer(
    answer: dict[str, Any],
    raw_input: Any,
    input_schema: dict[str, Any],
    node: str,
    auth: PaymentAuthorization | None = None,
    enclave: Callable[[str], EnclaveStanding | None] | None = None,
    circuit: CircuitRecord | None = None,
) -> SignedReceipt:
    """Check a node's answer without trusting the node: the receipt is signed by `node` (tee: by
    an enclave key `enclave` says the chain attested for it) and commits to this input and this
    output (and, when paid per request, to this request and to exactly the fee the client signed for)."""
    try:
        signed = SignedReceipt.from_json(answer["receipt"])
        if signed.receipt.node != node.lower():
            raise ReceiptInvalid(f"receipt is signed by {signed.receipt.node}, not by the node {node}")
        # The same verifier the validators run, with what the client knows: the node it paid.
        context = VerifyContext(signed.receipt.chain_id, 0, 0, "", node.lower(), enclave=enclave or (lambda key: None))
        if signed.receipt.mode == Mode.ZKML:  # signed by the node; its proof comes later (see _check_zk_answer)
            _VERIFIERS[Mode.VANILLA].verify(signed, b"", context)
        else:
            verify(_VERIFIERS, signed, b"", context)
        inputs = parse_input(raw_input, schema_from_json(input_schema))
        outputs = tensors_from_json(answer["output"], "output")
    except (KeyError, ValueError, EvidenceError, TensorError) as exc:
        raise ReceiptInvalid(f"answer does not verify: {exc}") from exc
    receipt = signed.receipt
    if receipt.input_hash != tensors_hash(inputs):
        raise ReceiptInvalid("receipt's input hash is not the hash of the input sent")
    if receipt.output_hash != tensors_hash(outputs):
        raise ReceiptInvalid("receipt's output hash is not the hash of the output returned")
    if receipt.mode == Mode.ZKML:
        _check_zk_answer(answer, receipt.instances_hash, circuit, inputs, outputs)
    if auth is not None:
        if (receipt.request_id, receipt.model_id, receipt.mode) != (auth.request_id, auth.model_id, auth.mode):
            raise ReceiptInvalid("receipt is for another request, model or mode")
        if receipt.fee != auth.max_fee:
            raise ReceiptInvalid(f"receipt charges {receipt.fee}; the client signed for {auth.max_fee}")
    return signed


def _check_zk_answer(
    answer: dict[str, Any],
    instances_hash: str,
    circuit: CircuitRecord | None,
    inputs: dict[str, Any],
    outputs: dict[str, Any],
) -> None:
    """A zkml answer's instances: the ones the receipt commits to, committing to this input and
    standing for exactly this output (before any proof exists; the chain checks the proof)."""
    if circuit is None:
        raise ReceiptInvalid("a zkml answer is checked against the model's circuit on chain; none was given")
    try:
        instances = parse_instances(answer.get("zk", {}).get("instances"))
        if instances_commitment(instances) != instances_hash:
            raise EvidenceError("the answer's instances are not the ones the receipt commits to")
        flat = [[float(v) for v in inputs[name].values] for name in sorted(inputs)]
        arrays = [np.asarray(outputs[name].values, dtype=np.float32) for name in sorted(outputs)]
        check_answer_instances(instances, circuit, flat, arrays)
    except (EvidenceError, AttributeError, TypeError, KeyError) as exc:
        raise ReceiptInvalid(f"zkml answer does not verify: {exc}") from exc
