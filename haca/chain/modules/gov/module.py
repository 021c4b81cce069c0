"""The gov module: authority-signed messages change other modules' params (and, next, the TEE
policy); from anyone else they are refused with `unauthorized` and change nothing."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from haca.chain.errors import InvalidMessage
from haca.chain.events import Event
from haca.chain.module import Module, Query
from haca.chain.modules.gov.keeper import AUTHORITIES_KEY, GovKeeper
from haca.chain.state import CachedState, ReadableState
from haca.chain.tx import Handler, TxContext
from haca.types.gov import MsgUpdateParams

if TYPE_CHECKING:
    from haca.chain.genesis import AppGenesis


class GovModule(Module):
    name = "gov"

    def __init__(
        self, keeper: GovKeeper, modules: Sequence[Module], consistency: Callable[[ReadableState], str]
    ) -> None:
        self.keeper = keeper
        self.modules = modules  # the app's modules, whose params an authority may change
        # why the params, all modules' together, are unsound ("" when sound): checked after a change
        if not callable(consistency):
            raise TypeError(f"GovModule needs 'consistency': a function of the state, got {type(consistency).__name__}")
        self.consistency = consistency

    def handlers(self) -> Mapping[type, Handler]:
        return {MsgUpdateParams: self._update_params}

    def _update_params(self, ctx: TxContext, msg: MsgUpdateParams) -> list[Event]:
        self.keeper.require_authority(ctx.state, ctx.signer)
        target = next((m for m in self.modules if m.name == msg.module), None)
        if target is None:
            raise InvalidMessage(f"no module {msg.module!r}; modules: {[m.name for m in self.modules]}")
        try:
            params = target.update_params(ctx.state, msg.params)
        except ValueError as exc:
            raise InvalidMessage(f"{msg.module} params: {exc}") from exc
        if problem := self.consistency(ctx.state):
            raise InvalidMessage(f"{msg.module} params: {problem}")  # the tx fails: nothing is kept
        attrs = {"module": msg.module, "signer": ctx.signer, **{k: str(v) for k, v in sorted(params.items())}}
        return [Event("update_params", attrs)]

    def queries(self) -> Mapping[str, Query]:
        return {"/gov/authorities": self._query_authorities}

    def _query_authorities(self, state: ReadableState, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
        return {"authorities": self.keeper.authorities(state)}, [AUTHORITIES_KEY]

    def init_genesis(self, state: CachedState, genesis: AppGenesis) -> None:
        self.keeper.set_authorities(state, genesis.authorities)

    def export_genesis(self, state: ReadableState) -> dict[str, Any]:
        return {"authorities": self.keeper.authorities(state)}
