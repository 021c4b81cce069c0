"""secp256k1 keys with Ethereum addresses, and EIP-712 typed-data signatures."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_keys import keys as eth_keys
from eth_keys.exceptions import BadSignature, ValidationError
from eth_utils import is_hex_address, to_checksum_address

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
        return eth_keys.PrivateKey(self.secret).public_key.to_address().lower()

    def sign_typed_data(self, typed_data: dict[str, Any]) -> bytes:
        """Sign a full EIP-712 message (domain, types, primaryType, message); 65 bytes r‖s‖v."""
        signed = Account.sign_typed_data(self.secret, full_message=typed_data)
        return bytes(signed.signature)


def typed_data_digest(typed_data: dict[str, Any]) -> bytes:
    """The 32-byte EIP-712 digest that a signer signs."""
    signable = encode_typed_data(full_message=typed_data)
    return keccak256(b"\x19" + signable.version + signable.header + signable.body)


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
        sig = eth_keys.Signature(signature[:64] + bytes([v]))
        return sig.recover_public_key_from_msg_hash(digest).to_address().lower()
    except (BadSignature, ValidationError, ValueError) as exc:
        raise SignatureError(f"bad signature: {exc}") from exc
