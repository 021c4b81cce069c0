"""Where an enclave's evidence comes from: the CPU TEE it runs in (a platform) and the confidential
GPUs beside it. Every producer takes the bytes to bind (the key binding, or a GPU nonce derived from
it) and returns the document the chain verifies; none of them ever falls back to another.

Platforms: ``dev`` (the labelled software attester, DEV-MODE, NOT FOR PRODUCTION), ``tdx`` and
``snp`` (Linux configfs-tsm), ``nitro`` (the Nitro Security Module device). GPUs: ``nvidia``
(NVML's confidential-compute attestation report) and ``dev`` (DEV GPU evidence for devnets).
"""

from __future__ import annotations

import time
from pathlib import Path

from haca.enclave.platforms.base import (
    GPU_NONCE_SIZE,
    REPORT_DATA_SIZE,
    CpuPlatform,
    GpuPlatform,
    PlatformUnavailable,
)
from haca.proofs.tee.attestation import Attestation
from haca.proofs.tee.dev import PLATFORM_CERT_FILE, PLATFORM_KEY_FILE, TCB_STATUS_FILE, make_dev_evidence

__all__ = [
    "GPU_NONCE_SIZE",
    "CpuPlatform",
    "DevPlatform",
    "GpuPlatform",
    "PlatformUnavailable",
    "open_gpus",
    "open_platform",
]

PLATFORMS = ("auto", "dev", "tdx", "snp", "nitro")
GPU_PLATFORMS = ("none", "dev", "nvidia")


class DevPlatform:
    """The software attester: dev evidence signed by a platform key issued by the devnet's DEV root
    (``platform.key``, ``platform.pem`` in `platform_dir`). DEV-MODE, NOT FOR PRODUCTION."""

    name = "dev"
    dev = True

    def __init__(self, platform_dir: Path, measurement: bytes, debug: bool = False) -> None:
        self._key_pem = (platform_dir / PLATFORM_KEY_FILE).read_bytes()
        self._chain_pem = (platform_dir / PLATFORM_CERT_FILE).read_bytes()
        self.measurement, self.debug = measurement, debug
        self._tcb_file = platform_dir / TCB_STATUS_FILE
        # Fail at start, not at the first attest, when the platform files are not a usable pair.
        make_dev_evidence(self._key_pem, self._chain_pem, measurement, bytes(REPORT_DATA_SIZE), 0, debug)

    def attest(self, report_data: bytes, now: int | None = None) -> Attestation:
        evidence = make_dev_evidence(
            self._key_pem,
            self._chain_pem,
            self.measurement,
            report_data,
            int(time.time()) if now is None else now,
            self.debug,
            self.tcb_status(),
        )
        return Attestation(format="dev", evidence=evidence, endorsements=b"")

    def tcb_status(self) -> str:
        """The TCB status the DEV platform reports now: read at each attestation, so a devnet can
        make it fall behind the chain's minimum and patch it again without restarting the enclave."""
        try:
            return self._tcb_file.read_text().strip() or "UpToDate"
        except FileNotFoundError:
            return "UpToDate"


def open_platform(
    name: str,
    measurement: bytes,
    platform_dir: Path | None = None,
    debug: bool = False,
    collateral: Path | None = None,
    vcek: Path | None = None,
) -> CpuPlatform:
    """The CPU platform `name` (PLATFORMS); ``auto`` takes the one this machine has and says which,
    and never chooses ``dev``: a machine without a TEE is an error, not a silent fall-back.
    `collateral`: tdx, the DCAP collateral JSON file (a guest cannot fetch it offline); `vcek`: snp,
    the chip's VCEK when the host's certificate table has none."""
    if name not in PLATFORMS:
        raise PlatformUnavailable(f"unknown platform {name!r}; known: {list(PLATFORMS)}")
    if name == "auto":
        from haca.enclave.platforms import detect_platform

        found = detect_platform()
        if found is None:
            raise PlatformUnavailable(
                "--platform auto found no TEE here (no configfs-tsm report interface for tdx/snp,"
                " no /dev/nsm for nitro); pass --platform dev for a devnet"
            )
        name = found
    if name == "dev":
        if platform_dir is None:
            raise PlatformUnavailable("--platform dev needs --platform-dir (platform.key and platform.pem)")
        return DevPlatform(platform_dir, measurement, debug)
    if name in ("tdx", "snp"):
        from haca.enclave.platforms.tsm import TsmPlatform

        return TsmPlatform(name, collateral=collateral, vcek=vcek)
    from haca.enclave.platforms.nitro import NitroPlatform

    return NitroPlatform()


def open_gpus(name: str, platform_dir: Path | None = None) -> GpuPlatform | None:
    """The GPU evidence producer `name` (GPU_PLATFORMS); None for ``none``."""
    if name not in GPU_PLATFORMS:
        raise PlatformUnavailable(f"unknown GPU platform {name!r}; known: {list(GPU_PLATFORMS)}")
    if name == "none":
        return None
    if name == "dev":
        if platform_dir is None:
            raise PlatformUnavailable("--gpu dev needs --platform-dir (the DEV platform key signs the GPU evidence)")
        from haca.enclave.platforms.dev_gpu import DevGpus

        return DevGpus(platform_dir)
    from haca.enclave.platforms.nvml import NvmlGpus

    return NvmlGpus()
