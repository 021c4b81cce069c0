"""Intel TDX and AMD SEV-SNP evidence through Linux's configfs-tsm report interface (kernel 6.7+,
Documentation/ABI/testing/configfs-tsm-report).

One report is one entry under ``/sys/kernel/config/tsm/report``: make a directory, check its
``provider`` (``tdx_guest`` or ``sev_guest``), read ``generation``, write the 64-byte binding to
``inblob``, read ``outblob`` (the TDX quote or the SNP ``ATTESTATION_REPORT``, raw bytes) and, for
SNP, ``auxblob`` (the host's certificate table), read ``generation`` again and refuse the report
if anything but our one write moved it (another writer raced us), then remove the directory, on
error too.

Endorsements: SNP takes the chip's VCEK (DER) from the certificate table (GHCB spec, MSG_REPORT_REQ:
entries of a 16-byte GUID, a u32 offset and a u32 length, little-endian, ended by an all-zero entry)
or, when the host supplies no table, from a file the operator fetched from AMD's KDS. TDX takes the
DCAP collateral JSON (a PCCS or Intel PCS answer for this platform) from a file the operator fetches
and refreshes; a guest cannot get it offline.

NEVER RUN ON HARDWARE: only against a file-level double of the ABI (tests/unit/enclave). What a
real kernel may do differently (attribute files, permission errors, EFBIG, an empty auxblob) is
handled by reading the ABI document, not by a run on a TDX or SEV-SNP guest.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import uuid
from pathlib import Path
from typing import Protocol

from haca.enclave.platforms import certificate_der
from haca.enclave.platforms.base import REPORT_DATA_SIZE, PlatformUnavailable
from haca.proofs.tee.attestation import Attestation

log = logging.getLogger(__name__)

TSM_ROOT = Path("/sys/kernel/config/tsm/report")
PROVIDERS = {"tdx": "tdx_guest", "snp": "sev_guest"}  # our format -> the kernel's provider name
FORMATS = {kernel: ours for ours, kernel in PROVIDERS.items()}

# SEV-SNP certificate table GUIDs (GHCB specification, MSG_REPORT_REQ).
VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
_ENTRY_SIZE = 24


class TsmError(PlatformUnavailable):
    """The report interface answered, but not with a report this producer can vouch for."""


class ConfigFs(Protocol):
    """The four file operations a report needs; the kernel's side effects live behind them."""

    def mkdir(self, path: Path) -> None: ...
    def rmdir(self, path: Path) -> None: ...
    def read(self, path: Path) -> bytes: ...
    def write(self, path: Path, data: bytes) -> None: ...


class LinuxConfigFs:
    """configfs itself: mkdir makes the attribute files, rmdir drops them with the entry."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def read(self, path: Path) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def write(self, path: Path, data: bytes) -> None:
        # Unbuffered: one write(2); a binary attribute is stored when the file is closed.
        with open(path, "wb", buffering=0) as f:
            if f.write(data) != len(data):
                raise OSError(f"short write to {path}")


def entry_provider(root: Path, fs: ConfigFs) -> str:
    """The kernel's provider name, read from a fresh report entry (removed again)."""
    entry = _make_entry(root, fs)
    try:
        return fs.read(entry / "provider").decode("ascii", "replace").strip()
    except OSError as exc:
        raise PlatformUnavailable(f"cannot read the provider of {entry}: {exc}") from exc
    finally:
        _remove_entry(entry, fs)


def require_interface(root: Path) -> None:
    if not root.is_dir():
        raise PlatformUnavailable(
            f"no configfs-tsm report interface at {root} (needs Linux 6.7+ in a TDX or SEV-SNP guest, "
            "with configfs mounted at /sys/kernel/config)"
        )


def _make_entry(root: Path, fs: ConfigFs) -> Path:
    require_interface(root)
    entry = root / f"haca-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fs.mkdir(entry)
    except OSError as exc:
        raise PlatformUnavailable(f"cannot create a report entry {entry}: {exc}") from exc
    return entry


def _remove_entry(entry: Path, fs: ConfigFs) -> None:
    try:
        fs.rmdir(entry)
    except OSError as exc:  # a stale entry holds no secret: say so, and keep the report's outcome
        log.warning("could not remove the configfs-tsm report entry %s: %s", entry, exc)


def _generation(entry: Path, fs: ConfigFs) -> int:
    text = fs.read(entry / "generation").decode("ascii", "replace").strip()
    try:
        return int(text)
    except ValueError:
        raise TsmError(f"{entry}/generation is not a number: {text!r}") from None


