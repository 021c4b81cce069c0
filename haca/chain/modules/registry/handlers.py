"""registry message handlers."""

from __future__ import annotations

from haca.chain.events import Event
from haca.chain.modules.registry.keeper import RegistryKeeper
from haca.chain.tx import TxContext
from haca.types.registry import MsgRegisterModel, MsgRegisterNode


def handle_register_model(registry: RegistryKeeper, ctx: TxContext, msg: MsgRegisterModel) -> list[Event]:
    manifest = registry.register_model(ctx.state, ctx.signer, msg, ctx.height)
    attrs = {"name": msg.name, "version": str(manifest["version"]), "model_id": msg.model_id, "owner": ctx.signer}
    return [Event("register_model", attrs)]


def handle_register_node(registry: RegistryKeeper, ctx: TxContext, msg: MsgRegisterNode) -> list[Event]:
    registry.register_node(ctx.state, ctx.signer, msg, ctx.height)
    return [Event("register_node", {"node": ctx.signer, "endpoint": msg.endpoint, "models": ",".join(msg.models)})]
