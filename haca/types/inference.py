"""inference module messages: escrow deposits and withdrawals, allowance revocation, settlement."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Self

from haca.types import fields as f
from haca.types.encoding import canonical_json
from haca.types.payment import SignedPayment
from haca.types.receipt import SignedReceipt
from haca.types.tx import register_msg

MAX_SETTLEMENT_ITEMS = 64


@dataclass(frozen=True)
class _EscrowMsg:
    """A message moving a positive amount into or out of the signer's escrow for one node."""

    eip712_fields: ClassVar[list[tuple[str, str]]] = [("node", "address"), ("amount", "uint256")]
    type_name: ClassVar[str]

    node: str
    amount: int

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "amount": str(self.amount)}

    def to_eip712(self) -> dict[str, Any]:
        return {"node": self.node, "amount": self.amount}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Self:
        doc = f.require_fields(value, {"node", "amount"}, cls.type_name)
        amount = f.uint(doc["amount"], "amount")
        if amount == 0:
            raise ValueError("amount must be positive")
        return cls(f.address(doc["node"], "node"), amount)


@register_msg
@dataclass(frozen=True)
class MsgDeposit(_EscrowMsg):
    """Move `amount` from the signer's balance into its escrow for `node`: only that node's
    receipts draw on it, so one deposit never backs answers at two nodes."""

    type_name: ClassVar[str] = "inference/deposit"
    eip712_name: ClassVar[str] = "MsgDeposit"


@register_msg
@dataclass(frozen=True)
class MsgWithdraw(_EscrowMsg):
    """Ask for `amount` of the escrow for `node` back; it is paid after the withdrawal delay
    (param), and that node's settlements may still draw on it until then."""

    type_name: ClassVar[str] = "inference/withdraw"
    eip712_name: ClassVar[str] = "MsgWithdraw"


@register_msg
@dataclass(frozen=True)
class MsgRevokeAllowance:
    """Revoke the signer's allowance `nonce` for `node`, from `revoke_delay` blocks on (param):
    the node stops serving against it at once and settles what it already served meanwhile."""

    type_name: ClassVar[str] = "inference/revoke_allowance"
    eip712_name: ClassVar[str] = "MsgRevokeAllowance"
    eip712_fields: ClassVar[list[tuple[str, str]]] = [("node", "address"), ("nonce", "uint64")]

    node: str
    nonce: int

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "nonce": self.nonce}

    def to_eip712(self) -> dict[str, Any]:
        return {"node": self.node, "nonce": self.nonce}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> MsgRevokeAllowance:
        doc = f.require_fields(value, {"node", "nonce"}, "inference/revoke_allowance")
        return cls(f.address(doc["node"], "node"), f.uint(doc["nonce"], "nonce", 64))


@dataclass(frozen=True)
class SettlementItem:
    """One receipt with the client's payment authorisation and the mode's evidence."""

    receipt: SignedReceipt
    payment: SignedPayment
    evidence: bytes = b""

    def to_json(self) -> dict[str, Any]:
        return {
            "receipt": self.receipt.to_json(),
            "payment": self.payment.to_json(),
            # base64, not hex: a zkml proof is most of a settlement tx, and its tx fee is per byte
            "evidence": base64.b64encode(self.evidence).decode(),
        }

    @classmethod
    def from_json(cls, value: Any) -> SettlementItem:
        doc = f.require_fields(value, {"receipt", "payment", "evidence"}, "settlement item")
        return cls(
            SignedReceipt.from_json(doc["receipt"]),
            SignedPayment.from_json(doc["payment"]),
            _evidence(doc["evidence"]),
        )


def _evidence(value: Any) -> bytes:
    """A settlement item's evidence: base64 (0x-hex in txs made before it was)."""
    if isinstance(value, str) and value.startswith("0x"):
        return f.hex_bytes(value, "evidence")
    return f.base64_bytes(value, "evidence")


@register_msg
@dataclass(frozen=True)
class MsgSettle:
    """Settle a batch of receipts signed by the tx signer (the node); all-or-nothing."""

    type_name: ClassVar[str] = "inference/settle"
    eip712_name: ClassVar[str] = "MsgSettle"
    eip712_fields: ClassVar[list[tuple[str, str]]] = [("items", "string")]

    items: tuple[SettlementItem, ...]

    @cached_property
    def _items_json(self) -> list[dict[str, Any]]:  # a batch is encoded several times while a tx is built
        return [item.to_json() for item in self.items]

    def to_json(self) -> dict[str, Any]:
        return {"items": self._items_json}

    def to_eip712(self) -> dict[str, Any]:
        # Each item is already signed by its node and client; the tx signature covers them as text.
        return {"items": self._items_text}

    @cached_property
    def _items_text(self) -> str:
        return canonical_json(self._items_json).decode()

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> MsgSettle:
        doc = f.require_fields(value, {"items"}, "inference/settle")
        items = doc["items"]
        if not isinstance(items, list) or not items or len(items) > MAX_SETTLEMENT_ITEMS:
            raise ValueError(f"items: expected 1 to {MAX_SETTLEMENT_ITEMS} settlement items")
        return cls(tuple(SettlementItem.from_json(item) for item in items))


