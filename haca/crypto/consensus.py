"""Consensus keys (CometBFT validators' ed25519 keys) and their proof of possession.

An operator names its validator's consensus key in MsgCreateValidator. Keys are never reused, so a
key registered by someone else first would lock its owner out: the message carries a signature by
the consensus key itself over the chain id and the operator's address, which only the key's holder
can make and which binds it to that one operator on that one chain."""

from __future__ import annotations

import base64
from typing import Any

import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

POSSESSION_DOMAIN = b"HACA consensus key possession/1\x00"
PUBLIC_KEY_SIZE, SIGNATURE_SIZE = 32, 64


def possession_message(chain_id: str, operator: str, pub_key: bytes) -> bytes:
    """What the consensus key signs: domain, chain id, the operator's 20-byte address, the key."""
    return POSSESSION_DOMAIN + chain_id.encode() + b"\x00" + bytes.fromhex(operator.removeprefix("0x")) + pub_key


def consensus_seed(priv_validator_key: dict[str, Any]) -> bytes:
    """The 32-byte ed25519 seed of CometBFT's priv_validator_key.json (its value is seed + public key)."""
    raw = base64.b64decode(priv_validator_key["priv_key"]["value"])
    if len(raw) != 64:
        raise ValueError(f"priv_validator_key.json holds a {len(raw)}-byte key, not an ed25519 seed and public key")
    return raw[:32]


def sign_possession(seed: bytes, chain_id: str, operator: str) -> tuple[bytes, bytes]:
    """(public key, proof of possession) of the consensus key `seed` for `operator` on `chain_id`."""
    key = Ed25519PrivateKey.from_private_bytes(seed)
    pub_key = key.public_key().public_bytes_raw()
    return pub_key, key.sign(possession_message(chain_id, operator, pub_key))


def verify_possession(pub_key: bytes, signature: bytes, chain_id: str, operator: str) -> bool:
    """libsodium's verification (consensus-critical: one library, one answer on every validator):
    it refuses a small-order public key, for which a "signature" needs no private key, and
    non-canonical encodings."""
    if len(pub_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        nacl.signing.VerifyKey(pub_key).verify(possession_message(chain_id, operator, pub_key), signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        return False
    return True
