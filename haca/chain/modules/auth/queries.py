"""auth queries."""

from __future__ import annotations

from typing import Any

from haca.chain.errors import InvalidQuery
from haca.chain.modules.auth.keeper import PARAMS_KEY, AuthKeeper, nonce_key
from haca.chain.state import ReadableState
from haca.crypto.keys import normalize_address


def query_account(auth: AuthKeeper, state: ReadableState, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    try:
        address = normalize_address(data.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidQuery(f"query data must be an address: {exc}") from exc
    return {"address": address, "nonce": auth.nonce(state, address)}, [nonce_key(address)]


def query_params(auth: AuthKeeper, state: ReadableState, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    return auth.params(state).to_json(), [PARAMS_KEY]
