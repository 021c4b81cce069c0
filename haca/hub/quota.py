"""Who may upload to a hub, and how many bytes each.

The hub is started with a set of uploader accounts, each with a byte quota. Stored blobs are charged
to the account whose upload first stored them. Re-uploading a blob the hub already has costs nothing.
While an upload streams, its charge is reserved against the quota, so concurrent uploads cannot
together exceed it.

What a blob costs (`blob_charge`): its size rounded up to a whole 4 KiB block, plus a fixed 4 KiB per
blob. A blob occupies whole filesystem blocks, an inode and a directory entry, and a ledger record,
whatever its length: charged by its bare length, a flood of 3-byte blobs grew the disk ~1,900 times
the quota. So a 3-byte blob costs 8 KiB, a 1 MiB blob 1 MiB + 4 KiB.

The ledger is append-only, `<root>/uploads.jsonl`: one fsynced JSON line per event, written before
the blob is renamed into place (so a crash leaves a charge, which makes the retry free, never an
uncharged blob), `{"sha256", "uploader", "size"}` to charge a blob and `{"sha256", "drop": true}`
to take back the charge of a blob whose rename failed. An upload appends one line (O(1)); the
whole file is read once, at start. A last line cut short by a crash is ignored (its blob was never
renamed into place); any other unreadable line stops the hub from starting. A hub that kept the
earlier `uploads.json` (rewritten whole on every upload) has it imported once into the new file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from haca.crypto.keys import normalize_address
from haca.hub.errors import HubError, QuotaExceeded, UploaderNotAllowed
from haca.hub.store import BlobInfo, BlobWriter, fsync_dir

LEDGER_NAME = "uploads.jsonl"
LEGACY_LEDGER_NAME = "uploads.json"  # the earlier format, imported once
LEGACY_LEDGER_VERSION = 1
DEFAULT_QUOTA = 10 * 1024**3  # 10 GiB per uploader unless given
BLOCK_SIZE = 4096  # what a filesystem allocates a file in
BLOB_OVERHEAD = 4096  # per blob: inode, directory entry, ledger line

_SIZE = re.compile(r"([0-9]+)\s*([kmgt]?)(i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_HEX64 = re.compile(r"[0-9a-f]{64}")


def blob_charge(size: int) -> int:
    """What storing a blob of `size` bytes costs its uploader's quota: whole 4 KiB blocks plus a
    fixed 4 KiB per blob (see the module docstring)."""
    return BLOB_OVERHEAD + -(-size // BLOCK_SIZE) * BLOCK_SIZE


def parse_size(text: str) -> int:
    """Bytes from "1048576", "512MiB", "10G", "4k" (binary multiples); ValueError otherwise."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a byte size: {text!r} (e.g. 1048576, 512MiB, 10GiB)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def parse_uploader(spec: str, default_quota: int) -> tuple[str, int]:
    """`ADDRESS` or `ADDRESS=BYTES` -> (lower-case address, quota)."""
    address, sep, quota = spec.partition("=")
    return normalize_address(address.strip()), parse_size(quota) if sep else default_quota


