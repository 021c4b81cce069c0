"""The tee module: the TEE policy and approved measurements (set by the governance authority),
nodes' attested enclave keys and their coverage; at the start of each block the keys whose
coverage ended are marked lapsed (found by their height prefix)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from haca.chain.events import Event
from haca.chain.module import BlockContext, BlockResult, Module, Query
from haca.chain.modules.gov.keeper import GovKeeper
from haca.chain.modules.registry.keeper import RegistryKeeper
from haca.chain.modules.tee import handlers, queries
from haca.chain.modules.tee.keeper import TeeKeeper, enclave_key
from haca.chain.state import CachedState, ReadableState
from haca.chain.tx import Handler
from haca.types.encoding import canonical_json
from haca.types.tee import MsgApproveMeasurement, MsgAttestEnclave, MsgRevokeMeasurement, MsgSetTeePolicy

if TYPE_CHECKING:
    from haca.chain.genesis import AppGenesis


class TeeModule(Module):
    name = "tee"

    def __init__(self, keeper: TeeKeeper, registry: RegistryKeeper, gov: GovKeeper) -> None:
        self.keeper, self.registry, self.gov = keeper, registry, gov

    def handlers(self) -> Mapping[type, Handler]:
        tee, registry, gov = self.keeper, self.registry, self.gov
        return {
            MsgAttestEnclave: lambda ctx, msg: handlers.handle_attest_enclave(tee, registry, ctx, msg),
            MsgSetTeePolicy: lambda ctx, msg: handlers.handle_set_policy(tee, gov, ctx, msg),
            MsgApproveMeasurement: lambda ctx, msg: handlers.handle_approve(tee, gov, registry, ctx, msg),
            MsgRevokeMeasurement: lambda ctx, msg: handlers.handle_revoke(tee, gov, ctx, msg),
        }

    def queries(self) -> Mapping[str, Query]:
        tee = self.keeper
        return {
            "/tee/policy": lambda s, d: queries.query_policy(tee, s, d),
            "/tee/measurements": lambda s, d: queries.query_measurements(tee, s, d),
            "/tee/node_enclaves": lambda s, d: queries.query_node_enclaves(tee, s, d),
            "/tee/enclave": lambda s, d: queries.query_enclave(tee, s, d),
        }

    def init_genesis(self, state: CachedState, genesis: AppGenesis) -> None:
        self.keeper.set_policy(state, genesis.tee.policy)
        for scope, mid in genesis.tee.approvals:
            self.keeper.approve(state, scope, mid, 0, "genesis")

    def export_genesis(self, state: ReadableState) -> dict[str, Any]:
        approvals = [{"model": a["model"], "measurement_id": a["measurement_id"]} for a in self.keeper.approvals(state)]
        return {"policy": self.keeper.policy(state).to_json(), "approvals": approvals}

    def begin_block(self, ctx: BlockContext) -> BlockResult:
        result = BlockResult()
        for key in self.keeper.lapsing(ctx.state, ctx.height):
            self.keeper.drop_lapse(ctx.state, ctx.height, key)
            record = self.keeper.enclave(ctx.state, key)
            if record is None or record.good_until != ctx.height - 1:
                continue
            ctx.state.set(enclave_key(key), canonical_json(replace(record, lapsed=True).to_json()))
            attrs = {"node": record.node, "key": key, "good_until": str(record.good_until)}
            result.events.append(Event("enclave_lapsed", attrs))
        return result
