"""staking module messages: bond and unbond the signer's stake (nodes and validators)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Self

from haca.types import fields as f
from haca.types.tx import register_msg


@dataclass(frozen=True)
class _StakeMsg:
    eip712_fields: ClassVar[list[tuple[str, str]]] = [("amount", "uint256")]
    type_name: ClassVar[str]

    amount: int

    def to_json(self) -> dict[str, Any]:
        return {"amount": str(self.amount)}

    def to_eip712(self) -> dict[str, Any]:
        return {"amount": self.amount}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Self:
        doc = f.require_fields(value, {"amount"}, cls.type_name)
        amount = f.uint(doc["amount"], "amount")
        if amount == 0:
            raise ValueError("amount must be positive")
        return cls(amount)


@register_msg
@dataclass(frozen=True)
class MsgBond(_StakeMsg):
    """Bond `amount` of the signer's balance: a node needs the minimum stake of each mode it
    serves to register and to settle; bonded stake is what a fault is slashed from."""

    type_name: ClassVar[str] = "staking/bond"
    eip712_name: ClassVar[str] = "MsgBond"


@register_msg
@dataclass(frozen=True)
class MsgUnbond(_StakeMsg):
    """Start unbonding `amount`: it stays slashable and is paid back `unbonding_period` blocks
    later (later still while a claim against the signer is pending)."""

    type_name: ClassVar[str] = "staking/unbond"
    eip712_name: ClassVar[str] = "MsgUnbond"