@register_msg
@dataclass(frozen=True)
class MsgClaim:
    """A client holding a node-signed tee or zkml receipt demands its evidence, showing the payment
    it signed for it: the fee and its settlement fee are held from the client's escrow; if no valid
    evidence for that receipt settles within the claim deadline (param), the node is slashed, the
    client gets the fee back plus compensation, and the receipt ends `failed`. The payment must
    leave the node the whole window (it may not expire, or be revoked, before the deadline): a
    client cannot get an honest node slashed by paying with an authorisation that ends first."""

    type_name: ClassVar[str] = "inference/claim"
    eip712_name: ClassVar[str] = "MsgClaim"
    eip712_fields: ClassVar[list[tuple[str, str]]] = [("receipt", "string"), ("payment", "string")]

    receipt: SignedReceipt
    payment: SignedPayment

    def to_json(self) -> dict[str, Any]:
        return {"receipt": self.receipt.to_json(), "payment": self.payment.to_json()}

    def to_eip712(self) -> dict[str, Any]:
        return {
            "receipt": canonical_json(self.receipt.to_json()).decode(),
            "payment": canonical_json(self.payment.to_json()).decode(),
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> MsgClaim:
        doc = f.require_fields(value, {"receipt", "payment"}, cls.type_name)
        return cls(SignedReceipt.from_json(doc["receipt"]), SignedPayment.from_json(doc["payment"]))


@register_msg
@dataclass(frozen=True)
class MsgReportEquivocation:
    """Two receipts one node signed for one request with different outputs: the node is slashed on
    sight and the reporter (anyone) rewarded from the slash."""

    type_name: ClassVar[str] = "inference/report_equivocation"
    eip712_name: ClassVar[str] = "MsgReportEquivocation"
    eip712_fields: ClassVar[list[tuple[str, str]]] = [("first", "string"), ("second", "string")]

    first: SignedReceipt
    second: SignedReceipt

    def to_json(self) -> dict[str, Any]:
        return {"first": self.first.to_json(), "second": self.second.to_json()}

    def to_eip712(self) -> dict[str, Any]:
        return {
            "first": canonical_json(self.first.to_json()).decode(),
            "second": canonical_json(self.second.to_json()).decode(),
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> MsgReportEquivocation:
        doc = f.require_fields(value, {"first", "second"}, cls.type_name)
        return cls(SignedReceipt.from_json(doc["first"]), SignedReceipt.from_json(doc["second"]))


# --- what /inference/escrow answers ---------------------------------------------------------------


@dataclass(frozen=True)
class Withdrawal:
    """Escrow announced for withdrawal, paid back at `release_height`."""

    release_height: int
    amount: int

    def to_json(self) -> dict[str, Any]:
        return {"release_height": self.release_height, "amount": str(self.amount)}

    @classmethod
    def from_json(cls, value: Any) -> Withdrawal:
        doc = f.require_fields(value, {"release_height", "amount"}, "withdrawal")
        return cls(f.height(doc["release_height"], "release_height"), f.uint(doc["amount"], "amount"))


@dataclass(frozen=True)
class EscrowLane:
    """What one client holds for one node: its escrow, what is being withdrawn, and what the node
    may still serve against (escrow less withdrawals)."""

    node: str
    escrow: int
    withdrawing: int
    available: int
    withdrawals: tuple[Withdrawal, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "escrow": str(self.escrow),
            "withdrawing": str(self.withdrawing),
            "available": str(self.available),
            "withdrawals": [w.to_json() for w in self.withdrawals],
        }

    @classmethod
    def from_json(cls, value: Any) -> EscrowLane:
        doc = f.require_fields(value, {"node", "escrow", "withdrawing", "available", "withdrawals"}, "lane")
        if not isinstance(doc["withdrawals"], list):
            raise ValueError("withdrawals: expected a list")
        return cls(
            f.address(doc["node"], "node"),
            f.uint(doc["escrow"], "escrow"),
            f.uint(doc["withdrawing"], "withdrawing"),
            f.uint(doc["available"], "available"),
            tuple(Withdrawal.from_json(w) for w in doc["withdrawals"]),
        )


@dataclass(frozen=True)
class EscrowAnswer:
    """A client's escrow (`/inference/escrow`): in total, and per node lane (one lane when asked
    for one node)."""

    address: str
    escrow: int
    lanes: tuple[EscrowLane, ...]

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "escrow": str(self.escrow), "lanes": [lane.to_json() for lane in self.lanes]}

    @classmethod
    def from_json(cls, value: Any) -> EscrowAnswer:
        doc = f.require_fields(value, {"address", "escrow", "lanes"}, "escrow")
        if not isinstance(doc["lanes"], list):
            raise ValueError("lanes: expected a list")
        lanes = tuple(EscrowLane.from_json(lane) for lane in doc["lanes"])
        escrow = f.uint(doc["escrow"], "escrow")
        if escrow != sum(lane.escrow for lane in lanes):
            raise ValueError("escrow: not the sum of its lanes")
        return cls(f.address(doc["address"], "address"), escrow, lanes)
