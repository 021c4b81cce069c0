"""Client-signed payment authorisations (EIP-712):

- `PaymentAuthorization`: pay one request (node, request id, model, mode, max fee, expiry height).
- `SpendingAllowance`: let one node charge up to `cap` in all, and at most `max_per_request` for
  any one request (0: only the cap), until `expiry` (revocable on chain by nonce); carried as a
  bearer API key so any OpenAI-style client can pay.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from haca.crypto.keys import PrivateKey
from haca.types import eip712
from haca.types import fields as f
from haca.types.encoding import canonical_json

AUTHORIZATION_FIELDS = [
    ("chainId", "string"),
    ("client", "address"),
    ("node", "address"),
    ("requestId", "bytes32"),
    ("modelId", "string"),
    ("mode", "string"),
    ("maxFee", "uint256"),
    ("expiry", "uint64"),
]
ALLOWANCE_FIELDS = [
    ("chainId", "string"),
    ("client", "address"),
    ("node", "address"),
    ("cap", "uint256"),
    ("expiry", "uint64"),
    ("nonce", "uint64"),
    ("maxPerRequest", "uint256"),
]
API_KEY_PREFIX = "haca_"
# The chain height a paid request depends on (the block of the client's deposit): a node whose RPC is
# behind it answers 503 (retry) rather than 402 when its cached escrow does not cover the request.
MIN_HEIGHT_HEADER = "X-HACA-Min-Height"


@dataclass(frozen=True)
class PaymentAuthorization:
    chain_id: str
    client: str
    node: str
    request_id: str
    model_id: str
    mode: str
    max_fee: int
    expiry: int  # last block height at which it may be settled

    def eip712_message(self) -> dict[str, Any]:
        return {
            "chainId": self.chain_id,
            "client": self.client,
            "node": self.node,
            "requestId": bytes.fromhex(self.request_id[2:]),
            "modelId": self.model_id,
            "mode": self.mode,
            "maxFee": self.max_fee,
            "expiry": self.expiry,
        }

    def sign(self, key: PrivateKey) -> bytes:
        return eip712.sign(key, "PaymentAuthorization", AUTHORIZATION_FIELDS, self.eip712_message())

    def signer(self, signature: bytes) -> str:
        return eip712.signer_of("PaymentAuthorization", AUTHORIZATION_FIELDS, self.eip712_message(), signature)

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "client": self.client,
            "node": self.node,
            "request_id": self.request_id,
            "model_id": self.model_id,
            "mode": self.mode,
            "max_fee": str(self.max_fee),
            "expiry": self.expiry,
        }

    @classmethod
    def from_json(cls, value: Any) -> PaymentAuthorization:
        doc = f.require_fields(value, set(cls.__dataclass_fields__), "authorization")
        return cls(
            chain_id=f.text(doc["chain_id"], "chain_id"),
            client=f.address(doc["client"], "client"),
            node=f.address(doc["node"], "node"),
            request_id=f.bytes32(doc["request_id"], "request_id"),
            model_id=f.model_id(doc["model_id"]),
            mode=f.mode(doc["mode"]),
            max_fee=f.uint(doc["max_fee"], "max_fee"),
            expiry=f.uint(doc["expiry"], "expiry", 64),
        )


@dataclass(frozen=True)
class SpendingAllowance:
    chain_id: str
    client: str
    node: str
    cap: int
    expiry: int
    nonce: int
    # The most one request may be charged (0: only the cap bounds it): a key handed to an agent
    # cannot be drained by one long generation or one request priced at the whole cap.
    max_per_request: int = 0

    def eip712_message(self) -> dict[str, Any]:
        return {
            "chainId": self.chain_id,
            "client": self.client,
            "node": self.node,
            "cap": self.cap,
            "expiry": self.expiry,
            "nonce": self.nonce,
            "maxPerRequest": self.max_per_request,
        }

    def per_request_limit(self, fee: int) -> str | None:
        """Why `fee` is more than one request may be charged under this allowance, or None."""
        if self.max_per_request and fee > self.max_per_request:
            return f"fee {fee} exceeds the allowance's maximum per request {self.max_per_request}"
        return None

    @cached_property
    def id(self) -> str:
        return "0x" + eip712.digest("SpendingAllowance", ALLOWANCE_FIELDS, self.eip712_message()).hex()

    def sign(self, key: PrivateKey) -> bytes:
        return eip712.sign(key, "SpendingAllowance", ALLOWANCE_FIELDS, self.eip712_message())

    def signer(self, signature: bytes) -> str:
        return eip712.signer_of("SpendingAllowance", ALLOWANCE_FIELDS, self.eip712_message(), signature)

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "client": self.client,
            "node": self.node,
            "cap": str(self.cap),
            "expiry": self.expiry,
            "nonce": self.nonce,
            "max_per_request": str(self.max_per_request),
        }

    @classmethod
    def from_json(cls, value: Any) -> SpendingAllowance:
        doc = f.require_fields(value, set(cls.__dataclass_fields__), "allowance")
        return cls(
            chain_id=f.text(doc["chain_id"], "chain_id"),
            client=f.address(doc["client"], "client"),
            node=f.address(doc["node"], "node"),
            cap=f.uint(doc["cap"], "cap"),
            expiry=f.uint(doc["expiry"], "expiry", 64),
            nonce=f.uint(doc["nonce"], "nonce", 64),
            max_per_request=f.uint(doc["max_per_request"], "max_per_request"),
        )


@dataclass(frozen=True)
class SignedPayment:
    """Either kind of authorisation with its signature, as carried in a settlement item."""

    kind: str  # "request" | "allowance"
    value: PaymentAuthorization | SpendingAllowance
    signature: bytes

    def signer(self) -> str:
        return self.value.signer(self.signature)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value.to_json(), "signature": "0x" + self.signature.hex()}

    @classmethod
    def from_json(cls, value: Any) -> SignedPayment:
        doc = f.require_fields(value, {"kind", "value", "signature"}, "payment")
        parsed: PaymentAuthorization | SpendingAllowance
        if doc["kind"] == "request":
            parsed = PaymentAuthorization.from_json(doc["value"])
        elif doc["kind"] == "allowance":
            parsed = SpendingAllowance.from_json(doc["value"])
        else:
            raise ValueError("payment.kind must be 'request' or 'allowance'")
        return cls(doc["kind"], parsed, f.hex_bytes(doc["signature"], "payment.signature", 65))


def encode_api_key(allowance: SpendingAllowance, signature: bytes) -> str:
    """A bearer token carrying a signed allowance: `haca_` + base64url(canonical JSON)."""
    payload = canonical_json({"allowance": allowance.to_json(), "signature": "0x" + signature.hex()})
    return API_KEY_PREFIX + base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_api_key(token: str) -> SignedPayment:
    """Parse a bearer API key; raise ValueError when it is not one (the signature is not checked)."""
    if not token.startswith(API_KEY_PREFIX):
        raise ValueError(f"API key must start with {API_KEY_PREFIX!r}")
    body = token[len(API_KEY_PREFIX) :]
    try:
        doc = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, RecursionError) as exc:
        raise ValueError("API key is not valid base64url JSON") from exc
    doc = f.require_fields(doc, {"allowance", "signature"}, "API key")
    allowance = SpendingAllowance.from_json(doc["allowance"])
    return SignedPayment("allowance", allowance, f.hex_bytes(doc["signature"], "signature", 65))
