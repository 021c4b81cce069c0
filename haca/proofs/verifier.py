"""One `Verifier` per verification mode, behind one protocol, so validators and clients check
evidence with the very same code.

A verifier is pure and deterministic: everything it may depend on is in the `VerifyContext` the
caller builds (on chain: from state at the block being executed; at the client: from chain
queries it checked). Which key must have signed a receipt is the verifier's decision (vanilla:
the node's account key; tee: the enclave key registered for the node).

The costly, context-free part of a check (recovering a signature, verifying an attestation or a
proof) is memoised in a `VerdictCache` keyed by the hash of the evidence, so CheckTx, recheck,
ProcessProposal and FinalizeBlock do that work once per receipt.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from haca.crypto.hashing import sha256
from haca.proofs.receipt import EvidenceError, receipt_signer
from haca.proofs.tee.policy import gpu_missing
from haca.proofs.zk.proof import PROOF_MAGIC, instances_commitment, proof_instances, verify_proof
from haca.types.modes import Mode, Status
from haca.types.receipt import SignedReceipt
from haca.types.tee import EnclaveRecord

T = TypeVar("T")


class MeasurementRevoked(EvidenceError):
    """The enclave's measurement is not approved for the receipt's model (revoked, or never was)."""


class EnclaveLapsed(EvidenceError):
    """No attestation of the enclave key covers the receipt's height (a missed heartbeat)."""


@dataclass(frozen=True)
class EnclaveStanding:
    """What the chain says about one enclave key, for one receipt (its height and model)."""

    key: str
    node: str  # the node that registered the key
    format: str  # attestation format of its evidence: the platform (dev: the labelled DEV platform)
    measurement_id: str
    dev: bool
    covered: bool  # an attestation covers the receipt's height
    approved: bool  # its measurement is approved for the receipt's model now (and GPU rule met)
    detail: str = ""  # why not, in words
    gpus: int = 0  # verified GPU reports its latest attestation carried

    @classmethod
    def from_record(cls, record: EnclaveRecord, covered: bool, approved: bool, detail: str = "") -> EnclaveStanding:
        """From the chain's enclave record (`/tee/enclave`) and its judgement for one receipt."""
        return cls(
            key=record.key,
            node=record.node,
            format=record.format,
            measurement_id=record.measurement_id,
            dev=record.dev,
            covered=covered,
            approved=approved,
            detail=detail,
            gpus=len(record.gpus),
        )


@dataclass(frozen=True)
class CircuitArtefacts:
    """zkml: what a proof is verified against, all pinned by the model's manifest."""

    settings: bytes
    vk: bytes
    settings_hash: str
    vk_hash: str
    srs: Path  # the genesis SRS file of the circuit's logrows, its hash checked at start-up


def _no_enclave(key: str) -> EnclaveStanding | None:
    return None


@dataclass(frozen=True)
class VerifyContext:
    """What a verifier may know besides the receipt and its evidence."""

    chain_id: str
    height: int  # the block being executed (the client: the height it read the chain at)
    time: int  # that block's time, unix seconds, from its header (never a wall clock on chain)
    model: str  # the name of the model whose terms are in effect at the receipt's height hint ("" unknown)
    node: str  # the address of the node the receipt is settled for (the chain: the tx signer)
    # tee: the chain's record of an enclave key, judged for this receipt's height and model
    enclave: Callable[[str], EnclaveStanding | None] = _no_enclave
    circuit: CircuitArtefacts | None = None  # zkml: the model's circuit
    # CheckTx: leave an uncached zkml proof to the block, where its tx fee is charged whatever the
    # verdict (a junk proof refused in CheckTx would cost the validator a verify and the sender nothing)
    defer_proof: bool = False
    # tee: the TEE policy's gpu_required (models, or "*", whose receipts need an enclave attested
    # with a GPU report); the chain's standing already folds it into `approved`, a client passes it
    gpu_required: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    status: Status  # SETTLED (signed, not independently verified) or VERIFIED
    signer: str  # the key that signed the receipt
    enclave: EnclaveStanding | None = None  # tee: the attested key that signed it (dev: DEV platform)
    provisional: bool = False  # CheckTx: the proof is left to the block (VerifyContext.defer_proof)

    @property
    def dev(self) -> bool:
        return self.enclave is not None and self.enclave.dev


class Verifier(Protocol):
    mode: Mode

    def verify(self, signed: SignedReceipt, evidence: bytes, ctx: VerifyContext) -> Verdict:
        """The verdict on a receipt; EvidenceError (with the reason) when it does not verify."""
        ...


class VerdictCache:
    """A bounded memo of context-free results, keyed by the hash of what they were computed from."""

    def __init__(self, size: int = 50_000) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, Any] = OrderedDict()
        self.hits = self.misses = 0

    @staticmethod
    def _key(parts: tuple[bytes, ...]) -> bytes:
        return sha256(b"".join(len(p).to_bytes(4, "big") + p for p in parts))

    def peek(self, parts: tuple[bytes, ...]) -> Any:
        """The cached result for `parts`, or None (nothing is computed)."""
        return self._entries.get(self._key(parts))

    def get(self, parts: tuple[bytes, ...], compute: Callable[[], T]) -> T:
        key = self._key(parts)
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            value: T = self._entries[key]
            return value
        self.misses += 1
        value = compute()  # an exception is not cached: a bad receipt is re-checked and re-refused
        self._entries[key] = value
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return value


