"""What the inference module stores and answers about a receipt: how it settled (SettlementRecord,
`/inference/receipt`) and a client's pending claim on it (ClaimRecord, `/inference/claim`).

Amounts are decimal strings on the wire, heights JSON integers, as in the messages; `from_json`
refuses a malformed record naming the field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from haca.types import fields as f
from haca.types.batch import BatchMark
from haca.types.modes import Status

_SETTLEMENT_FIELDS = {
    "receipt_id",
    "status",
    "height",
    "node",
    "client",
    "request_id",
    "model_id",
    "mode",
    "fee",
    "settlement_fee",
    "payment",
}
_TEE_FIELDS = {"enclave_key", "attestation", "dev"}
_FAILURE_FIELDS = {"reason", "slashed", "compensation", "refunded"}
_PAYMENTS = ("request", "allowance", "claim")  # a settlement payment's kind, or "claim" (the hold paid)


def _payment(value: Any, field: str = "payment") -> str:
    if value not in _PAYMENTS:
        raise ValueError(f"{field}: expected one of {list(_PAYMENTS)}")
    return str(value)


@dataclass(frozen=True)
class EnclaveSigner:
    """tee: which attested key signed a settled receipt, on what platform, and whether that was
    the labelled DEV platform."""

    key: str
    attestation: str
    dev: bool


@dataclass(frozen=True)
class ClaimPenalty:
    """A claim that expired without valid evidence: the node's stake slashed, the client's share."""

    reason: str
    slashed: int
    compensation: int
    refunded: int  # the held fee and settlement fee, back to the client


@dataclass(frozen=True)
class SettlementRecord:
    """How a receipt settled alone (by `inference/settle`, or failed by an expired claim)."""

    receipt_id: str
    status: Status
    height: int  # the block it settled in
    node: str
    client: str
    request_id: str
    model_id: str
    mode: str
    fee: int  # to the node
    settlement_fee: int  # burned
    payment: str  # "request" | "allowance" | "claim"
    enclave: EnclaveSigner | None = None
    penalty: ClaimPenalty | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "receipt_id": self.receipt_id,
            "status": self.status.value,
            "height": self.height,
            "node": self.node,
            "client": self.client,
            "request_id": self.request_id,
            "model_id": self.model_id,
            "mode": self.mode,
            "fee": str(self.fee),
            "settlement_fee": str(self.settlement_fee),
            "payment": self.payment,
        }
        if self.enclave is not None:
            out |= {"enclave_key": self.enclave.key, "attestation": self.enclave.attestation, "dev": self.enclave.dev}
        if self.penalty is not None:
            p = self.penalty
            out |= {
                "reason": p.reason,
                "slashed": str(p.slashed),
                "compensation": str(p.compensation),
                "refunded": str(p.refunded),
            }
        return out

    @classmethod
    def from_json(cls, value: Any) -> SettlementRecord:
        if not isinstance(value, dict):
            raise ValueError("a settlement record must be an object")
        tee = _TEE_FIELDS & set(value)
        failure = _FAILURE_FIELDS & set(value)
        names = _SETTLEMENT_FIELDS | (_TEE_FIELDS if tee else set()) | (_FAILURE_FIELDS if failure else set())
        doc = f.require_fields(value, names, "settlement record")
        try:
            status = Status(doc["status"])
        except ValueError:
            raise ValueError(f"status: expected one of {[s.value for s in Status]}") from None
        enclave = None
        if tee:
            enclave = EnclaveSigner(
                f.address(doc["enclave_key"], "enclave_key"), f.text(doc["attestation"], "attestation"), doc["dev"]
            )
        penalty = None
        if failure:
            penalty = ClaimPenalty(
                f.text(doc["reason"], "reason", 512),
                f.uint(doc["slashed"], "slashed"),
                f.uint(doc["compensation"], "compensation"),
                f.uint(doc["refunded"], "refunded"),
            )
        return cls(
            f.bytes32(doc["receipt_id"], "receipt_id"),
            status,
            f.height(doc["height"], "height"),
            f.address(doc["node"], "node"),
            f.address(doc["client"], "client"),
            f.bytes32(doc["request_id"], "request_id"),
            f.model_id(doc["model_id"]),
            f.mode(doc["mode"]),
            f.uint(doc["fee"], "fee"),
            f.uint(doc["settlement_fee"], "settlement_fee"),
            _payment(doc["payment"]),
            enclave,
            penalty,
        )


@dataclass(frozen=True)
class ClaimRecord:
    """A client's claim that a tee or zkml receipt will not settle with evidence: what is held
    from its lane, the terms the settlement will take, and the facts an expiry is judged by."""

    client: str
    node: str
    request_id: str
    model_id: str
    model_name: str  # the name whose terms were in effect at the receipt's height
    mode: str
    fee: int
    held: int  # fee + settlement fee, taken from the lane until the claim ends
    signer: str  # the key that signed the receipt (tee: the enclave key)
    payment: str  # the kind of payment the claim carried
    allowance_id: str  # "" unless paid by a spending allowance (its cap share is reserved)
    height_hint: int  # the receipt's
    min_stake: int  # the mode's minimum stake when the claim was made
    bonded: int  # the node's bond then
    height: int  # claimed at
    deadline: int  # slashed at this height unless its evidence settles first

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "node": self.node,
            "request_id": self.request_id,
            "model_id": self.model_id,
            "model_name": self.model_name,
            "mode": self.mode,
            "fee": str(self.fee),
            "held": str(self.held),
            "signer": self.signer,
            "payment": self.payment,
            "allowance_id": self.allowance_id,
            "height_hint": self.height_hint,
            "min_stake": str(self.min_stake),
            "bonded": str(self.bonded),
            "height": self.height,
            "deadline": self.deadline,
        }

    @classmethod
    def from_json(cls, value: Any) -> ClaimRecord:
        if not isinstance(value, dict):
            raise ValueError("a claim must be an object")
        doc = f.require_fields(value, set(cls.__dataclass_fields__), "claim")
        allowance = doc["allowance_id"]
        return cls(
            f.address(doc["client"], "client"),
            f.address(doc["node"], "node"),
            f.bytes32(doc["request_id"], "request_id"),
            f.model_id(doc["model_id"]),
            f.name(doc["model_name"], "model_name"),
            f.mode(doc["mode"]),
            f.uint(doc["fee"], "fee"),
            f.uint(doc["held"], "held"),
            f.address(doc["signer"], "signer"),
            _payment(doc["payment"]),
            f.bytes32(allowance, "allowance_id") if allowance else "",
            f.height(doc["height_hint"], "height_hint"),
            f.uint(doc["min_stake"], "min_stake"),
            f.uint(doc["bonded"], "bonded"),
            f.height(doc["height"], "height"),
            f.height(doc["deadline"], "deadline"),
        )


def request_settlement(value: Any) -> SettlementRecord | BatchMark:
    """`/inference/request`'s answer: the receipt's record when it settled alone, or the request's
    mark in the batch it settled in."""
    if isinstance(value, dict) and "batch" in value:
        return BatchMark.from_json(value)
    return SettlementRecord.from_json(value)
