"""Hash functions used across the wire and the state machine."""

import hashlib

from eth_hash.auto import keccak as _keccak


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def keccak256(data: bytes) -> bytes:
    return _keccak(data)
