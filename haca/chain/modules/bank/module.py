"""The bank module: balances, total supply and the burned total."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from haca.chain.module import Invariant, Module, Query
from haca.chain.modules.bank import queries
from haca.chain.modules.bank.handlers import handle_send
from haca.chain.modules.bank.invariants import supply_matches_balances
from haca.chain.modules.bank.keeper import BankKeeper
from haca.chain.state import CachedState, ReadableState
from haca.chain.tx import Handler
from haca.types.bank import MsgSend

if TYPE_CHECKING:
    from haca.chain.genesis import AppGenesis


class BankModule(Module):
    name = "bank"

    def __init__(self, keeper: BankKeeper) -> None:
        self.keeper = keeper

    def handlers(self) -> Mapping[type, Handler]:
        return {MsgSend: lambda ctx, msg: handle_send(self.keeper, ctx, msg)}

    def queries(self) -> Mapping[str, Query]:
        bank = self.keeper
        return {
            "/bank/balance": lambda s, d: queries.query_balance(bank, s, d),
            "/bank/supply": lambda s, d: queries.query_supply(bank, s, d),
        }

    def init_genesis(self, state: CachedState, genesis: AppGenesis) -> None:
        self.keeper.set_denom(state, genesis.denom)
        for account in genesis.accounts:
            self.keeper.mint_genesis(state, account.address, account.balance)

    def export_genesis(self, state: ReadableState) -> dict[str, Any]:
        balances = [{"address": a, "balance": str(b)} for a, b in self.keeper.balances(state)]
        return {"denom": self.keeper.denom(state), "balances": balances, "burned": str(self.keeper.burned(state))}

    def invariants(self) -> Mapping[str, Invariant]:
        return {"supply_matches_balances": lambda s: supply_matches_balances(self.keeper, s)}
