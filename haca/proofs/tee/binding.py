"""What an enclave binds into its evidence when it registers a key, and how a measurement is named.

The report data of a key registration is SHA-512(tag ‖ chain id ‖ node ‖ key ‖ nonce ‖ GPU digest),
each part length-prefixed, so the evidence can only register this key, for this node, on this
chain, after the block whose hash is the nonce: a replayed or pre-made document fails the binding,
and another node submitting the same evidence first cannot take the key (and lock its node out of
it). The GPU digest commits to the GPU reports registered with the key (SHA-256 over each report's
format, bytes and chain; of nothing when there are none): the CPU evidence — made inside the
enclave, which asks its own GPUs for their reports first — vouches for exactly those GPUs, so a
host cannot staple a report from a GPU the enclave does not have. Each GPU report in turn signs
`gpu_report_nonce`, derived from the same chain, node, key and block.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from haca.proofs.tee.claims import AttestationError, Claims
from haca.types.tee import GpuEvidence

KEY_BINDING_TAG = b"HACA-TEE-KEY-BINDING/v3"
GPU_NONCE_TAG = b"HACA-TEE-GPU-NONCE/v1"

# The registers that identify the code an enclave runs, per format (the rest is platform or data).
MEASUREMENT_REGISTERS: dict[str, tuple[str, ...]] = {
    "nitro": ("pcr0", "pcr1", "pcr2"),
    "tdx": ("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3"),
    "sgx": ("mr_enclave", "mr_signer"),
    "snp": ("measurement",),
    "dev": ("measurement",),
}


def _framed(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def gpus_digest(gpus: Sequence[GpuEvidence]) -> bytes:
    """SHA-256 over the GPU reports in order, each as framed (format, report, chain)."""
    return hashlib.sha256(b"".join(_framed(_framed(g.format.encode(), g.report, g.chain)) for g in gpus)).digest()


def key_binding(chain_id: str, node: str, key: str, nonce: bytes, gpus: Sequence[GpuEvidence] = ()) -> bytes:
    """The 64 bytes of report data that register `key` (a 0x address) for `node` (a 0x address) on
    `chain_id` after `nonce`, together with the GPU reports `gpus` (none by default)."""
    parts = (KEY_BINDING_TAG, chain_id.encode(), node.lower().encode(), key.lower().encode(), nonce, gpus_digest(gpus))
    return hashlib.sha512(_framed(*parts)).digest()


def gpu_report_nonce(chain_id: str, node: str, key: str, nonce: bytes) -> bytes:
    """The 32-byte SPDM nonce a GPU report must carry to vouch for the same enclave key as the CPU
    evidence: SHA-256 over (tag, chain id, node, key, block hash), so a GPU report made for another
    key, node, chain or block is refused as not bound. (The CPU evidence then binds the reports.)"""
    parts = (GPU_NONCE_TAG, chain_id.encode(), node.lower().encode(), key.lower().encode(), nonce)
    return hashlib.sha256(_framed(*parts)).digest()


def measurement_id(claims: Claims) -> str:
    """`<format>:<sha256 hex>` over the format's code-identity registers: what an authority approves."""
    names = MEASUREMENT_REGISTERS.get(claims.format)
    if names is None:
        raise AttestationError("format", f"no measurement registers are defined for {claims.format!r}")
    missing = [n for n in names if n not in claims.measurements]
    if missing:
        raise AttestationError("format", f"{claims.format} evidence lacks the registers {missing}")
    return f"{claims.format}:" + hashlib.sha256(_framed(*(claims.measurements[n] for n in names))).hexdigest()
