"""NVIDIA confidential-computing GPU evidence through NVML (``nvidia-ml-py``, imported as
``pynvml``; an optional package, not a dependency of HACA: ``pip install nvidia-ml-py``).

For each GPU: NVML's attestation report for the 32-byte nonce
(``nvmlDeviceGetConfComputeGpuAttestationReport``: the SPDM GET_MEASUREMENTS request and the
GPU's signed MEASUREMENTS response, the bytes `haca.proofs.tee.nvidia.verify_nvidia_report`
takes) and the GPU's attestation certificate chain (``nvmlDeviceGetConfComputeGpuCertificate``,
``attestationCertChain``: PEM, leaf first; DER one after another is converted to PEM). The system
must have confidential computing on (``nvmlSystemGetConfComputeState``: CC feature enabled, not in
devtools mode). The GPUs' "ready" state is not required: NVIDIA's flow attests first and sets it
after.

The NVML module is injectable (`NvmlGpus(nvml=...)`), so everything is tested with a double
answering the recorded H100 report and chain from NVIDIA's nvtrust samples.

NEVER RUN ON HARDWARE: the calls and field names follow nvidia-ml-py and NVIDIA's own verifier
code; no H100/H200/Blackwell in CC mode has answered them here.
"""

from __future__ import annotations

import contextlib
from typing import Any

from haca.enclave.platforms import split_certificates, to_pem
from haca.enclave.platforms.base import GPU_NONCE_SIZE, PlatformUnavailable
from haca.types.tee import GpuEvidence

CC_FEATURE_ENABLED = 1  # NVML_CC_SYSTEM_FEATURE_ENABLED
CC_DEVTOOLS_ON = 1  # NVML_CC_SYSTEM_DEVTOOLS_MODE_ON
_CC_CALLS = (
    "nvmlSystemGetConfComputeState",
    "nvmlDeviceGetConfComputeGpuAttestationReport",
    "nvmlDeviceGetConfComputeGpuCertificate",
)
SPDM_NONCE_AT = 4  # the requester's nonce in the GET_MEASUREMENTS request


def load_nvml() -> Any:
    try:
        import pynvml  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise PlatformUnavailable(
            "--gpu nvidia needs NVIDIA's NVML bindings: pip install nvidia-ml-py (and the NVIDIA driver)"
        ) from exc
    return pynvml


def chain_pem(raw: bytes) -> bytes:
    """The certificate chain NVML gave, as PEM (it gives PEM; DER one after another is converted)."""
    try:
        certs = split_certificates(raw)
    except ValueError as exc:
        raise PlatformUnavailable(f"NVML's GPU certificate chain does not parse: {exc}") from exc
    if not certs:
        raise PlatformUnavailable("NVML gave an empty GPU certificate chain")
    return to_pem(certs)


class NvmlGpus:
    """One NVIDIA report per GPU, each for the same nonce."""

    name = "nvidia"

    def __init__(self, nvml: Any = None) -> None:
        self.nvml = nvml if nvml is not None else load_nvml()
        missing = [call for call in _CC_CALLS if not hasattr(self.nvml, call)]
        if missing:
            raise PlatformUnavailable(
                f"this nvidia-ml-py has no confidential-computing calls ({', '.join(missing)}): upgrade it"
            )

    def reports(self, nonce: bytes) -> list[GpuEvidence]:
        if len(nonce) != GPU_NONCE_SIZE:
            raise ValueError(f"a GPU nonce is {GPU_NONCE_SIZE} bytes, not {len(nonce)}")
        nv = self.nvml
        try:
            nv.nvmlInit()
        except nv.NVMLError as exc:
            raise PlatformUnavailable(f"NVML does not start (no NVIDIA driver or GPU?): {exc}") from exc
        try:
            self._check_cc()
            count = nv.nvmlDeviceGetCount()
            if count == 0:
                raise PlatformUnavailable("NVML sees no GPU (is the GPU passed through to this VM?)")
            return [self._report(index, nonce) for index in range(count)]
        except nv.NVMLError as exc:
            raise PlatformUnavailable(f"NVML could not give confidential-computing evidence: {exc}") from exc
        finally:
            with contextlib.suppress(nv.NVMLError):
                nv.nvmlShutdown()

    def _check_cc(self) -> None:
        state = self.nvml.nvmlSystemGetConfComputeState()
        if state.ccFeature != CC_FEATURE_ENABLED:
            raise PlatformUnavailable("GPU confidential computing is off (nvidia-smi conf-compute -f on, then reboot)")
        if getattr(state, "devToolsMode", 0) == CC_DEVTOOLS_ON:
            raise PlatformUnavailable("GPU confidential computing is in devtools mode, which is not confidential")

    def _report(self, index: int, nonce: bytes) -> GpuEvidence:
        nv = self.nvml
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        got = nv.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
        report = bytes(got.attestationReport[: got.attestationReportSize])
        if report[SPDM_NONCE_AT : SPDM_NONCE_AT + GPU_NONCE_SIZE] != nonce:
            raise PlatformUnavailable(f"GPU {index}'s attestation report is not for the nonce asked")
        cert = nv.nvmlDeviceGetConfComputeGpuCertificate(handle)
        chain = bytes(cert.attestationCertChain[: cert.attestationCertChainSize])
        return GpuEvidence(format="nvidia", report=report, chain=chain_pem(chain))
