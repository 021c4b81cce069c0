"""bank message handlers: thin, validate against state then call the keeper."""

from __future__ import annotations

from haca.chain.events import Event
from haca.chain.modules.bank.keeper import BankKeeper
from haca.chain.state import CachedState
from haca.types.bank import MsgSend


def handle_send(bank: BankKeeper, state: CachedState, signer: str, msg: MsgSend) -> list[Event]:
    bank.send(state, signer, msg.to, msg.amount)
    return [Event("transfer", {"sender": signer, "recipient": msg.to, "amount": str(msg.amount)})]