class _SignatureVerifier:
    """A verifier whose costly part is recovering the receipt's signer (memoised per receipt)."""

    def __init__(self, cache: VerdictCache | None = None) -> None:
        self.cache = cache or VerdictCache()

    def signer(self, signed: SignedReceipt) -> str:
        return self.cache.get((signed.receipt.digest, signed.signature), lambda: receipt_signer(signed))


class VanillaVerifier(_SignatureVerifier):
    """The node's own signature, nothing else: the receipt settles, marked unverified."""

    mode = Mode.VANILLA

    def verify(self, signed: SignedReceipt, evidence: bytes, ctx: VerifyContext) -> Verdict:
        if evidence:
            raise EvidenceError("vanilla receipts carry no evidence")
        signer = self.signer(signed)
        node = ctx.node
        if signer != node or signed.receipt.node != node:
            raise EvidenceError(f"receipt names node {signed.receipt.node} but is signed by {signer}")
        return Verdict(Status.SETTLED, signer)


class TeeVerifier(_SignatureVerifier):
    """Signed by an enclave key the chain attested for this node, covering the receipt's height,
    with a measurement approved for its model now. The receipt carries no evidence of its own:
    the attestation was checked once, when the key was registered (and at each heartbeat)."""

    mode = Mode.TEE

    def verify(self, signed: SignedReceipt, evidence: bytes, ctx: VerifyContext) -> Verdict:
        if evidence:
            raise EvidenceError("tee receipts carry no evidence: the enclave key is attested on chain")
        signer = self.signer(signed)
        node = ctx.node
        if signed.receipt.node != node:
            raise EvidenceError(f"receipt names node {signed.receipt.node}, not {node}")
        if signer == node:
            raise EvidenceError(
                f"tee receipt is signed by the node's account key {node}, not by an attested enclave key"
            )
        standing = ctx.enclave(signer)
        if standing is None or standing.node != node:
            raise EvidenceError(f"receipt is signed by {signer}, which is not an enclave key attested for node {node}")
        if not standing.approved:
            raise MeasurementRevoked(standing.detail)
        if missing := gpu_missing(ctx.gpu_required, standing.gpus, signer, ctx.model):
            raise MeasurementRevoked(missing)
        if not standing.covered:
            raise EnclaveLapsed(standing.detail)
        return Verdict(Status.VERIFIED, signer, standing)


class ZkmlVerifier(_SignatureVerifier):
    """Signed by the node, and carrying an EZKL proof that verifies against the model's pinned
    verifying key and settings, whose public instances are exactly the ones the receipt commits
    to (its input commitment and quantized outputs): bytes compared with bytes."""

    mode = Mode.ZKML

    def verify(self, signed: SignedReceipt, evidence: bytes, ctx: VerifyContext) -> Verdict:
        signer = self.signer(signed)
        node = ctx.node
        if signer != node or signed.receipt.node != node:
            raise EvidenceError(f"receipt names node {signed.receipt.node} but is signed by {signer}")
        if not evidence:
            raise EvidenceError("a zkml receipt settles only with its proof")
        circuit = ctx.circuit
        if circuit is None:
            raise EvidenceError("the model has no circuit on chain to verify a proof against")
        if not evidence.startswith(PROOF_MAGIC):  # the chain takes only the binary form (no JSON parser on it)
            raise EvidenceError("a zkml proof must be in HACA's binary proof encoding (magic HZK\\x01)")
        # Cheap first: the proof decodes and claims the instances the receipt commits to.
        if instances_commitment(proof_instances(evidence)) != signed.receipt.instances_hash:
            raise EvidenceError(
                "the proof's public instances are not the ones the receipt commits to (another input or output)"
            )
        parts = (b"zkml", sha256(evidence), circuit.vk_hash.encode(), circuit.settings_hash.encode())
        if ctx.defer_proof and self.cache.peek(parts) is None:
            return Verdict(Status.VERIFIED, signer, provisional=True)  # the block verifies the proof
        self.cache.get(parts, lambda: verify_proof(evidence, circuit.settings, circuit.vk, circuit.srs))
        return Verdict(Status.VERIFIED, signer)


def verifiers(cache: VerdictCache | None = None) -> dict[str, Verifier]:
    """Every mode this version verifies, sharing one cache."""
    shared = cache or VerdictCache()
    return {Mode.VANILLA: VanillaVerifier(shared), Mode.TEE: TeeVerifier(shared), Mode.ZKML: ZkmlVerifier(shared)}


def verify(table: Mapping[str, Verifier], signed: SignedReceipt, evidence: bytes, ctx: VerifyContext) -> Verdict:
    verifier = table.get(signed.receipt.mode)
    if verifier is None:
        raise EvidenceError(f"mode '{signed.receipt.mode}' evidence is not supported by this chain version yet")
    return verifier.verify(signed, evidence, ctx)
