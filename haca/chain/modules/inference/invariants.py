"""inference invariants, checked by tests."""

from __future__ import annotations

from haca.chain.modules.bank.keeper import BankKeeper
from haca.chain.modules.inference.keeper import ESCROW_ACCOUNT, InferenceKeeper
from haca.chain.state import ReadableState


def escrow_matches_module_account(keeper: InferenceKeeper, bank: BankKeeper, state: ReadableState) -> str | None:
    held, owed = bank.balance(state, ESCROW_ACCOUNT), keeper.total_escrow(state)
    return None if held == owed else f"escrow account holds {held}, client escrows sum to {owed}"
