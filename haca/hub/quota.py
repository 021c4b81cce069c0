"""Who may upload to a hub, and how many bytes each.

The hub is started with a set of uploader accounts, each with a byte quota. Stored bytes are charged
to the account whose upload first stored them, in `<root>/uploads.json` (rewritten atomically before
each new blob is renamed into place): `{"version": 1, "blobs": {"<sha256 hex>": {"uploader": "0x…", "size": N}}}`.
Re-uploading a blob the hub already has costs nothing. While an upload streams, its size is
reserved against the quota, so concurrent uploads cannot together exceed it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haca.crypto.keys import normalize_address
from haca.hub.errors import HubError, QuotaExceeded, UploaderNotAllowed
from haca.hub.store import BlobInfo, BlobWriter, fsync_dir

LEDGER_NAME = "uploads.json"
LEDGER_VERSION = 1
DEFAULT_QUOTA = 10 * 1024**3  # 10 GiB per uploader unless given

_SIZE = re.compile(r"([0-9]+)\s*([kmgt]?)(i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


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
    """Bytes held against an uploader's quota while its upload streams; `cost` is 0 for a blob the
    hub already had."""

    ledger: UploadLedger
    uploader: str
    sha256: str
    size: int
    cost: int
    released: bool = field(default=False)

    def release(self) -> None:
        self.ledger.release(self)


class UploadLedger:
    """Quotas (fixed at start) and the bytes each uploader has stored (durable, in the hub's root)."""

    def __init__(self, root: Path | str, quotas: Mapping[str, int]) -> None:
        self.path = Path(root) / LEDGER_NAME
        self.quotas = {normalize_address(a): int(q) for a, q in quotas.items()}
        if any(q < 0 for q in self.quotas.values()):
            raise ValueError("quotas must be >= 0")
        self._lock = threading.Lock()  # the in-memory tables, held briefly
        self._commit_lock = threading.Lock()  # one blob commit + ledger write at a time
        self._pending: dict[str, int] = {}
        self._blobs: dict[str, tuple[str, int]] = self._load()
        self._used: dict[str, int] = {}
        for uploader, size in self._blobs.values():
            self._used[uploader] = self._used.get(uploader, 0) + size

    # --- queries --------------------------------------------------------------------------------

    def used(self, uploader: str) -> int:
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
        """Hold `size` bytes of the uploader's quota (none when the blob is already stored);
        UploaderNotAllowed / QuotaExceeded otherwise."""
        quota = self.require_uploader(uploader)
        with self._lock:
            cost = 0 if already_stored or sha256_hex in self._blobs else size
            used, pending = self._used.get(uploader, 0), self._pending.get(uploader, 0)
            if used + pending + cost > quota:
                raise QuotaExceeded(
                    f"{uploader} has stored {used} of its {quota} bytes"
                    + (f" ({pending} more in uploads under way)" if pending else "")
                    + f": a new blob of {size} bytes does not fit"
                )
            self._pending[uploader] = pending + cost
        return Reservation(self, uploader, sha256_hex, size, cost)

    def release(self, reservation: Reservation) -> None:
        with self._lock:
            self._release(reservation)

    def commit(self, reservation: Reservation, writer: BlobWriter) -> BlobInfo:
        """Store the written blob, charging its bytes once to the uploader if they are new. The
        charge is written before the blob is renamed into place, so a crash between the two leaves
        a charge (that makes the retry free), never an uncharged blob; a charge that cannot be
        written stores nothing. Commits are serialised; reservations (a short lock) are not held
        up by one."""
        try:
            with self._commit_lock:
                digest = writer.hexdigest
                stored = (writer.directory / digest).is_file()
                with self._lock:
                    new = not stored and digest not in self._blobs
                    if new:
                        self._blobs[digest] = (reservation.uploader, writer.size)
                    snapshot = dict(self._blobs)
                if new:
                    try:
                        self._save(snapshot)
                    except BaseException:
                        with self._lock:
                            del self._blobs[digest]
                        raise
                try:
                    info = writer.commit()
                except BaseException:
                    if new:
                        with self._lock:
                            del self._blobs[digest]
                            snapshot = dict(self._blobs)
                        with contextlib.suppress(OSError):
                            self._save(snapshot)  # if this fails too, the charge stays (the retry is free)
                    raise
                if new:
                    with self._lock:
                        self._used[reservation.uploader] = self._used.get(reservation.uploader, 0) + info.size
        finally:
            self.release(reservation)
        return info

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

    def _load(self) -> dict[str, tuple[str, int]]:
        if not self.path.exists():
            return {}
        try:
            doc = json.loads(self.path.read_text())
            if doc.get("version") != LEDGER_VERSION:
                raise ValueError(f"unknown version {doc.get('version')!r}")
            return {
                str(digest): (normalize_address(entry["uploader"]), int(entry["size"]))
                for digest, entry in doc["blobs"].items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise HubError(f"upload ledger {self.path} is unreadable ({exc}); refusing to start") from exc

    def _save(self, blobs: Mapping[str, tuple[str, int]]) -> None:
        doc: dict[str, Any] = {
            "version": LEDGER_VERSION,
            "blobs": {d: {"uploader": u, "size": s} for d, (u, s) in sorted(blobs.items())},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".uploads-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(doc, out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.replace(name, self.path)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        fsync_dir(self.path.parent)
