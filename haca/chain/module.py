"""The `Module` protocol: what each chain module gives the app (in the spirit of the Cosmos SDK's
`AppModule`). `app.py` wires a list of modules and knows none of their messages or queries.

A module owns a state prefix, its messages (handlers), its queries, its genesis import and
export, begin- and end-block hooks and its invariants. Hooks and handlers see the block height
and the block time from the header (never a wall clock); end-block hooks may return validator
updates. Work a hook does at a height must be indexed by that height, never found by scanning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from haca.chain.errors import InvalidMessage
from haca.chain.events import Event
from haca.chain.state import CachedState, ReadableState
from haca.chain.tx import Handler

if TYPE_CHECKING:
    from haca.chain.genesis import AppGenesis

# A query answers JSON and names the store keys whose values back the answer (proven on request).
Query = Callable[[ReadableState, bytes], tuple[dict[str, Any], list[bytes]]]
Invariant = Callable[[ReadableState], str | None]


@dataclass(frozen=True)
class Misbehavior:
    """Evidence CometBFT hands the app with a block (a validator's duplicate vote, or a light-client
    attack), at the height the validator misbehaved."""

    type: int  # tendermint.abci.MisbehaviorType: 1 duplicate vote, 2 light client attack
    validator_address: bytes  # CometBFT's: sha256(ed25519 public key)[:20]
    height: int
    power: int


@dataclass(frozen=True)
class BlockContext:
    state: CachedState
    height: int
    time: int  # unix seconds, from the block header
    chain_id: str
    misbehavior: tuple[Misbehavior, ...] = ()
    # The previous block's signatures, as CometBFT reports them: (consensus address, signed), in
    # its order (the set's). A validator absent from the commit did not sign.
    votes: tuple[tuple[bytes, bool], ...] = ()


@dataclass(frozen=True)
class ValidatorUpdate:
    """A change of a validator's voting power (power 0 removes it), returned from FinalizeBlock."""

    pub_key_type: str  # "ed25519"
    pub_key: bytes
    power: int


@dataclass
class BlockResult:
    events: list[Event] = field(default_factory=list)
    validator_updates: list[ValidatorUpdate] = field(default_factory=list)

    def extend(self, other: BlockResult) -> None:
        self.events += other.events
        self.validator_updates += other.validator_updates


class Module:
    """Defaults for every part of the protocol; a module overrides what it has."""

    name = ""

    def handlers(self) -> Mapping[type, Handler]:
        return {}

    def queries(self) -> Mapping[str, Query]:
        return {}

    def init_genesis(self, state: CachedState, genesis: AppGenesis) -> None:
        return None

    def export_genesis(self, state: ReadableState) -> dict[str, Any]:
        return {}

    def begin_block(self, ctx: BlockContext) -> BlockResult:
        return BlockResult()

    def end_block(self, ctx: BlockContext) -> BlockResult:
        return BlockResult()

    def invariants(self) -> Mapping[str, Invariant]:
        return {}

    def update_params(self, state: CachedState, changes: dict[str, Any]) -> dict[str, int]:
        """Apply a governance change to this module's params; the params now in force.
        ValueError when the change is invalid; InvalidMessage when the module has none."""
        raise InvalidMessage(f"module {self.name!r} has no params")
