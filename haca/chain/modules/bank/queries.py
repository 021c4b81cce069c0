"""bank queries: JSON answers; keyed lookups also name the store key a proof covers."""

from __future__ import annotations

from typing import Any

from haca.chain.errors import InvalidQuery
from haca.chain.modules.bank.keeper import BURNED_KEY, SUPPLY_KEY, BankKeeper, balance_key
from haca.chain.state import ReadableState
from haca.crypto.keys import normalize_address


def query_balance(bank: BankKeeper, state: ReadableState, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    address = _address(data)
    answer = {"address": address, "denom": bank.denom(state), "balance": str(bank.balance(state, address))}
    return answer, [balance_key(address)]


def query_supply(bank: BankKeeper, state: ReadableState, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    answer = {"denom": bank.denom(state), "total": str(bank.supply(state)), "burned": str(bank.burned(state))}
    return answer, [SUPPLY_KEY, BURNED_KEY]


def _address(data: bytes) -> str:
    try:
        return normalize_address(data.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidQuery(f"query data must be an address: {exc}") from exc
