"""Client side of paying for an inference: answer a node's 402 by signing an authorisation,
and check what comes back (the receipt's signature, hashes, request and fee) locally."""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from typing import Any

from haca.client.errors import HacaError
from haca.crypto.keys import PrivateKey
from haca.proofs.receipt import EvidenceError, verify_receipt_signature
from haca.types.payment import PaymentAuthorization, SpendingAllowance, encode_api_key
from haca.types.receipt import SignedReceipt
from haca.types.tensor import TensorError, parse_input, schema_from_json, tensors_from_json, tensors_hash


class PaymentRequiredError(HacaError):
    """The node wants more than the caller allows, or could not be paid."""

    code = "payment_required"


class ReceiptInvalid(HacaError):
    """A node's answer does not match its receipt: do not trust it."""

    code = "receipt_invalid"


@dataclass(frozen=True)
class PaymentOffer:
    """The part of a 402 answer that the client acts on."""

    chain_id: str
    node: str
    fee: int
    model_id: str
    model: str
    mode: str
    expiry: int

    @classmethod
    def from_402(cls, body: dict[str, Any]) -> PaymentOffer:
        try:
            accept = next(a for a in body["accepts"] if a["scheme"] == "haca-escrow")
            extra = accept["extra"]
            return cls(
                accept["network"],
                accept["payTo"].lower(),
                int(accept["maxAmountRequired"]),
                extra["model_id"],
                extra["model"],
                extra["mode"],
                int(extra["suggested_expiry"]),
            )
        except (KeyError, StopIteration, TypeError, ValueError) as exc:
            raise PaymentRequiredError(f"node answered 402 without usable requirements: {body}") from exc


def sign_payment(key: PrivateKey, offer: PaymentOffer, max_fee: int) -> tuple[PaymentAuthorization, str]:
    """An X-PAYMENT header value for this offer, capped at `max_fee`."""
    if offer.fee > max_fee:
        raise PaymentRequiredError(f"node asks {offer.fee}, more than the max fee {max_fee}")
    auth = PaymentAuthorization(
        offer.chain_id,
        key.address,
        offer.node,
        "0x" + secrets.token_bytes(32).hex(),
        offer.model_id,
        offer.mode,
        max_fee,
        offer.expiry,
    )
    payload = {
        "x402Version": 1,
        "scheme": "haca-escrow",
        "network": offer.chain_id,
        "payload": {"authorization": auth.to_json(), "signature": "0x" + auth.sign(key).hex()},
    }
    return auth, base64.b64encode(json.dumps(payload).encode()).decode()


def create_api_key(key: PrivateKey, chain_id: str, node: str, cap: int, expiry: int, nonce: int) -> str:
    allowance = SpendingAllowance(chain_id, key.address, node.lower(), cap, expiry, nonce)
    return encode_api_key(allowance, allowance.sign(key))


def verify_answer(
    answer: dict[str, Any],
    raw_input: Any,
    input_schema: dict[str, Any],
    node: str,
    auth: PaymentAuthorization | None = None,
) -> SignedReceipt:
    """Check a node's answer without trusting the node: the receipt is signed by `node` and
    commits to this input and this output (and, when paid per request, to this request and a fee
    within the authorised max)."""
    try:
        signed = SignedReceipt.from_json(answer["receipt"])
        verify_receipt_signature(signed)
        inputs = parse_input(raw_input, schema_from_json(input_schema))
        outputs = tensors_from_json(answer["output"], "output")
    except (KeyError, ValueError, EvidenceError, TensorError) as exc:
        raise ReceiptInvalid(f"answer does not verify: {exc}") from exc
    receipt = signed.receipt
    if receipt.node != node.lower():
        raise ReceiptInvalid(f"receipt is signed by {receipt.node}, not by the node {node}")
    if receipt.input_hash != tensors_hash(inputs):
        raise ReceiptInvalid("receipt's input hash is not the hash of the input sent")
    if receipt.output_hash != tensors_hash(outputs):
        raise ReceiptInvalid("receipt's output hash is not the hash of the output returned")
    if auth is not None:
        if (receipt.request_id, receipt.model_id, receipt.mode) != (auth.request_id, auth.model_id, auth.mode):
            raise ReceiptInvalid("receipt is for another request, model or mode")
        if receipt.fee > auth.max_fee:
            raise ReceiptInvalid(f"receipt charges {receipt.fee}, above the authorised {auth.max_fee}")
    return signed
