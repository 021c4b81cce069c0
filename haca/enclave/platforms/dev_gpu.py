"""DEV GPU evidence producer for devnets: DEV-MODE, NOT FOR PRODUCTION.

One DEV GPU with fixed measurements (`DEV_GPU_MEASUREMENTS`: index 1 "firmware", index 2
"driver", SHA-384 of fixed labels) and driver version `DEV_GPU_DRIVER_VERSION`, signed by the
devnet's DEV platform key; `dev_gpu_golden()` is the `gpu_golden` entry a devnet's genesis TEE
policy holds for it (with "dev-gpu" in `gpu_formats`).
"""

from __future__ import annotations

from pathlib import Path

from haca.proofs.tee.dev import PLATFORM_CERT_FILE, PLATFORM_KEY_FILE
from haca.proofs.tee.dev_gpu import (
    DEV_GPU_DRIVER_VERSION,
    DEV_GPU_MEASUREMENTS,
    NONCE_BYTES,
    dev_gpu_golden,
    make_dev_gpu_report,
)
from haca.types.tee import GpuEvidence

__all__ = ["DEV_GPU_DRIVER_VERSION", "DEV_GPU_MEASUREMENTS", "DevGpus", "dev_gpu_golden"]


class DevGpus:
    """The DEV GPU of a dev enclave, signing with ``platform.key`` (certified by ``platform.pem``) in
    `platform_dir`. DEV-MODE, NOT FOR PRODUCTION."""

    name = "dev"

    def __init__(self, platform_dir: Path) -> None:
        self._key_pem = (platform_dir / PLATFORM_KEY_FILE).read_bytes()
        self._chain_pem = (platform_dir / PLATFORM_CERT_FILE).read_bytes()
        # Fail at start, not at the first report, when the platform files are not a usable pair.
        self.reports(bytes(NONCE_BYTES))

    def reports(self, nonce: bytes) -> list[GpuEvidence]:
        """One DEV GPU report over `nonce` (the GPU nonce derived from the enclave key's binding)."""
        return [
            make_dev_gpu_report(self._key_pem, self._chain_pem, nonce, DEV_GPU_MEASUREMENTS, DEV_GPU_DRIVER_VERSION)
        ]