def vcek_from_cert_table(table: bytes) -> bytes | None:
    """The VCEK (DER) in an SNP certificate table, None when it has none. GUIDs are matched in
    RFC 4122 byte order and in the mixed-endian order some hosts write. A table with a VLEK and
    no VCEK is refused: the chain's SNP verifier takes VCEK-signed reports only."""
    vlek = False
    for at in range(0, len(table) - _ENTRY_SIZE + 1, _ENTRY_SIZE):
        raw = table[at : at + 16]
        if raw == bytes(16):
            break
        guids = (uuid.UUID(bytes=raw), uuid.UUID(bytes_le=raw))
        vlek = vlek or VLEK_GUID in guids
        if VCEK_GUID not in guids:
            continue
        offset = int.from_bytes(table[at + 16 : at + 20], "little")
        length = int.from_bytes(table[at + 20 : at + 24], "little")
        if length == 0 or offset + length > len(table):
            raise TsmError(f"the certificate table's VCEK entry ({offset}+{length}) is outside the table")
        try:
            return certificate_der(table[offset : offset + length])
        except ValueError as exc:
            raise TsmError(f"the certificate table's VCEK entry is not a certificate: {exc}") from exc
    if vlek:
        raise TsmError("this host endorses SNP reports with a VLEK; the chain's SNP verifier takes a VCEK only")
    return None


class TsmPlatform:
    """TDX or SEV-SNP evidence from configfs-tsm. `provider`: "tdx" or "snp". `collateral` (tdx:
    DCAP collateral JSON, required) and `vcek` (snp: the chip's VCEK, DER or PEM, used only when
    the host supplies no certificate table) are files read at each report, so an operator can
    refresh them without a restart."""

    dev = False

    def __init__(
        self,
        provider: str,
        root: Path = TSM_ROOT,
        collateral: Path | None = None,
        vcek: Path | None = None,
        fs: ConfigFs | None = None,
    ) -> None:
        if provider not in PROVIDERS:
            raise PlatformUnavailable(f"configfs-tsm gives tdx or snp evidence, not {provider!r}")
        self.name, self.root, self.collateral, self.vcek = provider, root, collateral, vcek
        self.fs: ConfigFs = fs or LinuxConfigFs()
        require_interface(root)
        if provider == "tdx" and (collateral is None or not collateral.is_file()):
            given = f"{collateral} is not a file" if collateral else "none given"
            raise PlatformUnavailable(
                "tdx evidence needs its DCAP collateral (JSON for this platform's FMSPC, from a PCCS or "
                f"Intel's PCS; a guest cannot fetch it offline): {given}"
            )

    def attest(self, report_data: bytes) -> Attestation:
        if len(report_data) != REPORT_DATA_SIZE:
            raise ValueError(f"report data is {REPORT_DATA_SIZE} bytes, not {len(report_data)}")
        endorsements = self._collateral() if self.name == "tdx" else b""
        entry = _make_entry(self.root, self.fs)
        try:
            report, aux = self._report(entry, report_data)
        finally:
            _remove_entry(entry, self.fs)
        if self.name == "snp":
            endorsements = self._vcek(aux)
        return Attestation(format=self.name, evidence=report, endorsements=endorsements)

    def _report(self, entry: Path, report_data: bytes) -> tuple[bytes, bytes]:
        fs = self.fs
        try:
            provider = fs.read(entry / "provider").decode("ascii", "replace").strip()
            if provider != PROVIDERS[self.name]:
                raise TsmError(
                    f"configfs-tsm's provider is {provider!r}, not {PROVIDERS[self.name]!r}: this guest "
                    f"gives {FORMATS.get(provider, 'unknown')} evidence, not {self.name}"
                )
            before = _generation(entry, fs)
            fs.write(entry / "inblob", report_data)
            report = fs.read(entry / "outblob")
            aux = fs.read(entry / "auxblob") if self.name == "snp" and (entry / "auxblob").exists() else b""
            after = _generation(entry, fs)
        except OSError as exc:
            raise TsmError(f"configfs-tsm report failed at {entry}: {exc}") from exc
        if after != before + 1:
            raise TsmError(
                f"configfs-tsm generation moved from {before} to {after} for our one write: another "
                "writer changed the request, so the report may not carry our binding"
            )
        if not report:
            raise TsmError(f"configfs-tsm returned an empty {self.name} report")
        return report, aux

    def _collateral(self) -> bytes:
        assert self.collateral is not None  # checked at start
        try:
            data = self.collateral.read_bytes()
            if not isinstance(json.loads(data), dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            raise PlatformUnavailable(f"the DCAP collateral {self.collateral} is not usable: {exc}") from exc
        return data

    def _vcek(self, aux: bytes) -> bytes:
        vcek = vcek_from_cert_table(aux) if aux else None
        if vcek is not None:
            return vcek
        if self.vcek is None:
            raise PlatformUnavailable(
                "the host gave no VCEK in the SNP certificate table (auxblob); fetch this chip's VCEK for "
                "its reported TCB from AMD's KDS and give it as a file"
            )
        try:
            return certificate_der(self.vcek.read_bytes())
        except (OSError, ValueError) as exc:
            raise PlatformUnavailable(f"the VCEK file {self.vcek} is not usable: {exc}") from exc
