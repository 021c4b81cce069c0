"""The inference module: escrow lanes, allowances, receipt settlement; at the start of each block
it pays out the withdrawals due at that height (found by their height prefix)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from haca.chain.events import Event
from haca.chain.module import BlockContext, BlockResult, Invariant, Module, Query
from haca.chain.modules.bank.keeper import BankKeeper
from haca.chain.modules.inference import batch, claims, handlers, queries
from haca.chain.modules.inference.invariants import escrow_matches_module_account
from haca.chain.modules.inference.keeper import InferenceKeeper, InferenceParams
from haca.chain.modules.registry.keeper import RegistryKeeper
from haca.chain.modules.tee.keeper import TeeKeeper
from haca.chain.params import parse_params
from haca.chain.state import CachedState, ReadableState
from haca.chain.tx import Handler
from haca.types.batch import MsgSettleBatch
from haca.types.inference import (
    MsgClaim,
    MsgDeposit,
    MsgReportEquivocation,
    MsgRevokeAllowance,
    MsgSettle,
    MsgWithdraw,
)

if TYPE_CHECKING:
    from haca.chain.genesis import AppGenesis


class InferenceModule(Module):
    name = "inference"

    def __init__(self, keeper: InferenceKeeper, registry: RegistryKeeper, bank: BankKeeper, tee: TeeKeeper) -> None:
        self.keeper, self.registry, self.bank, self.tee = keeper, registry, bank, tee

    def handlers(self) -> Mapping[type, Handler]:
        keeper, registry, tee = self.keeper, self.registry, self.tee
        return {
            MsgDeposit: lambda ctx, msg: handlers.handle_deposit(keeper, ctx, msg),
            MsgWithdraw: lambda ctx, msg: handlers.handle_withdraw(keeper, ctx, msg),
            MsgRevokeAllowance: lambda ctx, msg: handlers.handle_revoke_allowance(keeper, ctx, msg),
            MsgSettle: lambda ctx, msg: handlers.handle_settle(registry, tee, keeper, ctx, msg),
            MsgSettleBatch: lambda ctx, msg: batch.settle_batch(ctx, registry, tee, keeper, msg),
            MsgClaim: lambda ctx, msg: claims.handle_claim(keeper, registry, tee, ctx, msg),
            MsgReportEquivocation: lambda ctx, msg: claims.handle_report_equivocation(keeper, registry, tee, ctx, msg),
        }

    def queries(self) -> Mapping[str, Query]:
        keeper = self.keeper
        return {
            "/inference/escrow": lambda s, d: queries.query_escrow(keeper, s, d),
            "/inference/receipt": lambda s, d: queries.query_receipt(keeper, s, d),
            "/inference/allowance": lambda s, d: queries.query_allowance(keeper, s, d),
            "/inference/params": lambda s, d: queries.query_params(keeper, s, d),
            "/inference/claim": lambda s, d: queries.query_claim(keeper, s, d),
            "/inference/node_claims": lambda s, d: queries.query_node_claims(keeper, s, d),
            "/inference/request": lambda s, d: queries.query_request(keeper, s, d),
            "/inference/batch": lambda s, d: queries.query_batch(keeper, s, d),
        }

    def init_genesis(self, state: CachedState, genesis: AppGenesis) -> None:
        self.keeper.set_params(state, genesis.inference)

    def export_genesis(self, state: ReadableState) -> dict[str, Any]:
        return {"params": self.keeper.params(state).to_json()}

    def update_params(self, state: CachedState, changes: dict[str, Any]) -> dict[str, int]:
        params = parse_params(InferenceParams, changes, self.keeper.params(state))
        self.keeper.set_params(state, params)
        return params.to_json()

    def begin_block(self, ctx: BlockContext) -> BlockResult:
        paid = self.keeper.release_withdrawals(ctx.state, ctx.height)
        events = [Event("withdrawal_paid", {"client": c, "node": n, "amount": str(a)}) for c, n, a in paid]
        return BlockResult(events)

    def end_block(self, ctx: BlockContext) -> BlockResult:
        # At the end of the deadline block: evidence settled in that very block still counts.
        return BlockResult(claims.expire_claims(self.keeper, self.tee, ctx.state, ctx.height))

    def invariants(self) -> Mapping[str, Invariant]:
        return {"escrow_matches_module_account": lambda s: escrow_matches_module_account(self.keeper, self.bank, s)}
