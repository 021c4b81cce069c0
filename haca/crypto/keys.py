"""secp256k1 keys with Ethereum addresses, and EIP-712 typed-data signatures."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import coincurve
from eth_utils import is_hex_address, to_checksum_address

from haca.crypto import eip712
from haca.crypto.hashing import keccak256


class SignatureError(ValueError):
    """A signature is malformed or does not recover to an address."""


def normalize_address(address: str) -> str:
    """Return the lower-case 0x address, or raise ValueError when it is not one."""
    if not isinstance(address, str) or address[:2] not in ("0x", "0X") or not is_hex_address(address):
        raise ValueError(f"not an address (0x and 40 hex digits): {address!r}")
    return "0x" + address[2:].lower()


def checksum(address: str) -> str:
    return to_checksum_address(address)


@dataclass(frozen=True)
class PrivateKey:
    """A secp256k1 private key; its address is the Ethereum one (lower-case hex)."""

    secret: bytes

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(secrets.token_bytes(32))

    @classmethod
    def from_hex(cls, text: str) -> PrivateKey:
        raw = bytes.fromhex(text.removeprefix("0x"))
        if len(raw) != 32:
            raise ValueError("a private key is 32 bytes")
        return cls(raw)

    @classmethod
    def from_seed(cls, seed: str) -> PrivateKey:
        """A deterministic key, for dev accounts only."""
        return cls(keccak256(seed.encode()))

    @property
    def hex(self) -> str:
        return "0x" + self.secret.hex()

    @property
    def address(self) -> str:
        public = coincurve.PrivateKey(self.secret).public_key.format(compressed=False)
        return "0x" + keccak256(public[1:])[12:].hex()

    def sign_typed_data(self, typed_data: dict[str, Any]) -> bytes:
        """Sign a full EIP-712 message (domain, types, primaryType, message); 65 bytes r‖s‖v."""
        return sign_digest(self.secret, typed_data_digest(typed_data))


def typed_data_digest(typed_data: dict[str, Any]) -> bytes:
    """The 32-byte EIP-712 digest that a signer signs."""
    return eip712.typed_data_digest(typed_data)


def sign_digest(secret: bytes, digest: bytes) -> bytes:
    """65-byte Ethereum signature r‖s‖v (v = 27/28) of a 32-byte digest."""
    sig = coincurve.PrivateKey(secret).sign_recoverable(digest, hasher=None)
    return sig[:64] + bytes([sig[64] + 27])


def recover_signer(digest: bytes, signature: bytes) -> str:
    """Recover the lower-case address that signed `digest` (Ethereum v = 27/28 or 0/1)."""
    if len(signature) != 65:
        raise SignatureError("signature must be 65 bytes")
    v = signature[64]
    if v >= 27:
        v -= 27
    if v not in (0, 1):
        raise SignatureError("signature recovery id must be 27 or 28")
    try:
        public = coincurve.PublicKey.from_signature_and_message(signature[:64] + bytes([v]), digest, hasher=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"bad signature: {exc}") from exc
    return "0x" + keccak256(public.format(compressed=False)[1:])[12:].hex()
