"""One entry point for GPU evidence (the reports riding along a CPU attestation): the chain, the
client and the CLI all call `verify_gpu`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from haca.proofs.tee.binding import gpu_report_nonce
from haca.proofs.tee.claims import AttestationError
from haca.proofs.tee.nvidia import GpuReport
from haca.proofs.tee.policy import TeePolicy
from haca.types.tee import GPU_EVIDENCE_FORMATS, GpuEvidence


def verify_gpu(
    evidence: GpuEvidence, now: int, roots: Mapping[str, bytes] | None, expected_nonce: bytes | None
) -> GpuReport:
    """The verified report of one GPU at `now`: nvidia against roots["nvidia"] (default: the pinned
    NVIDIA Device Identity CA), dev-gpu against roots["dev"] (the network's DEV root, required).
    AttestationError naming the step (format, signature, chain, expired, binding) otherwise."""
    roots = roots or {}
    if evidence.format == "nvidia":
        from haca.proofs.tee.nvidia import verify_nvidia_report

        return verify_nvidia_report(evidence.report, evidence.chain, now, expected_nonce, roots.get("nvidia"))
    if evidence.format == "dev-gpu":
        from haca.proofs.tee.dev_gpu import verify_dev_gpu

        root = roots.get("dev")
        if root is None:
            raise AttestationError("chain", "dev-gpu evidence needs the DEV root of this network (none is pinned)")
        return verify_dev_gpu(evidence, now, root, expected_nonce)
    raise AttestationError(
        "format", f"unknown GPU evidence format {evidence.format!r}; known: {list(GPU_EVIDENCE_FORMATS)}"
    )


def reverify_gpus(
    attestation: Mapping[str, Any], policy: TeePolicy, chain_id: str, node: str, key: str
) -> list[dict[str, object]]:
    """A client's re-verification of the GPU reports the chain stored with an attestation (its
    `/tee/enclave` answer's "attestation"), at the block time the chain verified them, against the
    proven policy: the GPU summaries the chain's record should hold. AttestationError otherwise."""
    nonce = gpu_report_nonce(chain_id, node, key, bytes.fromhex(str(attestation["nonce"])[2:]))
    now, roots = int(attestation["time"]), policy.root_pems()
    summaries = []
    for doc in attestation.get("gpus") or ():
        gpu = GpuEvidence.from_json(doc)
        policy.check_gpu_format(gpu.format)
        report = verify_gpu(gpu, now, roots, nonce)
        policy.check_gpu(report)
        summaries.append(report.summary())
    return summaries
