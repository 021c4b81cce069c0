"""Receipt-level checks shared by validators (settlement) and clients (local verification)."""

from __future__ import annotations

from haca.crypto.keys import SignatureError
from haca.types.receipt import SignedReceipt


class EvidenceError(ValueError):
    """Evidence is missing, malformed or does not verify."""


def receipt_signer(signed: SignedReceipt) -> str:
    """The address that signed the receipt; raises EvidenceError on a bad signature."""
    try:
        return signed.receipt.signer(signed.signature)
    except SignatureError as exc:
        raise EvidenceError(f"receipt signature: {exc}") from exc
