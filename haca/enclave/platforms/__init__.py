"""Evidence producers for real TEE hardware (``haca enclave serve --platform``/``--gpu``):
configfs-tsm for TDX and SEV-SNP (`tsm`), the Nitro Security Module (`nitro`), NVML for NVIDIA
confidential GPUs (`nvml`); and `detect_platform`, which ``--platform auto`` uses.

None of these has run on real hardware yet: each is tested against a double that follows the
interface's documentation, with recorded real documents as its answers (tests/unit/enclave).
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import TYPE_CHECKING

from haca.enclave.platforms.base import PlatformUnavailable

if TYPE_CHECKING:
    from haca.enclave.platforms.tsm import ConfigFs

TSM_ROOT = Path("/sys/kernel/config/tsm/report")
NSM_DEVICE = Path("/dev/nsm")
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.S)


def detect_platform(
    tsm_root: Path = TSM_ROOT, nsm_device: Path = NSM_DEVICE, *, fs: ConfigFs | None = None
) -> str | None:
    """The CPU TEE this machine has: "tdx" or "snp" (configfs-tsm's provider, read from a report
    entry made and removed for the purpose), "nitro" (the NSM device), or None. Never "dev".
    PlatformUnavailable when configfs-tsm is there but unusable (no permission, a provider HACA
    does not verify) and there is no NSM device either."""
    if tsm_root.is_dir():
        from haca.enclave.platforms.tsm import FORMATS, LinuxConfigFs, entry_provider

        try:
            provider = entry_provider(tsm_root, fs or LinuxConfigFs())
            if provider not in FORMATS:
                raise PlatformUnavailable(
                    f"configfs-tsm's provider is {provider!r}; HACA verifies {sorted(FORMATS)} only"
                )
            return FORMATS[provider]
        except PlatformUnavailable:
            if not nsm_device.exists():
                raise
    return "nitro" if nsm_device.exists() else None


def split_certificates(data: bytes) -> list[bytes]:
    """The DER certificates in `data`: PEM blocks, or DER certificates one after another (each cut
    at its own length; bytes after the last are ignored, as NUL padding of a fixed buffer)."""
    if b"-----BEGIN CERTIFICATE-----" in data:
        return [base64.b64decode(b"".join(m.group(1).split())) for m in _PEM.finditer(data)]
    certs, at = [], 0
    while at < len(data) and data[at] == 0x30:
        size = _der_size(data, at)
        if size is None or at + size > len(data):
            raise ValueError(f"a DER certificate at byte {at} runs past the end of the data")
        certs.append(data[at : at + size])
        at += size
    return certs


def certificate_der(data: bytes) -> bytes:
    """The first certificate in `data` (PEM or DER), as DER; ValueError when there is none."""
    certs = split_certificates(data)
    if not certs:
        raise ValueError("no certificate (neither PEM nor DER)")
    return certs[0]


def to_pem(certs: list[bytes]) -> bytes:
    out = []
    for der in certs:
        body = base64.b64encode(der)
        lines = b"\n".join(body[i : i + 64] for i in range(0, len(body), 64))
        out.append(b"-----BEGIN CERTIFICATE-----\n" + lines + b"\n-----END CERTIFICATE-----\n")
    return b"".join(out)


def _der_size(data: bytes, at: int) -> int | None:
    """Header plus content length of the DER element at `at` (definite lengths only)."""
    if at + 2 > len(data):
        return None
    first = data[at + 1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if count == 0 or count > 4 or at + 2 + count > len(data):
        return None
    return 2 + count + int.from_bytes(data[at + 2 : at + 2 + count], "big")
