"""Parsing of wire fields with readable errors (ValueError naming the field)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from haca.crypto.keys import normalize_address
from haca.types.encoding import parse_uint
from haca.types.modes import Mode

_HEX32 = re.compile(r"^0x[0-9a-f]{64}$")
_MODEL_ID = re.compile(r"^sha256:[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
MODES = tuple(m.value for m in Mode)


def require_fields(value: Any, names: set[str], what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be an object")
    if set(value) != names:
        missing, extra = sorted(names - set(value)), sorted(set(value) - names)
        raise ValueError(f"{what}: missing fields {missing}, unexpected fields {extra}")
    return value


def bytes32(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _HEX32.fullmatch(value.lower()):
        raise ValueError(f"{field}: expected 0x followed by 64 hex digits")
    return value.lower()


def model_id(value: Any, field: str = "model_id") -> str:
    if not isinstance(value, str) or not _MODEL_ID.fullmatch(value):
        raise ValueError(f"{field}: expected 'sha256:' followed by 64 lower-case hex digits")
    return value


def name(value: Any, field: str = "name") -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"{field}: lower-case letters, digits and '-', 1-64 characters")
    return value


def mode(value: Any, field: str = "mode") -> str:
    if value not in MODES:
        raise ValueError(f"{field}: expected one of {list(MODES)}, got {value!r}")
    return str(value)


def modes(value: Any, field: str = "modes") -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{field}: expected a non-empty list of modes")
    parsed = tuple(sorted({mode(v, field) for v in value}))
    if len(parsed) != len(value):
        raise ValueError(f"{field}: a mode is listed twice")
    return parsed


def address(value: Any, field: str) -> str:
    try:
        return normalize_address(value)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from exc


def uint(value: Any, field: str, bits: int = 256) -> int:
    return parse_uint(value, field, bits)


def height(value: Any, field: str) -> int:
    """A block height: a JSON integer (not bool, not a string), 0 to 2^63 - 1."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 63:
        raise ValueError(f"{field}: expected a block height")
    return value


def flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{field}: expected true or false")
    return value


def text(value: Any, field: str, max_len: int = 256) -> str:
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise ValueError(f"{field}: expected a non-empty string of at most {max_len} characters")
    return value


def base64_bytes(value: Any, field: str, max_len: int = 1 << 20) -> bytes:
    """Standard base64 with padding, in its one canonical spelling (one byte string, one text)."""
    if not isinstance(value, str) or len(value) > (max_len + 2) // 3 * 4:
        raise ValueError(f"{field}: expected base64 of at most {max_len} bytes")
    try:
        raw = base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"{field}: bad base64") from exc
    if base64.b64encode(raw).decode() != value:
        raise ValueError(f"{field}: base64 not in its canonical form")
    return raw


def hex_bytes(value: Any, field: str, max_len: int = 1 << 20) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ValueError(f"{field}: expected 0x-prefixed hex")
    try:
        raw = bytes.fromhex(value[2:])
    except ValueError as exc:
        raise ValueError(f"{field}: bad hex") from exc
    if len(raw) > max_len:
        raise ValueError(f"{field}: at most {max_len} bytes")
    return raw
