"""auth queries."""

from __future__ import annotations

from typing import Any

from haca.chain.modules.auth.keeper import PARAMS_KEY, AuthKeeper, nonce_key
from haca.chain.query_args import address_arg
from haca.chain.state import ReadableState


def query_account(auth: AuthKeeper, state: ReadableState, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    address = address_arg(data)
    return {"address": address, "nonce": auth.nonce(state, address)}, [nonce_key(address)]


def query_params(auth: AuthKeeper, state: ReadableState, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    return auth.params(state).to_json(), [PARAMS_KEY]
