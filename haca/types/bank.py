"""bank module messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from haca.crypto.keys import normalize_address
from haca.types.encoding import parse_uint
from haca.types.fields import require_fields
from haca.types.tx import register_msg


@register_msg
@dataclass(frozen=True)
class MsgSend:
    """Move `amount` base units from the tx signer to `to`."""

    type_name: ClassVar[str] = "bank/send"
    eip712_name: ClassVar[str] = "MsgSend"
    eip712_fields: ClassVar[list[tuple[str, str]]] = [("to", "address"), ("amount", "uint256")]

    to: str
    amount: int

    def to_json(self) -> dict[str, Any]:
        return {"to": self.to, "amount": str(self.amount)}

    def to_eip712(self) -> dict[str, Any]:
        return {"to": self.to, "amount": self.amount}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> MsgSend:
        require_fields(value, {"to", "amount"}, "bank/send")
        amount = parse_uint(value["amount"], "amount")
        if amount == 0:
            raise ValueError("amount must be positive")
        return cls(to=normalize_address(value["to"]), amount=amount)
