"""tee message handlers: a node attests an enclave key; the authority sets the policy and
approves or revokes measurements."""

from __future__ import annotations

from haca.chain.blocks import block_hash
from haca.chain.errors import (
    InvalidAttestation,
    InvalidMessage,
    MeasurementNotApproved,
    NotFound,
    Unauthorized,
)
from haca.chain.events import Event
from haca.chain.modules.gov.keeper import GovKeeper
from haca.chain.modules.registry.keeper import RegistryKeeper
from haca.chain.modules.tee.keeper import TeeKeeper
from haca.chain.tx import TxContext
from haca.proofs.tee.attestation import Attestation, verify_attestation
from haca.proofs.tee.binding import gpu_report_nonce, measurement_id
from haca.proofs.tee.claims import AttestationError, Claims
from haca.proofs.tee.gpu import verify_gpu
from haca.proofs.tee.nvidia import GpuReport
from haca.proofs.tee.policy import TeePolicy, check_binding
from haca.types.modes import Mode
from haca.types.tee import (
    GLOBAL_SCOPE,
    EnclaveRecord,
    GpuEvidence,
    MsgApproveMeasurement,
    MsgAttestEnclave,
    MsgRevokeMeasurement,
    MsgSetTeePolicy,
    gpus_json,
)


def handle_attest_enclave(
    tee: TeeKeeper, registry: RegistryKeeper, ctx: TxContext, msg: MsgAttestEnclave
) -> list[Event]:
    if msg.key == ctx.signer:
        raise InvalidAttestation("the enclave key must not be the node's account key")
    try:
        node = registry.node(ctx.state, ctx.signer)
    except NotFound as exc:
        raise Unauthorized(f"{ctx.signer} is not a registered node: register it before its enclave") from exc
    if Mode.TEE not in node.modes:
        raise Unauthorized(f"node {ctx.signer} is not registered for mode 'tee'")
    previous = tee.enclave(ctx.state, msg.key)
    if previous is not None and previous.node != ctx.signer:
        raise Unauthorized(f"enclave key {msg.key} is registered by node {previous.node}")
    policy = tee.policy(ctx.state)
    nonce = _fresh_nonce(ctx, policy, msg.nonce_height)
    attestation = Attestation(msg.format, msg.evidence, msg.endorsements)
    try:
        policy.check_format(msg.format)
        claims = _verified(tee, attestation, ctx.time, policy)
        policy.check_claims(claims, ctx.time)
        check_binding(claims, ctx.chain_id, ctx.signer, msg.key, nonce, msg.gpus)
        mid = measurement_id(claims)
    except AttestationError as exc:
        raise InvalidAttestation(f"{msg.format} attestation refused: {exc}") from exc
    if previous is not None and previous.measurement_id != mid:
        raise InvalidAttestation(f"enclave key {msg.key} was registered with measurement {previous.measurement_id}")
    if tee.approved_scope(ctx.state, mid, list(node.models)) is None:
        raise MeasurementNotApproved(
            f"measurement {mid} is not approved for any of the node's models {list(node.models)}"
        )
    gpu_nonce = gpu_report_nonce(ctx.chain_id, ctx.signer, msg.key, nonce)
    gpus = [_checked_gpu(tee, policy, i, gpu, ctx.time, gpu_nonce).summary() for i, gpu in enumerate(msg.gpus)]
    if previous is not None and list(previous.gpus) != gpus:
        # A key's GPUs are fixed when it registers: a heartbeat with other (or no) GPUs would let
        # gpu_required judge receipts signed before by GPUs that were not there then.
        raise InvalidAttestation(
            f"enclave key {msg.key} was registered with {len(previous.gpus)} GPU report(s) that this"
            " attestation does not repeat: a key's GPUs are fixed at registration (start a new key)"
        )
    # its coverage heights (registered, attested, good until) are the keeper's to set
    record = EnclaveRecord(
        msg.key, ctx.signer, msg.format, mid, claims.dev, claims.debug, claims.tcb_status, tuple(gpus)
    )
    evidence = {
        "format": msg.format,
        "evidence": "0x" + msg.evidence.hex(),
        "endorsements": "0x" + msg.endorsements.hex(),
        "nonce_height": msg.nonce_height,
        "nonce": "0x" + nonce.hex(),  # the block hash it bound: checkable long after the hash is pruned
        "height": ctx.height,
        "time": ctx.time,  # the block time it verified at: a client re-verifies at this time
        "gpus": gpus_json(msg.gpus),  # each bound to gpu_report_nonce(chain id, node, key, nonce)
    }
    segment = tee.record_attestation(ctx.state, record, evidence, ctx.height, policy.heartbeat_interval)
    kind = "register" if previous is None else "heartbeat"
    attrs = {"node": ctx.signer, "key": msg.key, "kind": kind, "measurement_id": mid, "dev": str(claims.dev).lower()}
    if gpus:
        attrs["gpus"] = str(len(gpus))
    return [Event("enclave_attested", {**attrs, "good_until": str(segment.until)})]


