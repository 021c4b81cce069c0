"""Checking a tee receipt without trusting the node or any one RPC endpoint.

The model the receipt is for (its terms in effect at the receipt's height), the chain's record of
the enclave key that signed it (its platform and GPU summary, its coverage at the receipt's
height, the attestation that opened that coverage, the approvals of its measurement for that model
and for every model) and the TEE policy are read with Merkle proofs against a header 2/3 of the
validators signed. The attestation, and the GPU reports stored with it, are then verified again
here, with the same verifiers the validators ran, at the block time they ran them; the GPU reports
must re-verify to exactly the record's GPU summary. The receipt's signature, the measurement's
approval for the receipt's model and the policy's `gpu_required` are checked by the same
TeeVerifier the validators run.

The platform a receipt was computed on is the attestation format (dev, tdx, snp, nitro, sgx), plus
the GPUs whose reports came with it; `describe_platform` says it in words, the DEV label loud.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from haca.client.chain import ChainClient
from haca.client.errors import HacaError, ProofInvalid, QueryFailed
from haca.client.records import parse_answer, proven_manifest
from haca.proofs.receipt import EvidenceError, receipt_signer
from haca.proofs.tee.attestation import Attestation, verify_attestation
from haca.proofs.tee.binding import measurement_id
from haca.proofs.tee.claims import AttestationError
from haca.proofs.tee.dev import DEV_LABEL
from haca.proofs.tee.gpu import reverify_gpus
from haca.proofs.tee.policy import TeePolicy, check_binding
from haca.proofs.verifier import EnclaveStanding, TeeVerifier, VerifyContext
from haca.types.modes import Mode, Status
from haca.types.receipt import SignedReceipt
from haca.types.settlement import SettlementRecord
from haca.types.tee import (
    COVER_PREFIX,
    GLOBAL_SCOPE,
    EnclaveRecord,
    addr_bytes,
    approval_key,
    attestation_key,
    enclave_key,
    parse_gpus,
)

_TEE = TeeVerifier()

# NVIDIA chip name prefixes (GH100, GB200, …) -> the architecture, for people reading a GPU summary
GPU_ARCHITECTURES = {"GA": "Ampere", "AD": "Ada", "GH": "Hopper", "GB": "Blackwell"}


@dataclass(frozen=True)
class ReceiptVerification:
    """The local verdict on one receipt, and what it rests on."""

    receipt_id: str
    mode: str
    verified: bool  # the receipt and its evidence (enclave attestation, or proof) verify here
    chain_status: str  # the chain's settlement record status ("pending" if not settled yet)
    reason: str = ""  # why not verified
    # evidence of the DEV platform (`haca enclave serve --platform dev`, or a DEV GPU): DEV-MODE, NOT FOR PRODUCTION
    dev: bool = False
    enclave_key: str = ""
    attestation_format: str = ""
    measurement_id: str = ""
    proven_height: int = 0  # the chain height the proofs are from
    claims: dict[str, Any] = field(default_factory=dict)  # tee: the attestation's claims; zkml: the circuit
    platform: str = ""  # tee: where the enclave ran the model, the attestation format (dev, tdx, snp, nitro, sgx)
    # tee: the chain record's summary of each GPU attested with the enclave key ({"format", "chip",
    # "board", "driver_version", "vbios_version", "dev"}), re-verified here from the stored reports
    gpus: list[dict[str, Any]] = field(default_factory=list)
    model: str = ""  # tee: the model name the receipt is for (its terms in effect at the receipt's height)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.dev:
            out["warning"] = DEV_LABEL
        return out

    def describe_platform(self) -> str:
        return describe_platform(self.platform, self.gpus)


def gpu_architecture(chip: str) -> str:
    """The architecture of an NVIDIA chip name ("GH100" -> "Hopper"), "" when not known."""
    return GPU_ARCHITECTURES.get(chip[:2].upper(), "") if chip else ""


def describe_gpu(gpu: Mapping[str, Any]) -> str:
    """One GPU summary in words ("GH100 (Hopper), driver 550.54.15, VBIOS 96.00…"), a DEV GPU flagged."""
    chip = str(gpu.get("chip") or "unknown chip")
    arch = gpu_architecture(chip)
    text = f"{chip} ({arch})" if arch else chip
    if gpu.get("driver_version"):
        text += f", driver {gpu['driver_version']}"
    if gpu.get("vbios_version"):
        text += f", VBIOS {gpu['vbios_version']}"
    if gpu.get("dev"):
        text += f" [DEV GPU: {DEV_LABEL}]"
    return text


def describe_platform(platform: str, gpus: Sequence[Mapping[str, Any]] = ()) -> str:
    """Where an enclave ran, in words: "dev [DEV platform: …], GPU …", "tdx, GPU GH100 (Hopper), driver …"."""
    text = platform or "unknown platform"
    if platform == "dev":
        text += f" [DEV platform: {DEV_LABEL}]"
    for gpu in gpus:
        text += f", GPU {describe_gpu(gpu)}"
    return text


def _standing(answer: dict[str, Any]) -> EnclaveStanding:
    covered, approved = bool(answer["covered"]), bool(answer["approved"])
    record = parse_answer(EnclaveRecord.from_json, answer["enclave"], "enclave record")
    return EnclaveStanding.from_record(record, covered, approved, str(answer.get("detail", "")))


def enclave_lookup(chain: ChainClient, model: str, height: int) -> Callable[[str], EnclaveStanding | None]:
    """The chain's standing of an enclave key for one receipt (an unproven read: the check made
    on every answer; `verify_tee_receipt` proves it)."""

    def lookup(key: str) -> EnclaveStanding | None:
        try:
            return _standing(chain.query("/tee/enclave", f"{key}@{height}/{model}".encode()))
        except QueryFailed:
            return None

    return lookup


@dataclass(frozen=True)
class ProvenEnclave:
    """An enclave key's standing for one receipt, each part from proven state."""

    standing: EnclaveStanding  # approved: its measurement is approved for the model or for "*" (GPU rule apart)
    record: EnclaveRecord  # the chain's enclave record (platform, measurement, GPU summary, …)
    attestation: dict[str, Any] | None  # the attestation that opened the coverage of the receipt's height
    height: int  # the height the proofs are from


