"""The registry module: model manifests (versioned, owned, terms by height) and inference nodes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from haca.chain.module import Module, Query
from haca.chain.modules.registry import handlers, queries
from haca.chain.modules.registry.keeper import RegistryKeeper, RegistryParams
from haca.chain.params import parse_params
from haca.chain.state import CachedState, ReadableState
from haca.chain.tx import Handler
from haca.types.registry import MsgRegisterCircuit, MsgRegisterModel, MsgRegisterNode

if TYPE_CHECKING:
    from haca.chain.genesis import AppGenesis


class RegistryModule(Module):
    name = "registry"

    def __init__(self, keeper: RegistryKeeper) -> None:
        self.keeper = keeper

    def handlers(self) -> Mapping[type, Handler]:
        registry = self.keeper
        return {
            MsgRegisterModel: lambda ctx, msg: handlers.handle_register_model(registry, ctx, msg),
            MsgRegisterNode: lambda ctx, msg: handlers.handle_register_node(registry, ctx, msg),
            MsgRegisterCircuit: lambda ctx, msg: handlers.handle_register_circuit(registry, ctx, msg),
        }

    def queries(self) -> Mapping[str, Query]:
        registry = self.keeper
        return {
            "/registry/model": lambda s, d: queries.query_model(registry, s, d),
            "/registry/models": lambda s, d: queries.query_models(registry, s, d),
            "/registry/model_in_effect": lambda s, d: queries.query_model_in_effect(registry, s, d),
            "/registry/params": lambda s, d: queries.query_params(registry, s, d),
            "/registry/srs": lambda s, d: queries.query_srs(registry, s, d),
            "/registry/blob": lambda s, d: queries.query_blob(registry, s, d),
            "/registry/node": lambda s, d: queries.query_node(registry, s, d),
            "/registry/nodes": lambda s, d: queries.query_nodes(registry, s, d),
        }

    def init_genesis(self, state: CachedState, genesis: AppGenesis) -> None:
        self.keeper.set_params(state, genesis.registry)
        self.keeper.set_srs_hashes(state, dict(genesis.srs))

    def export_genesis(self, state: ReadableState) -> dict[str, Any]:
        srs = {str(k): v for k, v in sorted(self.keeper.srs_hashes(state).items())}
        return {"params": self.keeper.params(state).to_json(), "srs": srs}

    def update_params(self, state: CachedState, changes: dict[str, Any]) -> dict[str, int]:
        params = parse_params(RegistryParams, changes, self.keeper.params(state))
        self.keeper.set_params(state, params)
        return params.to_json()