def load_uploaders_file(path: Path, default_quota: int) -> dict[str, int]:
    """A JSON object `{"0x…": BYTES | "10GiB" | null}` (null: the default quota)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"uploaders file {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"uploaders file {path}: expected a JSON object of address -> bytes")
    quotas: dict[str, int] = {}
    for address, quota in doc.items():
        if quota is None:
            quotas[normalize_address(address)] = default_quota
        elif isinstance(quota, int) and not isinstance(quota, bool) and quota >= 0:
            quotas[normalize_address(address)] = quota
        elif isinstance(quota, str):
            quotas[normalize_address(address)] = parse_size(quota)
        else:
            raise ValueError(f"uploaders file {path}: quota of {address} must be bytes, a size string or null")
    return quotas


def build_quotas(
    specs: Iterable[str] = (), uploaders_file: Path | None = None, default_quota: int = DEFAULT_QUOTA
) -> dict[str, int]:
    """The uploader set from a file and `--uploader ADDRESS[=BYTES]` flags (flags win)."""
    if default_quota < 0:
        raise ValueError("the default quota must be >= 0")
    quotas = load_uploaders_file(uploaders_file, default_quota) if uploaders_file is not None else {}
    for spec in specs:
        address, quota = parse_uploader(spec, default_quota)
        quotas[address] = quota
    return quotas


@dataclass
class Reservation:
    """Quota held against an uploader while its upload streams; `cost` is 0 for a blob the hub
    already had."""

    ledger: UploadLedger
    uploader: str
    sha256: str
    size: int
    cost: int
    released: bool = field(default=False)

    def release(self) -> None:
        self.ledger.release(self)


class UploadLedger:
    """Quotas (fixed at start) and what each uploader has stored (durable, in the hub's root)."""

    def __init__(self, root: Path | str, quotas: Mapping[str, int]) -> None:
        self.path = Path(root) / LEDGER_NAME
        self.quotas = {normalize_address(a): int(q) for a, q in quotas.items()}
        if any(q < 0 for q in self.quotas.values()):
            raise ValueError("quotas must be >= 0")
        self._lock = threading.Lock()  # the in-memory tables, held briefly
        self._commit_lock = threading.Lock()  # one blob commit + ledger append at a time
        self._pending: dict[str, int] = {}
        self._blobs: dict[str, tuple[str, int]] = self._load()
        self._used: dict[str, int] = {}
        for uploader, size in self._blobs.values():
            self._used[uploader] = self._used.get(uploader, 0) + blob_charge(size)
        self._file: IO[str] | None = None  # opened for appending at the first write

    # --- queries --------------------------------------------------------------------------------

    def used(self, uploader: str) -> int:
        """The quota the uploader's stored blobs take (`blob_charge` of each)."""
        with self._lock:
            return self._used.get(normalize_address(uploader), 0)

    def charged_to(self, sha256_hex: str) -> str | None:
        with self._lock:
            entry = self._blobs.get(sha256_hex)
        return entry[0] if entry else None

    def require_uploader(self, uploader: str) -> int:
        """The uploader's quota; UploaderNotAllowed unless it is in the set."""
        quota = self.quotas.get(uploader)
        if quota is None:
            raise UploaderNotAllowed(f"{uploader} is not an uploader of this hub")
        return quota

    # --- an upload ------------------------------------------------------------------------------

    def reserve(self, uploader: str, sha256_hex: str, size: int, already_stored: bool) -> Reservation:
        """Hold the blob's charge against the uploader's quota (none when the blob is already
        stored); UploaderNotAllowed / QuotaExceeded otherwise."""
        quota = self.require_uploader(uploader)
        with self._lock:
            cost = 0 if already_stored or sha256_hex in self._blobs else blob_charge(size)
            used, pending = self._used.get(uploader, 0), self._pending.get(uploader, 0)
            if used + pending + cost > quota:
                raise QuotaExceeded(
                    f"{uploader} has used {used} of its {quota} bytes"
                    + (f" ({pending} more in uploads under way)" if pending else "")
                    + f": a new blob of {size} bytes (charged {cost}: whole {BLOCK_SIZE}-byte blocks"
                    f" + {BLOB_OVERHEAD} per blob) does not fit"
                )
            self._pending[uploader] = pending + cost
        return Reservation(self, uploader, sha256_hex, size, cost)

    def release(self, reservation: Reservation) -> None:
        with self._lock:
            self._release(reservation)

    def commit(self, reservation: Reservation, writer: BlobWriter) -> BlobInfo:
        """Store the written blob, charging it once to the uploader if it is new. The charge is
        appended before the blob is renamed into place, so a crash between the two leaves a charge
        (that makes the retry free), never an uncharged blob; a charge that cannot be written stores
        nothing. Commits are serialised; reservations (a short lock) are not held up by one."""
        try:
            with self._commit_lock:
                digest = writer.hexdigest
                stored = (writer.directory / digest).is_file()
                with self._lock:
                    new = not stored and digest not in self._blobs
                if new:
                    self._append({"sha256": digest, "uploader": reservation.uploader, "size": writer.size})
                    with self._lock:
                        self._blobs[digest] = (reservation.uploader, writer.size)
                try:
                    info = writer.commit()
                except BaseException:
                    if new:
                        with self._lock:
                            del self._blobs[digest]
                        with contextlib.suppress(OSError):  # if this fails too, the charge stays (the retry is free)
                            self._append({"sha256": digest, "drop": True})
                    raise
                if new:
                    with self._lock:
                        self._used[reservation.uploader] = self._used.get(reservation.uploader, 0) + blob_charge(
                            info.size
                        )
        finally:
            self.release(reservation)
        return info

    def close(self) -> None:
        with self._commit_lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    # --- plumbing -------------------------------------------------------------------------------

    def _release(self, reservation: Reservation) -> None:
        if reservation.released:
            return
        reservation.released = True
        left = self._pending.get(reservation.uploader, 0) - reservation.cost
        if left > 0:
            self._pending[reservation.uploader] = left
        else:
            self._pending.pop(reservation.uploader, None)

    def _append(self, record: Mapping[str, Any]) -> None:
        """One fsynced line at the end of the ledger (called under the commit lock)."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open: one line per upload)
            if created:
                fsync_dir(self.path.parent)
        self._file.write(json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def _load(self) -> dict[str, tuple[str, int]]:
        legacy = self.path.with_name(LEGACY_LEDGER_NAME)
        if not self.path.exists() and legacy.exists():
            self._import_legacy(legacy)
        if not self.path.exists():
            return {}
        blobs: dict[str, tuple[str, int]] = {}
        try:
            text = self.path.read_text(encoding="utf-8")
            lines = text.split("\n")
            if lines and lines[-1]:
                lines.pop()  # cut short by a crash before its fsync returned: its blob was never renamed in
            for number, line in enumerate(lines, 1):
                if line:
                    self._replay(blobs, json.loads(line), number)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise HubError(f"upload ledger {self.path} is unreadable ({exc}); refusing to start") from exc
        return blobs

    @staticmethod
    def _replay(blobs: dict[str, tuple[str, int]], record: dict[str, Any], number: int) -> None:
        digest = record["sha256"]
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise ValueError(f"line {number}: bad sha256")
        if record.get("drop") is True:
            blobs.pop(digest, None)
            return
        size = record["size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"line {number}: bad size")
        blobs.setdefault(digest, (normalize_address(record["uploader"]), size))

    def _import_legacy(self, legacy: Path) -> None:
        """The earlier whole-file ledger, written out as the append-only one (then renamed aside)."""
        try:
            doc = json.loads(legacy.read_text())
            if doc.get("version") != LEGACY_LEDGER_VERSION:
                raise ValueError(f"unknown version {doc.get('version')!r}")
            records = [
                {"sha256": str(d), "uploader": normalize_address(e["uploader"]), "size": int(e["size"])}
                for d, e in sorted(doc["blobs"].items())
            ]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise HubError(f"upload ledger {legacy} is unreadable ({exc}); refusing to start") from exc
        partial = self.path.with_name(LEDGER_NAME + ".import")
        with open(partial, "w", encoding="utf-8") as out:
            out.writelines(json.dumps(r, separators=(",", ":"), sort_keys=True) + "\n" for r in records)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, self.path)
        legacy.replace(legacy.with_name(LEGACY_LEDGER_NAME + ".imported"))
        fsync_dir(self.path.parent)
