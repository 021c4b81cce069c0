"""Checking a tee receipt without trusting the node or any one RPC endpoint.

The chain's record of the enclave key that signed the receipt (its coverage at the receipt's
height, the attestation that opened that coverage, the approvals of its measurement) and the TEE
policy are read with Merkle proofs against a header 2/3 of the validators signed. The attestation
is then verified again here, with the same verifiers the validators ran, at the block time they
ran them, and the receipt's signature is checked by the same TeeVerifier.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from haca.client.chain import ChainClient
from haca.client.errors import HacaError, ProofInvalid, QueryFailed
from haca.proofs.receipt import EvidenceError, receipt_signer
from haca.proofs.tee.attestation import Attestation, verify_attestation
from haca.proofs.tee.binding import measurement_id
from haca.proofs.tee.dev import DEV_LABEL
from haca.proofs.tee.policy import TeePolicy, check_binding
from haca.proofs.verifier import EnclaveStanding, TeeVerifier, VerifyContext
from haca.types.modes import Mode, Status
from haca.types.receipt import SignedReceipt
from haca.types.tee import (
    COVER_PREFIX,
    GLOBAL_SCOPE,
    addr_bytes,
    approval_key,
    attestation_key,
    enclave_key,
)

_TEE = TeeVerifier()


@dataclass(frozen=True)
class ReceiptVerification:
    """The local verdict on one receipt, and what it rests on."""

    receipt_id: str
    mode: str
    verified: bool  # the receipt and its evidence (enclave attestation, or proof) verify here
    chain_status: str  # the chain's settlement record status ("pending" if not settled yet)
    reason: str = ""  # why not verified
    dev: bool = False  # signed by the DEV attester's key: DEV-MODE, NOT FOR PRODUCTION
    enclave_key: str = ""
    attestation_format: str = ""
    measurement_id: str = ""
    proven_height: int = 0  # the chain height the proofs are from
    claims: dict[str, Any] = field(default_factory=dict)  # tee: the attestation's claims; zkml: the circuit

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.dev:
            out["warning"] = DEV_LABEL
        return out


def _standing(answer: dict[str, Any]) -> EnclaveStanding:
    covered, approved = bool(answer["covered"]), bool(answer["approved"])
    return EnclaveStanding.from_record(answer["enclave"], covered, approved, str(answer.get("detail", "")))


def enclave_lookup(chain: ChainClient, model: str, height: int) -> Callable[[str], EnclaveStanding | None]:
    """The chain's standing of an enclave key for one receipt (an unproven read: the check made
    on every answer; `verify_tee_receipt` proves it)."""

    def lookup(key: str) -> EnclaveStanding | None:
        try:
            return _standing(chain.query("/tee/enclave", f"{key}@{height}/{model}".encode()))
        except QueryFailed:
            return None

    return lookup


def proven_standing(
    chain: ChainClient, key: str, height: int, model: str
) -> tuple[EnclaveStanding, dict[str, Any] | None, int]:
    """The standing of `key` for a receipt at `height` for `model`, and the attestation covering
    that height, each checked against its proven state value; ProofInvalid if the answer differs."""
    answer, values, proven_height = chain.query_proven_keys("/tee/enclave", f"{key}@{height}/{model}".encode())
    record = _proven_json(values, enclave_key(key), "enclave record")
    if record != answer["enclave"]:
        raise ProofInvalid("the enclave record answered is not the proven one")
    prefix = COVER_PREFIX + addr_bytes(key)
    covering = [
        int.from_bytes(k[len(prefix) :], "big")
        for k, v in values.items()
        if k.startswith(prefix) and v and int.from_bytes(k[len(prefix) :], "big") <= height <= int(v)
    ]
    attestation = None
    if covering:
        attestation = _proven_json(values, attestation_key(key, covering[0]), "attestation")
        if attestation != answer.get("attestation"):
            raise ProofInvalid("the attestation answered is not the proven one")
    approvals = [approval_key(GLOBAL_SCOPE, record["measurement_id"]), approval_key(model, record["measurement_id"])]
    if any(k not in values for k in approvals):
        raise ProofInvalid("the answer does not prove the measurement's approvals")
    standing = _standing({**answer, "covered": bool(covering), "approved": any(values[k] for k in approvals)})
    return standing, attestation, proven_height


def _proven_json(values: dict[bytes, bytes], key: bytes, what: str) -> dict[str, Any]:
    raw = values.get(key)
    if not raw:
        raise ProofInvalid(f"the answer does not prove the {what}")
    doc: dict[str, Any] = json.loads(raw)
    return doc


def proven_policy(chain: ChainClient) -> TeePolicy:
    proven = chain.query_proven("/tee/policy")
    return TeePolicy.from_json(json.loads(proven.raw))


def verify_tee_receipt(chain: ChainClient, signed: SignedReceipt) -> ReceiptVerification:
    """Re-verify a receipt against proven chain state; never raises for a receipt that does not
    verify (the verdict says why), only for a chain that cannot be read or proven."""
    receipt = signed.receipt
    result = ReceiptVerification(signed.id, receipt.mode, False, chain_status(chain, signed.id))
    if receipt.mode != Mode.TEE:
        return replace(result, reason=f"a {receipt.mode} receipt carries no evidence")
    try:
        signer = receipt_signer(signed)
    except EvidenceError as exc:
        return replace(result, reason=str(exc))
    at = f"{receipt.model_id}@{receipt.height_hint}@{receipt.node}"
    manifest = chain.query("/registry/model_in_effect", at.encode())
    try:
        standing, attestation, height = proven_standing(chain, signer, receipt.height_hint, manifest["name"])
    except QueryFailed:
        reason = f"receipt is signed by {signer}, which is not an enclave key registered on chain"
        return replace(result, reason=reason, enclave_key=signer)
    result = replace(
        result,
        enclave_key=signer,
        dev=standing.dev,
        attestation_format=standing.format,
        measurement_id=standing.measurement_id,
        proven_height=height,
    )
    try:
        if attestation is not None:
            result = replace(
                result, claims=_reverify_attestation(chain, attestation, signer, standing, receipt.chain_id)
            )
        context = VerifyContext(
            receipt.chain_id,
            height,
            0,
            manifest,
            {"address": receipt.node},
            enclave=lambda key: standing if key == signer else None,
        )
        _TEE.verify(signed, b"", context)
    except EvidenceError as exc:
        return replace(result, reason=str(exc))
    return replace(result, verified=True)


def _reverify_attestation(
    chain: ChainClient, attestation: dict[str, Any], key: str, standing: EnclaveStanding, chain_id: str
) -> dict[str, Any]:
    """Verify the stored evidence again, at the block time the chain verified it."""
    policy = proven_policy(chain)
    evidence = Attestation(
        attestation["format"],
        bytes.fromhex(attestation["evidence"][2:]),
        bytes.fromhex(attestation["endorsements"][2:]),
    )
    at = int(attestation["time"])
    claims = verify_attestation(evidence, at, policy.root_pems())
    policy.check_claims(claims, at)
    check_binding(claims, chain_id, standing.node, key, bytes.fromhex(attestation["nonce"][2:]))
    if measurement_id(claims) != standing.measurement_id:
        raise EvidenceError("the attestation's measurement is not the one the chain recorded")
    return claims.to_json()


def chain_status(chain: ChainClient, receipt_id: str) -> str:
    try:
        proven = chain.query_proven("/inference/receipt", receipt_id.encode())
    except QueryFailed:
        return Status.PENDING.value
    if not proven.raw or json.loads(proven.raw) != proven.answer:
        raise HacaError("the settlement record answered is not the proven one")
    return str(proven.answer["status"])
