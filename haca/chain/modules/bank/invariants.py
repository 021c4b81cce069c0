"""bank invariants, checked by tests at every height."""

from __future__ import annotations

from haca.chain.modules.bank.keeper import BankKeeper
from haca.chain.state import ReadableState


def supply_matches_balances(bank: BankKeeper, state: ReadableState) -> str | None:
    """None when the circulating supply equals the sum of balances, else what is wrong."""
    total = sum(amount for _, amount in bank.balances(state))
    supply = bank.supply(state)
    return None if total == supply else f"sum of balances {total} != supply {supply}"