def _fresh_nonce(ctx: TxContext, policy: TeePolicy, nonce_height: int) -> bytes:
    oldest = max(1, ctx.height - policy.nonce_window)
    if not oldest <= nonce_height < ctx.height:
        raise InvalidAttestation(
            f"stale nonce: block {nonce_height} is not among the last {policy.nonce_window} blocks"
            f" ({oldest}..{ctx.height - 1})"
        )
    nonce = block_hash(ctx.state, nonce_height)
    if nonce is None:
        raise InvalidAttestation(f"stale nonce: the hash of block {nonce_height} is not retained")
    return nonce


def _verified(tee: TeeKeeper, attestation: Attestation, now: int, policy: TeePolicy) -> Claims:
    roots = policy.root_pems()
    root = roots.get(attestation.format, b"")
    parts = (attestation.format.encode(), attestation.evidence, attestation.endorsements, root, now.to_bytes(8, "big"))
    return tee.cache.get(parts, lambda: verify_attestation(attestation, now, roots))


def _checked_gpu(tee: TeeKeeper, policy: TeePolicy, index: int, gpu: GpuEvidence, now: int, nonce: bytes) -> GpuReport:
    """GPU report `index` verified (cached like CPU attestations) and held to the policy's formats
    and golden values; InvalidAttestation naming the GPU and the step otherwise."""
    try:
        policy.check_gpu_format(gpu.format)
        roots = policy.root_pems()
        root = roots.get("nvidia" if gpu.format == "nvidia" else "dev", b"")
        parts = (b"gpu", gpu.format.encode(), gpu.report, gpu.chain, root, now.to_bytes(8, "big"), nonce)
        report = tee.cache.get(parts, lambda: verify_gpu(gpu, now, roots, nonce))
        policy.check_gpu(report)
    except AttestationError as exc:
        raise InvalidAttestation(f"GPU {index} ({gpu.format}) evidence refused: {exc}") from exc
    return report


def handle_set_policy(tee: TeeKeeper, gov: GovKeeper, ctx: TxContext, msg: MsgSetTeePolicy) -> list[Event]:
    gov.require_authority(ctx.state, ctx.signer)
    current = tee.policy(ctx.state)
    try:
        policy = TeePolicy.from_json(msg.policy, current)
    except ValueError as exc:
        raise InvalidMessage(f"tee policy: {exc}") from exc
    tee.set_policy(ctx.state, policy)
    tee.note_gpu_required(ctx.state, current.gpu_required, policy.gpu_required, ctx.height)
    changed = ",".join(sorted(msg.policy))
    return [Event("tee_policy", {"signer": ctx.signer, "changed": changed})]


def handle_approve(
    tee: TeeKeeper, gov: GovKeeper, registry: RegistryKeeper, ctx: TxContext, msg: MsgApproveMeasurement
) -> list[Event]:
    gov.require_authority(ctx.state, ctx.signer)
    if msg.model != GLOBAL_SCOPE:
        registry.model(ctx.state, msg.model)  # NotFound names the model
    tee.approve(ctx.state, msg.model, msg.measurement_id, ctx.height, ctx.signer)
    return [Event("measurement_approved", {"signer": ctx.signer, **msg.to_json()})]


def handle_revoke(tee: TeeKeeper, gov: GovKeeper, ctx: TxContext, msg: MsgRevokeMeasurement) -> list[Event]:
    gov.require_authority(ctx.state, ctx.signer)
    if tee.approval(ctx.state, msg.model, msg.measurement_id) is None:
        raise NotFound(f"measurement {msg.measurement_id} is not approved for {msg.model!r}")
    tee.revoke(ctx.state, msg.model, msg.measurement_id, ctx.height)
    return [Event("measurement_revoked", {"signer": ctx.signer, **msg.to_json()})]
