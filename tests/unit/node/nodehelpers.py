"""Builders shared by the node's unit tests: deterministic keys, signed receipts and payments,
and a fake ChainView answering from plain dicts."""

from __future__ import annotations

import base64
import json
from typing import Any

from haca.crypto.keys import PrivateKey
from haca.types.inference import EscrowAnswer, EscrowLane
from haca.types.payment import PaymentAuthorization, SignedPayment, SpendingAllowance
from haca.types.receipt import Receipt, SignedReceipt
from haca.types.registry import CircuitRecord, ModelManifest
from haca.types.settlement import SettlementRecord

CHAIN_ID = "haca-test"
DENOM = "opg"
NODE, CLIENT, OTHER = PrivateKey.from_seed("node"), PrivateKey.from_seed("client"), PrivateKey.from_seed("other")
MODEL_ID = "sha256:" + "ab" * 32
HEIGHT = 100
SETTLEMENT_FEE_FLAT, SETTLEMENT_FEE_BPS = 3, 100  # 3 per receipt + 1 %


def request_id(n: int) -> str:
    return "0x" + f"{n:064x}"


def signed_receipt(n: int, fee: int = 10, client: PrivateKey = CLIENT, node: PrivateKey = NODE) -> SignedReceipt:
    r = Receipt(
        CHAIN_ID,
        node.address,
        client.address,
        request_id(n),
        MODEL_ID,
        "vanilla",
        "0x" + "00" * 32,
        "0x" + "11" * 32,
        fee,
        HEIGHT,
        0,
    )
    return SignedReceipt(r, r.sign(node))


def per_request(n: int, client: PrivateKey = CLIENT, max_fee: int = 10**6, expiry: int = 10**6) -> SignedPayment:
    auth = PaymentAuthorization(
        CHAIN_ID, client.address, NODE.address, request_id(n), MODEL_ID, "vanilla", max_fee, expiry
    )
    return SignedPayment("request", auth, auth.sign(client))


def allowance_payment(allowance: SpendingAllowance, signer: PrivateKey = CLIENT) -> SignedPayment:
    return SignedPayment("allowance", allowance, allowance.sign(signer))


def x_payment(auth: PaymentAuthorization, signer: PrivateKey = CLIENT, **overrides: Any) -> str:
    """An X-PAYMENT header value as haca.client.payment.sign_payment builds it, with fields of the
    outer document replaceable (scheme, network, ...)."""
    doc: dict[str, Any] = {
        "x402Version": 1,
        "scheme": "haca-escrow",
        "network": auth.chain_id,
        "payload": {"authorization": auth.to_json(), "signature": "0x" + auth.sign(signer).hex()},
    }
    doc.update(overrides)
    return base64.b64encode(json.dumps(doc).encode()).decode()


def escrow_answer(available: int, client: str = "0x" + "c1" * 20, node: str = "0x" + "d1" * 20) -> dict[str, Any]:
    """/inference/escrow's answer for one lane with `available` in it and nothing withdrawing."""
    return EscrowAnswer(client, available, (EscrowLane(node, available, 0, available, ()),)).to_json()


def manifest(
    name: str = "double",
    model_id: str = MODEL_ID,
    price: int = 100,
    price_unit: str = "request",
    max_rows: int = 64,
    modes: tuple[str, ...] = ("vanilla",),
    kind: str = "onnx",
    completion_price: int = 0,
    circuit: CircuitRecord | None = None,
    **schemas: Any,
) -> ModelManifest:
    """An on-chain manifest as /registry/model_in_effect answers it (parsed, as the node reads it)."""
    llm = kind == "gguf"
    doc = {
        "name": name,
        "model_id": model_id,
        "version": 1,
        "modes": list(modes),
        "price": str(price),
        "price_unit": price_unit,
        "max_rows": max_rows,
        "circuit": circuit.to_json() if circuit else None,
        "kind": kind,
        "completion_price": str(completion_price),
        "owner": OTHER.address,
        "height": 1,
        "effective_height": 1,
        "input_schema": {} if llm else schemas.get("input_schema", {"x": {"dtype": "float32", "shape": [-1, 2]}}),
        "output_schema": {} if llm else schemas.get("output_schema", {"y": {"dtype": "float32", "shape": [-1, 2]}}),
    }
    return ModelManifest.from_json(doc)


class FakeView:
    """What PaymentGate and Settler read from the chain, from dicts the test controls."""

    def __init__(self, height: int = HEIGHT) -> None:
        self.current_height = height
        self.escrows: dict[str, int] = {}  # client -> escrow for this node, less withdrawals
        self.spent: dict[str, int] = {}  # allowance id -> settled on chain
        self.revoked: dict[str, int] = {}  # allowance id -> height its revocation takes effect
        self.records: dict[str, SettlementRecord] = {}  # receipt id -> settlement record
        self.manifests: dict[str, ModelManifest] = {}  # model id -> terms in effect

    def height(self) -> int:
        return self.current_height

    def available_escrow(self, client: str, fresh: bool = False, at_least: int = 0) -> int:
        return self.escrows.get(client, 0)

    def allowance(self, allowance: SpendingAllowance) -> tuple[int, int]:
        return self.spent.get(allowance.id, 0), self.revoked.get(allowance.id, 0)

    def manifest_in_effect(self, model_id: str, height: int) -> ModelManifest | None:
        return self.manifests.get(model_id)

    def settlement_fee(self, fees: int, count: int = 1) -> int:
        return count * SETTLEMENT_FEE_FLAT + fees * SETTLEMENT_FEE_BPS // 10_000

    def receipt_record(self, receipt_id: str) -> SettlementRecord | None:
        return self.records.get(receipt_id)

    def request_record(self, client: str, request_id: str) -> SettlementRecord | None:
        found = [r for r in self.records.values() if (r.client, r.request_id) == (client, request_id)]
        return found[0] if found else None
