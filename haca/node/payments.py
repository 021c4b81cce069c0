"""Who pays for a request: an x402-style `X-PAYMENT` header carrying a per-request EIP-712
authorisation, or `Authorization: Bearer haca_…` carrying a signed spending allowance.

Without either the node answers 402 with its payment requirements (x402 shape: scheme,
network = chain id, asset = denom, max amount, pay-to, resource).
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from haca.crypto.keys import SignatureError
from haca.node.chainview import ChainView
from haca.node.errors import PaymentRequired, RequestConflict
from haca.node.receipts import ReceiptStore
from haca.types import fields
from haca.types.payment import (
    AUTHORIZATION_FIELDS,
    PaymentAuthorization,
    SignedPayment,
    SpendingAllowance,
    decode_api_key,
)

X402_VERSION = 1
SCHEME = "haca-escrow"
PAYMENT_HEADER = "x-payment"
PAYMENT_RESPONSE_HEADER = "X-PAYMENT-RESPONSE"


@dataclass(frozen=True)
class Quote:
    """What one inference costs and what the node needs signed for it."""

    model_id: str
    model_name: str
    mode: str
    fee: int
    resource: str


@dataclass(frozen=True)
class AcceptedPayment:
    payment: SignedPayment
    client: str
    request_id: str
    reserved: int = 0  # escrow held for this request until its receipt is queued (see release)
    allowance_id: str = ""
    allowance_held: int = 0  # allowance cap held likewise


class PaymentGate:
    def __init__(
        self,
        node: str,
        chain_id: str,
        denom: str,
        chain: ChainView,
        store: ReceiptStore,
        settle_margin: int = 5,
        authorization_blocks: int = 100,
    ) -> None:
        self.node, self.chain_id, self.denom = node, chain_id, denom
        self.chain, self.store = chain, store
        self._held: dict[str, int] = {}  # client -> escrow held by requests in flight
        self._held_allowance: dict[str, int] = {}  # allowance id -> cap held by requests in flight
        self.settle_margin = settle_margin  # blocks the settler needs before an authorisation expires
        self.authorization_blocks = authorization_blocks

    def requirements(self, quote: Quote, reason: str) -> dict[str, Any]:
        return {
            "x402Version": X402_VERSION,
            "error": reason,
            "accepts": [
                {
                    "scheme": SCHEME,
                    "network": self.chain_id,
                    "asset": self.denom,
                    "maxAmountRequired": str(quote.fee),
                    "payTo": self.node,
                    "resource": quote.resource,
                    "description": f"inference on {quote.model_name} ({quote.mode})",
                    "mimeType": "application/json",
                    "maxTimeoutSeconds": 60,
                    "extra": {
                        "model_id": quote.model_id,
                        "model": quote.model_name,
                        "mode": quote.mode,
                        "height": self.chain.height(),
                        "min_expiry": self.chain.height() + self.settle_margin,
                        "suggested_expiry": self.chain.height() + self.authorization_blocks,
                        "eip712": {"primaryType": "PaymentAuthorization", "fields": AUTHORIZATION_FIELDS},
                        "api_key": "or send 'Authorization: Bearer haca_…' from `haca allowance create`",
                    },
                }
            ],
        }

    def authorize(self, headers: Mapping[str, str], quote: Quote) -> AcceptedPayment:
        """Check the request's payment; raise PaymentRequired (402) saying what is wrong."""
        header = headers.get(PAYMENT_HEADER)
        bearer = headers.get("authorization", "")
        try:
            if header:
                accepted = self._per_request(header, quote)
            elif bearer.lower().startswith("bearer ") and bearer[7:].strip().startswith("haca_"):
                accepted = self._allowance(bearer[7:].strip(), quote)
            else:
                raise PaymentRequired("payment required")
        except PaymentRequired as exc:
            raise PaymentRequired(str(exc), self.requirements(quote, str(exc))) from None
        return accepted

    def _per_request(self, header: str, quote: Quote) -> AcceptedPayment:
        try:
            doc = json.loads(base64.b64decode(header, validate=True))
            fields.require_fields(doc, {"x402Version", "scheme", "network", "payload"}, "X-PAYMENT")
            if doc["x402Version"] != X402_VERSION:
                raise ValueError(f"X-PAYMENT: x402Version must be {X402_VERSION}")
            if doc["scheme"] != SCHEME or doc["network"] != self.chain_id:
                raise ValueError(f"X-PAYMENT: scheme must be {SCHEME!r} on network {self.chain_id!r}")
            payload = fields.require_fields(doc["payload"], {"authorization", "signature"}, "X-PAYMENT payload")
            auth = PaymentAuthorization.from_json(payload["authorization"])
            signature = fields.hex_bytes(payload["signature"], "signature", 65)
            signer = auth.signer(signature)
        except (ValueError, SignatureError, RecursionError) as exc:
            raise PaymentRequired(f"invalid X-PAYMENT: {exc}") from exc
        if signer != auth.client:
            raise PaymentRequired(f"authorisation signed by {signer}, not by its client {auth.client}")
        self._common(auth.node, auth.chain_id, auth.expiry)
        if (auth.model_id, auth.mode) != (quote.model_id, quote.mode):
            raise PaymentRequired("authorisation is for another model or mode")
        if auth.max_fee < quote.fee:
            raise PaymentRequired(f"max fee {auth.max_fee} is below the price {quote.fee}")
        if self.store.has_request(auth.client, auth.request_id):
            raise RequestConflict(f"request id {auth.request_id} was already served")
        reserved = self._escrow_covers(auth.client, quote.fee)
        return AcceptedPayment(SignedPayment("request", auth, signature), auth.client, auth.request_id, reserved)

    def _allowance(self, token: str, quote: Quote) -> AcceptedPayment:
        try:
            payment = decode_api_key(token)
            signer = payment.signer()
        except (ValueError, SignatureError) as exc:
            raise PaymentRequired(f"invalid API key: {exc}") from exc
        allowance = payment.value
        assert isinstance(allowance, SpendingAllowance)
        if signer != allowance.client:
            raise PaymentRequired("API key allowance is not signed by its client")
        self._common(allowance.node, allowance.chain_id, allowance.expiry)
        spent, revoked = self.chain.allowance(allowance)
        if revoked:
            raise PaymentRequired("API key allowance was revoked on chain")
        pending = self.store.unsettled_allowance(allowance.id) + self._held_allowance.get(allowance.id, 0)
        if spent + pending + quote.fee > allowance.cap:
            raise PaymentRequired(f"API key allowance cap {allowance.cap} reached ({spent} settled, {pending} pending)")
        reserved = self._escrow_covers(allowance.client, quote.fee)
        self._held_allowance[allowance.id] = self._held_allowance.get(allowance.id, 0) + quote.fee
        request_id = "0x" + secrets.token_bytes(32).hex()
        return AcceptedPayment(payment, allowance.client, request_id, reserved, allowance.id, quote.fee)

    def _common(self, node: str, chain_id: str, expiry: int) -> None:
        if node != self.node:
            raise PaymentRequired(f"payment is for node {node}, this node is {self.node}")
        if chain_id != self.chain_id:
            raise PaymentRequired(f"payment is for chain {chain_id!r}, this node settles on {self.chain_id!r}")
        if expiry < self.chain.height() + self.settle_margin:
            raise PaymentRequired(f"payment expires at height {expiry}, too soon to settle (now {self.chain.height()})")

    def _escrow_covers(self, client: str, fee: int) -> int:
        """Escrow must pay this fee and every unsettled or in-flight one, each with its settlement
        fee; on success the amount is held for this request and returned."""
        escrow = self.chain.escrow(client)
        count, fees = self.store.unsettled_charges(client)
        pending = (fees + self.chain.settlement_fee(fees, count) if count else 0) + self._held.get(client, 0)
        cost = fee + self.chain.settlement_fee(fee)
        if escrow < pending + cost:
            raise PaymentRequired(f"escrow of {client} is {escrow}, with {pending} unsettled: deposit more")
        self._held[client] = self._held.get(client, 0) + cost
        return cost

    def release(self, accepted: AcceptedPayment) -> None:
        """Drop the hold taken by `authorize` once the receipt is queued (it then counts as
        unsettled) or the request failed. Check, hold and release run on the event loop thread,
        so concurrent requests of one client cannot together overdraw its escrow or allowance."""
        _drop(self._held, accepted.client, accepted.reserved)
        if accepted.allowance_id:
            _drop(self._held_allowance, accepted.allowance_id, accepted.allowance_held)


def _drop(held: dict[str, int], key: str, amount: int) -> None:
    left = held.get(key, 0) - amount
    if left > 0:
        held[key] = left
    else:
        held.pop(key, None)


def payment_response_header(accepted: AcceptedPayment, chain_id: str, receipt_id: str) -> str:
    doc = {"success": True, "network": chain_id, "payer": accepted.client, "receipt": receipt_id, "transaction": None}
    return base64.b64encode(json.dumps(doc).encode()).decode()
