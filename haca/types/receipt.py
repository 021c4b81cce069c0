"""Inference receipts: what a node signs for every answer (EIP-712 `Receipt`).

The receipt id is its EIP-712 digest, so the id itself commits to every field.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

from haca.crypto.keys import PrivateKey, recover_signer, sign_digest
from haca.types import eip712
from haca.types import fields as f
from haca.types.encoding import canonical_json

RECEIPT_FIELDS = [
    ("chainId", "string"),
    ("node", "address"),
    ("client", "address"),
    ("requestId", "bytes32"),
    ("modelId", "string"),
    ("mode", "string"),
    ("inputHash", "bytes32"),
    ("outputHash", "bytes32"),
    ("fee", "uint256"),
    ("heightHint", "uint64"),
    ("timestamp", "uint64"),
    ("instancesHash", "bytes32"),
    ("promptTokens", "uint32"),
    ("completionTokens", "uint32"),
]
NO_INSTANCES = "0x" + "00" * 32  # vanilla and tee receipts commit to no proof instances


@dataclass(frozen=True)
class Receipt:
    chain_id: str
    node: str
    client: str
    request_id: str  # 0x + 64 hex
    model_id: str  # sha256:<hex>
    mode: str
    input_hash: str
    output_hash: str
    fee: int
    height_hint: int
    timestamp: int  # unix seconds, node clock (informational; the chain never reads it)
    # zkml: sha256 commitment to the proof's public instances (input commitment, quantized outputs),
    # so validators compare bytes with bytes; NO_INSTANCES for the other modes
    instances_hash: str = NO_INSTANCES
    # LLMs (price per token): the tokens the request used, which the fee is for; 0 for other models
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def eip712_message(self) -> dict[str, Any]:
        return {
            "chainId": self.chain_id,
            "node": self.node,
            "client": self.client,
            "requestId": bytes.fromhex(self.request_id[2:]),
            "modelId": self.model_id,
            "mode": self.mode,
            "inputHash": bytes.fromhex(self.input_hash[2:]),
            "outputHash": bytes.fromhex(self.output_hash[2:]),
            "fee": self.fee,
            "heightHint": self.height_hint,
            "timestamp": self.timestamp,
            "instancesHash": bytes.fromhex(self.instances_hash[2:]),
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
        }

    @cached_property
    def digest(self) -> bytes:
        """What the node signs; also the receipt's id."""
        return eip712.digest("Receipt", RECEIPT_FIELDS, self.eip712_message())

    @property
    def id(self) -> str:
        return "0x" + self.digest.hex()

    def sign(self, key: PrivateKey) -> bytes:
        return sign_digest(key.secret, self.digest)

    def signer(self, signature: bytes) -> str:
        return recover_signer(self.digest, signature)

    def to_json(self) -> dict[str, Any]:
        out = {fld.name: getattr(self, fld.name) for fld in fields(self)}
        out["fee"] = str(self.fee)
        return out

    @classmethod
    def from_json(cls, value: Any) -> Receipt:
        names = {fld.name for fld in fields(cls)}
        if isinstance(value, dict):  # receipts from before token counts existed have none (0)
            value = {"prompt_tokens": 0, "completion_tokens": 0, **value}
        doc = f.require_fields(value, names, "receipt")
        return cls(
            chain_id=f.text(doc["chain_id"], "chain_id"),
            node=f.address(doc["node"], "node"),
            client=f.address(doc["client"], "client"),
            request_id=f.bytes32(doc["request_id"], "request_id"),
            model_id=f.model_id(doc["model_id"]),
            mode=f.mode(doc["mode"]),
            input_hash=f.bytes32(doc["input_hash"], "input_hash"),
            output_hash=f.bytes32(doc["output_hash"], "output_hash"),
            fee=f.uint(doc["fee"], "fee"),
            height_hint=f.uint(doc["height_hint"], "height_hint", 64),
            timestamp=f.uint(doc["timestamp"], "timestamp", 64),
            instances_hash=f.bytes32(doc["instances_hash"], "instances_hash"),
            prompt_tokens=f.uint(doc["prompt_tokens"], "prompt_tokens", 32),
            completion_tokens=f.uint(doc["completion_tokens"], "completion_tokens", 32),
        )


@dataclass(frozen=True)
class SignedReceipt:
    receipt: Receipt
    signature: bytes

    @property
    def id(self) -> str:
        return self.receipt.id

    def to_json(self) -> dict[str, Any]:
        return {**self.receipt.to_json(), "id": self.id, "signature": "0x" + self.signature.hex()}

    @classmethod
    def from_json(cls, value: Any) -> SignedReceipt:
        if not isinstance(value, dict):
            raise ValueError("receipt must be an object")
        body = {k: v for k, v in value.items() if k not in ("id", "signature")}
        receipt = Receipt.from_json(body)
        if "id" in value and value["id"] != receipt.id:
            raise ValueError("receipt id does not match its contents")
        return cls(receipt, f.hex_bytes(value.get("signature"), "signature", 65))

    def canonical(self) -> bytes:
        return canonical_json(self.to_json())
