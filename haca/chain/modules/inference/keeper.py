"""inference state under prefix `inference/`.

    inference/params                                  -> params JSON
    inference/escrow/<client:20>                      -> amount held for the client
    inference/withdrawal/<release:u64be><client:20>   -> amount to pay back at that height
    inference/settled/<client:20><request id:32>      -> receipt id (a request settles once)
    inference/receipt/<receipt id:32>                 -> settlement record JSON
    inference/allowance_spent/<allowance id:32>       -> amount charged so far
    inference/allowance_revoked/<client:20><node:20><nonce:u64be> -> b"1"

Escrowed tokens sit in the bank under ESCROW_ACCOUNT, so the bank's supply invariant covers them;
the sum of all client escrows equals that account's balance (see invariants.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from haca.chain.errors import InsufficientEscrow
from haca.chain.state import CachedState, ReadableState, get_int, set_int
from haca.crypto.hashing import keccak256
from haca.types.encoding import canonical_json

PREFIX = b"inference/"
PARAMS_KEY = PREFIX + b"params"
ESCROW_PREFIX = PREFIX + b"escrow/"
WITHDRAWAL_PREFIX = PREFIX + b"withdrawal/"
SETTLED_PREFIX = PREFIX + b"settled/"
RECEIPT_PREFIX = PREFIX + b"receipt/"
SPENT_PREFIX = PREFIX + b"allowance_spent/"
REVOKED_PREFIX = PREFIX + b"allowance_revoked/"
ESCROW_ACCOUNT = "0x" + keccak256(b"haca/module/inference/escrow")[12:].hex()


class Bank(Protocol):
    """What this module needs from the bank (the expected-keeper idea)."""

    def send(self, state: CachedState, sender: str, recipient: str, amount: int) -> None: ...

    def burn(self, state: CachedState, holder: str, amount: int) -> None: ...


@dataclass(frozen=True)
class InferenceParams:
    withdraw_delay: int = 20  # blocks between MsgWithdraw and the payout
    settlement_fee: int = 100  # flat part of the burned settlement fee, per receipt
    settlement_fee_bps: int = 500  # plus this share of the inference fee (basis points)

    def settlement_fee_for(self, fee: int) -> int:
        """Burned per settled receipt, paid from the client's escrow on top of the fee."""
        return self.settlement_fee + fee * self.settlement_fee_bps // 10_000

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def _addr(address: str) -> bytes:
    return bytes.fromhex(address[2:])


