"""What every evidence producer shares: the protocols a CPU platform and a GPU producer follow, the
sizes of what they bind, and the error for a platform that is not there."""

from __future__ import annotations

from typing import Protocol

from haca.proofs.tee.attestation import Attestation
from haca.types.tee import GpuEvidence

REPORT_DATA_SIZE = 64
GPU_NONCE_SIZE = 32


class PlatformUnavailable(RuntimeError):
    """The platform asked for is not on this machine (or not usable); the message says what is missing."""


class CpuPlatform(Protocol):
    """A CPU TEE that can vouch for 64 bytes of report data."""

    name: str  # "dev" | "tdx" | "snp" | "nitro"
    dev: bool  # the labelled software attester

    def attest(self, report_data: bytes) -> Attestation: ...


class GpuPlatform(Protocol):
    """The confidential GPUs of this enclave: one report per GPU, each over the same nonce."""

    name: str  # "nvidia" | "dev"

    def reports(self, nonce: bytes) -> list[GpuEvidence]: ...
