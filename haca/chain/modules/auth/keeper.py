"""auth state: per-account nonces (replay protection) and fee params, under prefix `auth/`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

from haca.chain.state import CachedState, ReadableState, get_int, set_int
from haca.types.encoding import canonical_json

PREFIX = b"auth/"
PARAMS_KEY = PREFIX + b"params"


def nonce_key(address: str) -> bytes:
    return PREFIX + b"nonce/" + bytes.fromhex(address[2:])


@dataclass(frozen=True)
class FeeParams:
    """Tx fee = at least `tx_fee_base + tx_fee_per_byte * len(tx)`; all of it is burned."""

    LIMITS: ClassVar[dict[str, int]] = {"tx_fee_base": 10**18, "tx_fee_per_byte": 10**15}

    tx_fee_base: int = 1_000
    tx_fee_per_byte: int = 2

    def min_fee(self, tx_bytes: int) -> int:
        return self.tx_fee_base + self.tx_fee_per_byte * tx_bytes

    def to_json(self) -> dict[str, int]:
        return {"tx_fee_base": self.tx_fee_base, "tx_fee_per_byte": self.tx_fee_per_byte}


class AuthKeeper:
    def nonce(self, state: ReadableState, address: str) -> int:
        return get_int(state, nonce_key(address))

    def increment_nonce(self, state: CachedState, address: str) -> None:
        set_int(state, nonce_key(address), self.nonce(state, address) + 1)

    def params(self, state: ReadableState) -> FeeParams:
        raw = state.get(PARAMS_KEY)
        return FeeParams(**json.loads(raw)) if raw else FeeParams()

    def set_params(self, state: CachedState, params: FeeParams) -> None:
        if params.tx_fee_base < 0 or params.tx_fee_per_byte < 0:
            raise ValueError("fee params must be non-negative")
        state.set(PARAMS_KEY, canonical_json(params.to_json()))


CHAIN_ID_KEY = PREFIX + b"chain_id"


def chain_id(state: ReadableState) -> str:
    return (state.get(CHAIN_ID_KEY) or b"").decode()


def set_chain_id(state: CachedState, value: str) -> None:
    state.set(CHAIN_ID_KEY, value.encode())
