"""The structured reference string (KZG parameters) EZKL proves and verifies against.

A network's SRS is a genesis artefact: operators get the files with genesis.json, and genesis
pins the sha256 of each (one per logrows: EZKL verifies fastest against an SRS of exactly the
circuit's size). Nothing here downloads anything. A devnet makes its own once with
``ezkl.gen_srs`` — an SRS whose toxic waste is known to this machine, so for development only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from haca.proofs.receipt import EvidenceError

MIN_LOGROWS, MAX_LOGROWS = 10, 24


class SrsError(EvidenceError):
    """No SRS of the size a circuit needs, or one whose bytes are not the pinned ones."""


def srs_file(directory: Path, logrows: int) -> Path:
    return directory / f"kzg{logrows}.srs"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def make_dev_srs(directory: Path, logrows: int) -> Path:
    """A development SRS of 2^logrows points in `directory` (made once; later calls reuse it)."""
    if not MIN_LOGROWS <= logrows <= MAX_LOGROWS:
        raise ValueError(f"logrows must be {MIN_LOGROWS} to {MAX_LOGROWS}")
    path = srs_file(directory, logrows)
    if not path.exists():
        import ezkl

        directory.mkdir(parents=True, exist_ok=True)
        # Made under a name of this process's own, then renamed: a killed run leaves no half-written
        # SRS under the real name, and two processes making it at once do not interleave.
        partial = path.with_suffix(f".partial-{os.getpid()}")
        ezkl.gen_srs(str(partial), logrows)
        partial.replace(path)
    return path


def pinned_srs(directory: Path, logrows: int, expected_sha256: str) -> Path:
    """The SRS file for `logrows`, refused unless its bytes hash to the pinned value."""
    path = srs_file(directory, logrows)
    if not path.exists():
        raise SrsError(f"no SRS for logrows {logrows} in {directory} (a genesis artefact: {path.name})")
    actual = file_sha256(path)
    if actual != expected_sha256:
        raise SrsError(f"{path} hashes to {actual}, genesis pins {expected_sha256}")
    return path
