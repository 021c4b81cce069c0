"""Builders shared by the node's unit tests: deterministic keys, signed receipts and payments,
and a fake ChainView answering from plain dicts."""

from __future__ import annotations

import base64
import json
from typing import Any

from haca.crypto.keys import PrivateKey
from haca.types.payment import PaymentAuthorization, SignedPayment, SpendingAllowance
from haca.types.receipt import Receipt, SignedReceipt

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


class FakeView:
    """What PaymentGate and Settler read from the chain, from dicts the test controls."""

    def __init__(self, height: int = HEIGHT) -> None:
        self.current_height = height
        self.escrows: dict[str, int] = {}
        self.spent: dict[str, int] = {}  # allowance id -> settled on chain
        self.revoked: set[str] = set()  # allowance ids
        self.records: dict[str, dict[str, Any]] = {}  # receipt id -> settlement record

    def height(self) -> int:
        return self.current_height

    def escrow(self, client: str) -> int:
        return self.escrows.get(client, 0)

    def allowance(self, allowance: SpendingAllowance) -> tuple[int, bool]:
        return self.spent.get(allowance.id, 0), allowance.id in self.revoked

    def settlement_fee(self, fees: int, count: int = 1) -> int:
        return count * SETTLEMENT_FEE_FLAT + fees * SETTLEMENT_FEE_BPS // 10_000

    def receipt_record(self, receipt_id: str) -> dict[str, Any] | None:
        return self.records.get(receipt_id)
