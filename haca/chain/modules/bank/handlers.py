"""bank message handlers: thin, validate against state then call the keeper."""

from __future__ import annotations

from haca.chain.errors import Unauthorized
from haca.chain.events import Event
from haca.chain.modules.bank.keeper import BankKeeper
from haca.chain.tx import TxContext
from haca.types.bank import MsgSend


def handle_send(bank: BankKeeper, ctx: TxContext, msg: MsgSend) -> list[Event]:
    if msg.to in bank.module_accounts:
        raise Unauthorized(f"{msg.to} is a module account; it only receives through its module's messages")
    bank.send(ctx.state, ctx.signer, msg.to, msg.amount)
    return [Event("transfer", {"sender": ctx.signer, "recipient": msg.to, "amount": str(msg.amount)})]
