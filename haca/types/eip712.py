"""EIP-712 typed data for HACA's signed structs (receipts, payment authorisations, allowances).

Every struct shares the HACA domain; its digest is what the signer signs and also its id.
"""

from __future__ import annotations

from typing import Any

from haca.crypto.eip712 import flat_struct_digest
from haca.crypto.keys import PrivateKey, SignatureError, recover_signer, sign_digest

DOMAIN = {"name": "HACA", "version": "1"}
DOMAIN_TYPE = [{"name": "name", "type": "string"}, {"name": "version", "type": "string"}]


def typed_data(primary: str, fields: list[tuple[str, str]], message: dict[str, Any]) -> dict[str, Any]:
    return {
        "domain": dict(DOMAIN),
        "types": {"EIP712Domain": DOMAIN_TYPE, primary: [{"name": n, "type": t} for n, t in fields]},
        "primaryType": primary,
        "message": message,
    }


def digest(primary: str, fields: list[tuple[str, str]], message: dict[str, Any]) -> bytes:
    return flat_struct_digest((DOMAIN["name"], DOMAIN["version"]), primary, tuple(fields), message)


def sign(key: PrivateKey, primary: str, fields: list[tuple[str, str]], message: dict[str, Any]) -> bytes:
    return sign_digest(key.secret, digest(primary, fields, message))


def signer_of(primary: str, fields: list[tuple[str, str]], message: dict[str, Any], signature: bytes) -> str:
    """The address that signed the struct; raises SignatureError."""
    return recover_signer(digest(primary, fields, message), signature)


__all__ = ["DOMAIN", "SignatureError", "digest", "sign", "signer_of", "typed_data"]