def proven_enclave(chain: ChainClient, key: str, height: int, model: str) -> ProvenEnclave:
    """The standing of `key` for a receipt at `height` for `model`, its record and the attestation
    covering that height, each checked against its proven state value; ProofInvalid if the answer
    differs. `approved` and `detail` are judged here from the proven values, never taken from the
    answer: the measurement's approval for `model` or for every model ("*") now (the GPU rule is the
    verifier's, with the proven policy's gpu_required)."""
    answer, values, proven_height = chain.query_proven_keys("/tee/enclave", f"{key}@{height}/{model}".encode())
    stored = _proven_json(values, enclave_key(key), "enclave record")
    if stored != answer["enclave"]:
        raise ProofInvalid("the enclave record answered is not the proven one")
    record = parse_answer(EnclaveRecord.from_json, stored, "enclave record")
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
    mid = record.measurement_id
    approvals = [approval_key(GLOBAL_SCOPE, mid), approval_key(model, mid)]
    if any(k not in values for k in approvals):
        raise ProofInvalid("the answer does not prove the measurement's approvals")
    approved = any(values[k] for k in approvals)
    if not approved:
        detail = (
            f"measurement {mid} of enclave key {key} is not approved for model {model!r} nor for every"
            ' model ("*") on chain: revoked, or never approved'
        )
    elif not covering:
        detail = (
            f"no attestation of enclave key {key} covers height {height} (last attested at"
            f" {record.attested_height}, good until {record.good_until}):"
            " a heartbeat was missed or the key was not yet registered"
        )
    else:
        detail = ""
    standing = EnclaveStanding.from_record(record, bool(covering), approved, detail)
    return ProvenEnclave(standing, record, attestation, proven_height)


