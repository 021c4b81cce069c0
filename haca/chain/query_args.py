"""Parsing of ABCI query data shared by the modules' query handlers."""

from __future__ import annotations

from haca.chain.errors import InvalidQuery
from haca.crypto.keys import normalize_address


def address_arg(data: bytes) -> str:
    """Query data that must be an address; InvalidQuery (a code, never an exception) otherwise."""
    try:
        return normalize_address(data.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidQuery(f"query data must be an address: {exc}") from exc
