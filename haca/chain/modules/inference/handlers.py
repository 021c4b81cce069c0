"""inference message handlers."""

from __future__ import annotations

from haca.chain.errors import ChainError
from haca.chain.events import Event
from haca.chain.modules.inference.keeper import InferenceKeeper
from haca.chain.modules.inference.settle import settle_item
from haca.chain.modules.registry.keeper import RegistryKeeper
from haca.chain.modules.tee.keeper import TeeKeeper
from haca.chain.tx import TxContext
from haca.types.inference import MsgDeposit, MsgRevokeAllowance, MsgSettle, MsgWithdraw


def handle_deposit(keeper: InferenceKeeper, ctx: TxContext, msg: MsgDeposit) -> list[Event]:
    keeper.deposit(ctx.state, ctx.signer, msg.node, msg.amount)
    return [Event("deposit", {"client": ctx.signer, "node": msg.node, "amount": str(msg.amount)})]


def handle_withdraw(keeper: InferenceKeeper, ctx: TxContext, msg: MsgWithdraw) -> list[Event]:
    release = keeper.request_withdrawal(ctx.state, ctx.signer, msg.node, msg.amount, ctx.height)
    attrs = {"client": ctx.signer, "node": msg.node, "amount": str(msg.amount), "release": str(release)}
    return [Event("withdraw_requested", attrs)]


def handle_revoke_allowance(keeper: InferenceKeeper, ctx: TxContext, msg: MsgRevokeAllowance) -> list[Event]:
    start = keeper.revoke(ctx.state, ctx.signer, msg.node, msg.nonce, ctx.height)
    attrs = {"client": ctx.signer, "node": msg.node, "nonce": str(msg.nonce), "effective": str(start)}
    return [Event("revoke_allowance", attrs)]


def handle_settle(
    registry: RegistryKeeper, tee: TeeKeeper, keeper: InferenceKeeper, ctx: TxContext, msg: MsgSettle
) -> list[Event]:
    events = []
    for index, item in enumerate(msg.items):
        try:
            events += settle_item(ctx, registry, tee, keeper, item)
        except ChainError as exc:  # name the receipt, so a node can drop it and resend the rest at once
            named = type(exc)(f"item {index} (receipt {item.receipt.id}): {exc}")
            raise named.naming_item(index, item.receipt.id) from exc
    return events
