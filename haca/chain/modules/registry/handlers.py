"""registry message handlers."""

from __future__ import annotations

from haca.chain.errors import InvalidMessage
from haca.chain.events import Event
from haca.chain.modules.registry.keeper import RegistryKeeper, circuit_facts, require_binding_visibility
from haca.chain.tx import TxContext
from haca.types.registry import MsgRegisterCircuit, MsgRegisterModel, MsgRegisterNode


def handle_register_model(registry: RegistryKeeper, ctx: TxContext, msg: MsgRegisterModel) -> list[Event]:
    manifest = registry.register_model(ctx.state, ctx.signer, msg, ctx.height)
    attrs = {"name": msg.name, "version": str(manifest.version), "model_id": msg.model_id, "owner": ctx.signer}
    return [Event("register_model", attrs)]


def handle_register_node(registry: RegistryKeeper, ctx: TxContext, msg: MsgRegisterNode) -> list[Event]:
    registry.register_node(ctx.state, ctx.signer, msg, ctx.height)
    return [Event("register_node", {"node": ctx.signer, "endpoint": msg.endpoint, "models": ",".join(msg.models)})]


def handle_register_circuit(registry: RegistryKeeper, ctx: TxContext, msg: MsgRegisterCircuit) -> list[Event]:
    try:
        facts = circuit_facts(msg.settings)
        require_binding_visibility(msg.settings)  # public instances that bind the input and the output
    except ValueError as exc:
        raise InvalidMessage(str(exc)) from exc
    if registry.srs_hash(ctx.state, facts["logrows"]) is None:
        raise InvalidMessage(f"no SRS of logrows {facts['logrows']} is pinned in this chain's genesis")
    settings_hash, vk_hash = registry.store_blob(ctx.state, msg.settings), registry.store_blob(ctx.state, msg.vk)
    attrs = {"settings_hash": settings_hash, "vk_hash": vk_hash, "logrows": str(facts["logrows"]), "signer": ctx.signer}
    if msg.model_id:
        registry.bind_circuit(ctx.state, msg.model_id, {"settings_hash": settings_hash, "vk_hash": vk_hash}, ctx.signer)
        attrs["model_id"] = msg.model_id
    return [Event("register_circuit", attrs)]