class InferenceKeeper:
    def __init__(self, bank: Bank) -> None:
        self.bank = bank

    # --- params ---------------------------------------------------------------------------------

    def params(self, state: ReadableState) -> InferenceParams:
        raw = state.get(PARAMS_KEY)
        return InferenceParams(**json.loads(raw)) if raw else InferenceParams()

    def set_params(self, state: CachedState, params: InferenceParams) -> None:
        state.set(PARAMS_KEY, canonical_json(params.to_json()))

    # --- escrow ---------------------------------------------------------------------------------

    def escrow(self, state: ReadableState, client: str) -> int:
        return get_int(state, ESCROW_PREFIX + _addr(client))

    def deposit(self, state: CachedState, client: str, amount: int) -> None:
        self.bank.send(state, client, ESCROW_ACCOUNT, amount)
        set_int(state, ESCROW_PREFIX + _addr(client), self.escrow(state, client) + amount)

    def request_withdrawal(self, state: CachedState, client: str, amount: int, height: int) -> int:
        have = self.escrow(state, client)
        pending = sum(amount for _, amount in self.withdrawals(state, client))
        if amount + pending > have:
            raise InsufficientEscrow(f"escrow {have}, already withdrawing {pending}, asked {amount}")
        release = height + self.params(state).withdraw_delay
        key = WITHDRAWAL_PREFIX + release.to_bytes(8, "big") + _addr(client)
        set_int(state, key, get_int(state, key) + amount)
        return release

    def withdrawals(self, state: ReadableState, client: str) -> list[tuple[int, int]]:
        """(release height, amount) of the client's pending withdrawals."""
        suffix = _addr(client)
        return [
            (int.from_bytes(k[len(WITHDRAWAL_PREFIX) : len(WITHDRAWAL_PREFIX) + 8], "big"), int(v))
            for k, v in state.iter_prefix(WITHDRAWAL_PREFIX)
            if k.endswith(suffix)
        ]

    def release_withdrawals(self, state: CachedState, height: int) -> list[tuple[str, int]]:
        """Pay out every withdrawal due at or before `height` (what is left of the escrow, if less)."""
        paid = []
        for key, value in list(state.iter_prefix(WITHDRAWAL_PREFIX)):
            release = int.from_bytes(key[len(WITHDRAWAL_PREFIX) : len(WITHDRAWAL_PREFIX) + 8], "big")
            if release > height:
                break  # keys are ordered by release height
            client = "0x" + key[len(WITHDRAWAL_PREFIX) + 8 :].hex()
            amount = min(int(value), self.escrow(state, client))
            if amount:
                self.pay_from_escrow(state, client, client, amount)
            state.delete(key)
            paid.append((client, amount))
        return paid

    def pay_from_escrow(self, state: CachedState, client: str, recipient: str, amount: int) -> None:
        have = self.escrow(state, client)
        if have < amount:
            raise InsufficientEscrow(f"client {client} has {have} in escrow, needs {amount}")
        set_int(state, ESCROW_PREFIX + _addr(client), have - amount)
        self.bank.send(state, ESCROW_ACCOUNT, recipient, amount)

    def burn_from_escrow(self, state: CachedState, client: str, amount: int) -> None:
        self.pay_from_escrow(state, client, ESCROW_ACCOUNT, amount)
        self.bank.burn(state, ESCROW_ACCOUNT, amount)

    def total_escrow(self, state: ReadableState) -> int:
        return sum(int(v) for _, v in state.iter_prefix(ESCROW_PREFIX))

    # --- settlement records ---------------------------------------------------------------------

    def settled_receipt(self, state: ReadableState, client: str, request_id: str) -> str | None:
        raw = state.get(SETTLED_PREFIX + _addr(client) + bytes.fromhex(request_id[2:]))
        return raw.decode() if raw else None

    def record_settlement(self, state: CachedState, record: dict[str, Any]) -> None:
        state.set(
            SETTLED_PREFIX + _addr(record["client"]) + bytes.fromhex(record["request_id"][2:]),
            record["receipt_id"].encode(),
        )
        state.set(RECEIPT_PREFIX + bytes.fromhex(record["receipt_id"][2:]), canonical_json(record))

    def receipt(self, state: ReadableState, receipt_id: str) -> dict[str, Any] | None:
        raw = state.get(RECEIPT_PREFIX + bytes.fromhex(receipt_id[2:]))
        return json.loads(raw) if raw else None

    # --- allowances -----------------------------------------------------------------------------

    def allowance_spent(self, state: ReadableState, allowance_id: str) -> int:
        return get_int(state, SPENT_PREFIX + bytes.fromhex(allowance_id[2:]))

    def add_allowance_spent(self, state: CachedState, allowance_id: str, amount: int) -> None:
        set_int(
            state, SPENT_PREFIX + bytes.fromhex(allowance_id[2:]), self.allowance_spent(state, allowance_id) + amount
        )

    def revoked_key(self, client: str, node: str, nonce: int) -> bytes:
        return REVOKED_PREFIX + _addr(client) + _addr(node) + nonce.to_bytes(8, "big")

    def is_revoked(self, state: ReadableState, client: str, node: str, nonce: int) -> bool:
        return state.get(self.revoked_key(client, node, nonce)) is not None

    def revoke(self, state: CachedState, client: str, node: str, nonce: int) -> None:
        state.set(self.revoked_key(client, node, nonce), b"1")
