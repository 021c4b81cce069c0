"""Canonical JSON: one byte string per value, so hashes and signatures agree everywhere."""

import json
from typing import Any


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8; floats are refused (the state machine has none)."""
    _reject_floats(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _reject_floats(value: Any) -> None:
    if isinstance(value, float):
        raise TypeError("floats are not allowed in canonical JSON")
    if isinstance(value, dict):
        for item in value.values():
            _reject_floats(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _reject_floats(item)


def parse_uint(value: Any, field: str, bits: int = 256) -> int:
    """An unsigned integer given as a decimal string or a JSON int (not bool, not float)."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected an unsigned integer")
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()) or (len(value) > 1 and value[0] == "0"):
            raise ValueError(f"{field}: expected a decimal unsigned integer, got {value!r}")
        value = int(value)
    if not isinstance(value, int) or value < 0 or value >= 1 << bits:
        raise ValueError(f"{field}: expected an unsigned {bits}-bit integer")
    return value


def encode_uvarint(value: int) -> bytes:
    """Protobuf's unsigned varint (ABCI frame lengths, CometBFT sign bytes)."""
    if value < 0:
        raise ValueError("uvarint must be non-negative")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
