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


def verify_receipt_signature(signed: SignedReceipt) -> None:
    """The receipt must be signed by the node it names."""
    signer = receipt_signer(signed)
    if signer != signed.receipt.node:
        raise EvidenceError(f"receipt names node {signed.receipt.node} but is signed by {signer}")


def verify_evidence(signed: SignedReceipt, evidence: bytes) -> str:
    """Check a receipt's mode evidence; return the status it earns ("settled" for vanilla:
    signed by the node, but unverified)."""
    mode = signed.receipt.mode
    if mode == "vanilla":
        if evidence:
            raise EvidenceError("vanilla receipts carry no evidence")
        return "settled"
    raise EvidenceError(f"mode {mode!r} evidence is not supported by this chain version yet")
