"""Outputs a node keeps for the client that paid for them, so that an answer whose response was
lost on the way (a dropped connection after the receipt was queued) can still be fetched.

Who may fetch an output:
- the paying client, by signing `OutputRequest{chainId, node, requestId}` (EIP-712) with its key:
  the node recovers the client from the signature, so a wrong or foreign signature finds nothing;
- an API-key holder, by the `Idempotency-Key` it sent with the request: the request id is derived
  from the allowance and that key (`idempotent_request_id`), and the key never reaches the chain
  (an allowance and its signature do, at settlement, so the API key alone proves nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from haca.crypto.hashing import keccak256
from haca.crypto.keys import PrivateKey
from haca.types import eip712
from haca.types import fields as f

OUTPUT_REQUEST_FIELDS = [("chainId", "string"), ("node", "address"), ("requestId", "bytes32")]
OUTPUT_SIGNATURE_HEADER = "X-HACA-Output-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
# The error code of a node's front (haca.node.front) whose worker was lost after the request was
# sent: the request may have been served, its output is fetched as after any lost answer.
ANSWER_LOST = "answer_lost"
MIN_IDEMPOTENCY_KEY, MAX_IDEMPOTENCY_KEY = 16, 255  # characters: random ones (a UUID), not guessable


def _message(chain_id: str, node: str, request_id: str) -> dict[str, Any]:
    return {"chainId": chain_id, "node": node, "requestId": bytes.fromhex(request_id[2:])}


def sign_output_request(key: PrivateKey, chain_id: str, node: str, request_id: str) -> bytes:
    """The client's signature asking `node` for the output of its request `request_id`."""
    return eip712.sign(key, "OutputRequest", OUTPUT_REQUEST_FIELDS, _message(chain_id, node.lower(), request_id))


def output_requester(chain_id: str, node: str, request_id: str, signature: bytes) -> str:
    """Who signed the output request (raises SignatureError)."""
    return eip712.signer_of("OutputRequest", OUTPUT_REQUEST_FIELDS, _message(chain_id, node, request_id), signature)


def idempotency_key(value: str) -> str:
    """An Idempotency-Key header value: 16 to 255 printable ASCII characters (ValueError otherwise).
    It must be random (a UUID): the API key is public once its allowance settles and the request
    id derived from the key is on chain, so a guessable key lets others fetch the output — or
    take the key first with a request of their own."""
    if not MIN_IDEMPOTENCY_KEY <= len(value) <= MAX_IDEMPOTENCY_KEY or not value.isascii() or not value.isprintable():
        raise ValueError(
            f"{IDEMPOTENCY_HEADER} must be {MIN_IDEMPOTENCY_KEY} to {MAX_IDEMPOTENCY_KEY} printable ASCII"
            " characters, random per request (a UUID)"
        )
    return value


def idempotent_request_id(allowance_id: str, key: str) -> str:
    """The request id of an API-key request sent with `Idempotency-Key: key`: the same key on the
    same allowance names the same request (a retry is never charged twice)."""
    return "0x" + keccak256(b"haca/idempotency\x00" + bytes.fromhex(allowance_id[2:]) + key.encode()).hex()


@dataclass(frozen=True)
class StoredOutput:
    """What the receipt's output hash commits to, kept with the receipt until the payment expires:
    for a tensor request its `output` (and zkml instances), for an LLM the generated text."""

    request_id: str
    receipt_id: str
    output: dict[str, Any]
    expiry: int  # the payment's expiry height: kept until then

    def to_json(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "receipt_id": self.receipt_id, **self.output, "expiry": self.expiry}

    @classmethod
    def from_json(cls, value: Any) -> StoredOutput:
        if not isinstance(value, dict):
            raise ValueError("output: expected a JSON object")
        doc = value
        rest = {k: v for k, v in doc.items() if k not in ("request_id", "receipt_id", "expiry")}
        return cls(
            request_id=f.bytes32(doc.get("request_id"), "request_id"),
            receipt_id=f.bytes32(doc.get("receipt_id"), "receipt_id"),
            output=rest,
            expiry=f.uint(doc.get("expiry"), "expiry", 64),
        )
