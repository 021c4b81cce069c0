"""A small, fast EIP-712 encoder for the typed data HACA signs (flat or nested structs of
string, bytes, bytesN, address, uintN, bool, and arrays of these).

eth-account's generic encoder validates heavily and costs ~0.2 ms per digest; validators and
nodes hash typed data on every tx and receipt, so this one precomputes type hashes. Its output
is tested to equal eth-account's `encode_typed_data` digest.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from haca.crypto.hashing import keccak256

Types = dict[str, list[dict[str, str]]]
Frozen = tuple[tuple[str, tuple[tuple[str, str], ...]], ...]


def typed_data_digest(typed_data: dict[str, Any]) -> bytes:
    types: Types = typed_data["types"]
    frozen = _freeze(types)  # the type-hash cache key, computed once per digest
    domain = hash_struct("EIP712Domain", types, typed_data["domain"], frozen)
    message = hash_struct(typed_data["primaryType"], types, typed_data["message"], frozen)
    return keccak256(b"\x19\x01" + domain + message)


def hash_struct(name: str, types: Types, value: dict[str, Any], frozen: Frozen | None = None) -> bytes:
    frozen = frozen if frozen is not None else _freeze(types)
    parts = [_type_hash(name, frozen)]
    for fld in types[name]:
        parts.append(_encode_value(fld["type"], types, value[fld["name"]], frozen))
    return keccak256(b"".join(parts))


def _freeze(types: Types) -> Frozen:
    return tuple(sorted((k, tuple((f["name"], f["type"]) for f in v)) for k, v in types.items()))


@lru_cache(maxsize=256)
def _type_hash(name: str, frozen: Frozen) -> bytes:
    types = {k: list(v) for k, v in frozen}
    deps = sorted(_dependencies(name, types) - {name})
    encoded = "".join(f"{t}({','.join(f'{ft} {fn}' for fn, ft in types[t])})" for t in [name, *deps])
    return keccak256(encoded.encode())


def _dependencies(name: str, types: dict[str, list[tuple[str, str]]], found: set[str] | None = None) -> set[str]:
    found = set() if found is None else found
    if name in found or name not in types:
        return found
    found.add(name)
    for _, field_type in types[name]:
        _dependencies(field_type.split("[", 1)[0], types, found)
    return found


def _encode_value(field_type: str, types: Types, value: Any, frozen: Frozen | None = None) -> bytes:
    if field_type.endswith("]"):
        inner = field_type[: field_type.rindex("[")]
        return keccak256(b"".join(_encode_value(inner, types, item, frozen) for item in value))
    if field_type in types:
        return hash_struct(field_type, types, value, frozen)
    if field_type == "string":
        return keccak256(value.encode())
    if field_type == "bytes":
        return keccak256(_as_bytes(value))
    if field_type == "address":
        return bytes(12) + bytes.fromhex(value[2:])
    if field_type == "bool":
        return int(bool(value)).to_bytes(32, "big")
    if field_type.startswith("uint"):
        number = int(value)
        if number < 0 or number >= 1 << int(field_type[4:] or 256):
            raise ValueError(f"{number} does not fit {field_type}")
        return number.to_bytes(32, "big")
    if field_type.startswith("bytes"):
        raw = _as_bytes(value)
        if len(raw) != int(field_type[5:]):
            raise ValueError(f"{field_type} needs {field_type[5:]} bytes, got {len(raw)}")
        return raw.ljust(32, b"\x00")
    raise ValueError(f"unsupported EIP-712 type {field_type}")


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str) and value.startswith("0x"):
        return bytes.fromhex(value[2:])
    raise ValueError("bytes values must be bytes or 0x-hex")


@lru_cache(maxsize=64)
def _flat_struct_type(primary: str, fields: tuple[tuple[str, str], ...]) -> tuple[bytes, Types]:
    types: Types = {primary: [{"name": n, "type": t} for n, t in fields]}
    return _type_hash(primary, _freeze(types)), types


@lru_cache(maxsize=16)
def domain_separator(name: str, version: str) -> bytes:
    domain_types: Types = {"EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"}]}
    return hash_struct("EIP712Domain", domain_types, {"name": name, "version": version})


def flat_struct_digest(
    domain: tuple[str, str], primary: str, fields: tuple[tuple[str, str], ...], message: dict[str, Any]
) -> bytes:
    """The EIP-712 digest of a struct of atomic fields (no nested structs), with the type hash
    and domain separator computed once per struct type: the hot path of receipts and payments."""
    type_hash, types = _flat_struct_type(primary, fields)
    encoded = b"".join(_encode_value(t, types, message[n]) for n, t in fields)
    return keccak256(b"\x19\x01" + domain_separator(*domain) + keccak256(type_hash + encoded))


def struct_type_hash(primary: str, fields: tuple[tuple[str, str], ...]) -> bytes:
    """The type hash of a flat struct (for encoders that build a struct's bytes themselves)."""
    return _flat_struct_type(primary, fields)[0]