def proven_standing(
    chain: ChainClient, key: str, height: int, model: str
) -> tuple[EnclaveStanding, dict[str, Any] | None, int]:
    """`proven_enclave` as (standing, covering attestation, proven height)."""
    proven = proven_enclave(chain, key, height, model)
    return proven.standing, proven.attestation, proven.height


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
    try:
        manifest, _ = proven_manifest(chain, receipt.model_id, receipt.height_hint, receipt.node)
    except QueryFailed as exc:
        reason = f"model {receipt.model_id} has no terms on chain at height {receipt.height_hint}: {exc}"
        return replace(result, reason=reason, enclave_key=signer)
    model = manifest.name
    result = replace(result, model=model)
    try:
        proven = proven_enclave(chain, signer, receipt.height_hint, model)
    except QueryFailed:
        reason = f"receipt is signed by {signer}, which is not an enclave key registered on chain"
        return replace(result, reason=reason, enclave_key=signer)
    standing, gpus = proven.standing, list(proven.record.gpus)
    result = replace(
        result,
        enclave_key=signer,
        dev=standing.dev or any(bool(g.get("dev")) for g in gpus),
        attestation_format=standing.format,
        platform=standing.format,
        gpus=gpus,
        measurement_id=standing.measurement_id,
        proven_height=proven.height,
    )
    policy = proven_policy(chain)
    try:
        if proven.attestation is not None:
            claims = _reverify_attestation(proven.attestation, signer, standing, receipt.chain_id, policy)
            result = replace(result, claims=claims)
            _reverify_gpus(proven.attestation, policy, receipt.chain_id, standing.node, signer, gpus)
        context = VerifyContext(
            receipt.chain_id,
            proven.height,
            0,
            model,
            receipt.node,
            enclave=lambda key: standing if key == signer else None,
            gpu_required=policy.gpu_required,
        )
        _TEE.verify(signed, b"", context)
    except EvidenceError as exc:
        return replace(result, reason=str(exc))
    return replace(result, verified=True)


def _reverify_attestation(
    attestation: dict[str, Any], key: str, standing: EnclaveStanding, chain_id: str, policy: TeePolicy
) -> dict[str, Any]:
    """Verify the stored evidence again, at the block time the chain verified it."""
    evidence = Attestation(
        attestation["format"],
        bytes.fromhex(attestation["evidence"][2:]),
        bytes.fromhex(attestation["endorsements"][2:]),
    )
    at = int(attestation["time"])
    claims = verify_attestation(evidence, at, policy.root_pems())
    policy.check_claims(claims, at)
    stored_gpus = attestation.get("gpus") or []
    gpus = parse_gpus(stored_gpus) if stored_gpus else ()  # the CPU evidence binds the GPU reports sent with it
    check_binding(claims, chain_id, standing.node, key, bytes.fromhex(attestation["nonce"][2:]), gpus)
    if measurement_id(claims) != standing.measurement_id:
        raise EvidenceError("the attestation's measurement is not the one the chain recorded")
    return claims.to_json()


def _reverify_gpus(
    attestation: dict[str, Any],
    policy: TeePolicy,
    chain_id: str,
    node: str,
    key: str,
    summary: Sequence[Mapping[str, Any]],
) -> None:
    """The GPU reports stored with the attestation, verified again at its block time against the
    proven policy, must give exactly the record's GPU summary."""
    try:
        found = reverify_gpus(attestation, policy, chain_id, node, key)
    except AttestationError as exc:
        raise EvidenceError(f"a GPU report of enclave key {key} does not re-verify: {exc}") from exc
    if found != list(summary):
        raise EvidenceError(
            f"the GPU reports stored with enclave key {key}'s attestation re-verify to {found},"
            f" not to the chain record's GPU summary {list(summary)}"
        )


def chain_status(chain: ChainClient, receipt_id: str) -> str:
    try:
        proven = chain.query_proven("/inference/receipt", receipt_id.encode())
    except QueryFailed:
        return Status.PENDING.value
    if not proven.raw or json.loads(proven.raw) != proven.answer:
        raise HacaError("the settlement record answered is not the proven one")
    return parse_answer(SettlementRecord.from_json, proven.answer, "settlement record").status.value
