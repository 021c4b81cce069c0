"""The auth module: account nonces and the fee schedule (the ante step runs them in tx.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from haca.chain.module import Module, Query
from haca.chain.modules.auth import queries
from haca.chain.modules.auth.keeper import AuthKeeper, FeeParams
from haca.chain.params import parse_params
from haca.chain.state import CachedState, ReadableState

if TYPE_CHECKING:
    from haca.chain.genesis import AppGenesis


class AuthModule(Module):
    name = "auth"

    def __init__(self, keeper: AuthKeeper) -> None:
        self.keeper = keeper

    def queries(self) -> Mapping[str, Query]:
        auth = self.keeper
        return {
            "/auth/account": lambda s, d: queries.query_account(auth, s, d),
            "/auth/params": lambda s, d: queries.query_params(auth, s, d),
        }

    def init_genesis(self, state: CachedState, genesis: AppGenesis) -> None:
        self.keeper.set_params(state, genesis.fees)

    def export_genesis(self, state: ReadableState) -> dict[str, Any]:
        return {"params": self.keeper.params(state).to_json()}

    def update_params(self, state: CachedState, changes: dict[str, Any]) -> dict[str, int]:
        params = parse_params(FeeParams, changes, self.keeper.params(state))
        self.keeper.set_params(state, params)
        return params.to_json()
