"""Running a transaction against a state: stateless checks, the ante step (chain id, signature,
nonce, fee burn) and then its messages, each all-or-nothing."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from haca.chain.errors import (
    BadNonce,
    ChainError,
    InsufficientFee,
    InvalidSignature,
    TxDecodeFailed,
    UnknownMessage,
    WrongChainId,
)
from haca.chain.events import Event
from haca.chain.modules.auth.keeper import AuthKeeper
from haca.chain.modules.bank.keeper import BankKeeper
from haca.chain.state import CachedState
from haca.crypto.hashing import sha256
from haca.crypto.keys import SignatureError
from haca.types.encoding import canonical_json
from haca.types.tx import Tx, TxDecodeError, decode_tx

Handler = Callable[["TxContext", Any], list[Event]]


@dataclass(frozen=True)
class TxContext:
    """What a message handler may know: the state to change, who signed, the block's height and
    time (unix seconds from its header; CheckTx uses the last committed block's)."""

    state: CachedState
    signer: str
    height: int
    chain_id: str
    time: int = 0
    # CheckTx (and recheck): a handler may skip work whose failure would not fail the tx anyway
    # (a settlement batch's items), since blocks run it in full
    checking: bool = False


_VERIFIED_CACHE_SIZE = 50_000


@dataclass
class TxResult:
    code: int = 0
    codespace: str = ""
    log: str = ""
    events: list[Event] = field(default_factory=list)
    ante_failed: bool = False  # nothing could be charged: the tx must not be in a block
    data: bytes = b""  # a refusal's structured detail (canonical JSON), e.g. which item failed

    @property
    def ok(self) -> bool:
        return self.code == 0

    @classmethod
    def failure(cls, error: ChainError, ante_failed: bool) -> TxResult:
        data = b""
        if error.refused_item is not None:
            index, receipt_id = error.refused_item
            data = canonical_json({"refused_item": {"index": index, "receipt_id": receipt_id}})
        return cls(code=error.code, codespace=error.codespace, log=str(error), ante_failed=ante_failed, data=data)


class TxRunner:
    """Executes txs; message handlers are registered per message class at wiring time."""

    def __init__(self, auth: AuthKeeper, bank: BankKeeper) -> None:
        self.auth = auth
        self.bank = bank
        self.chain_id = ""  # set from InitChain / the store by the app
        self.height = 0  # the height txs are being run for; set by the app
        self.time = 0  # that block's time (unix seconds, from the header); set by the app
        self.handlers: dict[type, Handler] = {}
        # Decoding and signature checks are pure functions of the tx bytes (and the chain id), so
        # CheckTx's work is reused by rechecks, proposals and FinalizeBlock.
        self._verified: OrderedDict[bytes, Tx] = OrderedDict()

    def register(self, msg_type: type, handler: Handler) -> None:
        self.handlers[msg_type] = handler

    def run(self, state: CachedState, raw: bytes, atomic: bool, checking: bool = False) -> TxResult:
        """Apply `raw` to `state`. With `atomic`, a failing message undoes the whole tx (CheckTx,
        PrepareProposal); without, the fee and nonce stand and only the messages are undone
        (FinalizeBlock). `checking`: CheckTx only, whose state is never committed (handlers may skip
        what cannot fail the tx); a proposal's execution is the block's, so it must never be set there."""
        try:
            tx = self.decode_verified(raw)
            ante_state = state.branch()
            events = self._ante(ante_state, tx, len(raw))
        except ChainError as error:
            return TxResult.failure(error, ante_failed=True)
        msg_state = ante_state.branch()
        msg_events: list[Event] = []
        try:
            for msg in tx.msgs:
                ctx = TxContext(msg_state, tx.signer, self.height, self.chain_id, self.time, checking=checking)
                msg_events += self.handlers[type(msg)](ctx, msg)
        except ChainError as exc:
            failure = exc
        except MemoryError:
            raise  # not a property of the tx: it must not become a verdict validators may not share
        except Exception as exc:
            # A bug a tx can reach (a parser's RecursionError, say) fails that tx, the same on every
            # validator, instead of taking the ABCI connection and the chain down with it.
            failure = ChainError(f"internal error: {type(exc).__name__}: {exc}"[:500])
        else:
            msg_state.write()
            ante_state.write()
            return TxResult(events=events + msg_events)
        if atomic:
            return TxResult.failure(failure, ante_failed=False)
        ante_state.write()
        result = TxResult.failure(failure, ante_failed=False)
        result.events = events  # the fee and nonce stand; the undone messages report nothing
        return result

    def decode_verified(self, raw: bytes) -> Tx:
        """Decode, check the chain id and the signature (cached by tx hash)."""
        key = sha256(raw)
        cached = self._verified.get(key)
        if cached is not None:
            return cached
        try:
            tx = decode_tx(raw)
        except TxDecodeError as exc:
            cls = UnknownMessage if "unknown message type" in str(exc) else TxDecodeFailed
            raise cls(str(exc)) from exc
        if tx.chain_id != self.chain_id:
            raise WrongChainId(f"tx is for chain {tx.chain_id!r}, this chain is {self.chain_id!r}")
        for msg in tx.msgs:
            if type(msg) not in self.handlers:
                raise UnknownMessage(f"no handler for message type {msg.type_name!r}")
        try:
            signer = tx.recover_signer()
        except SignatureError as exc:
            raise InvalidSignature(str(exc)) from exc
        if signer != tx.signer:
            raise InvalidSignature(f"signature is by {signer}, not by the tx signer {tx.signer}")
        self._verified[key] = tx
        if len(self._verified) > _VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return tx

    def _ante(self, state: CachedState, tx: Tx, size: int) -> list[Event]:
        expected = self.auth.nonce(state, tx.signer)
        if tx.nonce != expected:
            raise BadNonce(f"account {tx.signer} nonce is {expected}, tx has {tx.nonce}")
        min_fee = self.auth.params(state).min_fee(size)
        if tx.fee < min_fee:
            raise InsufficientFee(f"fee {tx.fee} is below the minimum {min_fee} for a {size}-byte tx")
        self.bank.burn(state, tx.signer, tx.fee)
        self.auth.increment_nonce(state, tx.signer)
        return [
            Event("tx", {"signer": tx.signer, "nonce": str(tx.nonce), "fee": str(tx.fee)}),
            Event("burn", {"burner": tx.signer, "amount": str(tx.fee), "reason": "tx_fee"}),
        ]
