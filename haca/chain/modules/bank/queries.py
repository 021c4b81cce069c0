"""bank queries: JSON answers; keyed lookups also name the store key a proof covers."""

from __future__ import annotations

from typing import Any

from haca.chain.modules.bank.keeper import BURNED_KEY, SUPPLY_KEY, BankKeeper, balance_key
from haca.chain.query_args import address_arg
from haca.chain.state import ReadableState


def query_balance(bank: BankKeeper, state: ReadableState, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    address = address_arg(data)
    answer = {"address": address, "denom": bank.denom(state), "balance": str(bank.balance(state, address))}
    return answer, [balance_key(address)]


def query_supply(bank: BankKeeper, state: ReadableState, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    answer = {"denom": bank.denom(state), "total": str(bank.supply(state)), "burned": str(bank.burned(state))}
    return answer, [SUPPLY_KEY, BURNED_KEY]
