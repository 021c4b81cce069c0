"""Content-addressed blob store on a local directory.

    <root>/blobs/<64 hex>        one file per blob, named by the sha256 of its bytes
    <root>/blobs/.upload-*       uploads in progress (hashed while written, renamed into place)

A blob is written to a temporary file in the same directory, hashed as it streams, fsynced and
renamed atomically to its hash, so a reader never sees a partial blob and a crash leaves only a
temporary file (removed by the next `BlobStore` over the same root once it is a day old).
Storing bytes that are already there is a no-op that returns the same id.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from haca.hub.errors import BlobNotFound, BlobTooLarge, HubError, InvalidBlobId

ID_PREFIX = "sha256:"
DEFAULT_MAX_SIZE = 2 * 1024**3  # 2 GiB
CHUNK_SIZE = 1 << 20
TMP_PREFIX = ".upload-"
STALE_TMP_SECONDS = 24 * 3600

_ID = re.compile(r"sha256:([0-9a-f]{64})")
_HEX = re.compile(r"[0-9a-f]{64}")


def parse_blob_id(blob_id: object) -> str:
    """The 64 hex digits of a blob id; InvalidBlobId unless it is exactly `sha256:<64 lower hex>`."""
    match = _ID.fullmatch(blob_id) if isinstance(blob_id, str) else None
    if match is None:
        shown = repr(blob_id) if not isinstance(blob_id, str) or len(blob_id) <= 80 else repr(blob_id[:80] + "…")
        raise InvalidBlobId(f"invalid blob id {shown}: expected 'sha256:' followed by 64 lower-case hex digits")
    return match.group(1)


def blob_id_of(data: bytes) -> str:
    return ID_PREFIX + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class BlobInfo:
    id: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "size": self.size}


class BlobWriter:
    """One upload in progress: `write` chunks, then `commit` (or `abort`). As a context manager it
    aborts unless committed. Exceeding `max_size` aborts at once and raises BlobTooLarge."""

    def __init__(self, directory: Path, max_size: int) -> None:
        self.directory = directory
        self.max_size = max_size
        self.size = 0
        self.created = False  # set by commit: True when these bytes were new to the store
        self._hash = hashlib.sha256()
        fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
        self.tmp_path = Path(name)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        if self._file is None:
            raise HubError("upload already finished")
        self.size += len(chunk)
        if self.size > self.max_size:
            self.abort()
            raise BlobTooLarge(f"blob exceeds the size limit of {self.max_size} bytes")
        self._hash.update(chunk)
        self._file.write(chunk)

    @property
    def hexdigest(self) -> str:
        """The sha256 (hex) of the bytes written so far."""
        return self._hash.hexdigest()

    def commit(self) -> BlobInfo:
        """fsync, rename to the content hash (atomic), fsync the directory; returns the blob."""
        if self._file is None:
            raise HubError("upload already finished")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            digest = self._hash.hexdigest()
            target = self.directory / digest
            if target.is_file():
                self.tmp_path.unlink(missing_ok=True)  # same bytes already stored: idempotent
            else:
                self.tmp_path.chmod(0o644)
                os.replace(self.tmp_path, target)
                fsync_dir(self.directory)
                self.created = True
        except BaseException:
            self.abort()
            raise
        return BlobInfo(ID_PREFIX + digest, self.size)

    def abort(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._file is not None:
            self.abort()


class BlobStore:
    def __init__(self, root: Path | str, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if max_size < 0:
            raise ValueError("max_size must be >= 0")
        self.root = Path(root)
        self.max_size = max_size
        self.blob_dir = self.root / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_uploads()

    # --- writing --------------------------------------------------------------------------------

    def writer(self, max_size: int | None = None) -> BlobWriter:
        return BlobWriter(self.blob_dir, self.max_size if max_size is None else max_size)

    def put_stream(self, chunks: Iterable[bytes], max_size: int | None = None) -> str:
        """Store the concatenation of `chunks`; returns its id. BlobTooLarge (nothing kept) past
        `max_size` (default: the store's limit)."""
        return self.put_stream_info(chunks, max_size).id

    def put_stream_info(self, chunks: Iterable[bytes], max_size: int | None = None) -> BlobInfo:
        with self.writer(max_size) as writer:
            for chunk in chunks:
                writer.write(chunk)
            return writer.commit()

    def put_bytes(self, data: bytes) -> str:
        return self.put_stream((data,))

    def put_file(self, path: Path | str) -> str:
        with open(path, "rb") as source:
            return self.put_stream(iter(lambda: source.read(CHUNK_SIZE), b""))

    # --- reading --------------------------------------------------------------------------------

    def path_for(self, blob_id: str) -> Path:
        """Where the blob with this id lives (or would live); validates the id."""
        return self.blob_dir / parse_blob_id(blob_id)

    def get_path(self, blob_id: str) -> Path:
        path = self.path_for(blob_id)
        if not path.is_file():
            raise BlobNotFound(f"no blob {blob_id}")
        return path

    def exists(self, blob_id: str) -> bool:
        return self.path_for(blob_id).is_file()

    def size(self, blob_id: str) -> int:
        return self.get_path(blob_id).stat().st_size

    def info(self, blob_id: str) -> BlobInfo:
        return BlobInfo(blob_id, self.size(blob_id))

    def get_bytes(self, blob_id: str) -> bytes:
        return self.get_path(blob_id).read_bytes()

    def verify(self, blob_id: str) -> bool:
        """Re-hash a stored blob: False if its bytes no longer hash to its id (disk corruption)."""
        digest = hashlib.sha256()
        with open(self.get_path(blob_id), "rb") as blob:
            for chunk in iter(lambda: blob.read(CHUNK_SIZE), b""):
                digest.update(chunk)
        return ID_PREFIX + digest.hexdigest() == blob_id

    def list(self) -> list[BlobInfo]:
        blobs = []
        for entry in os.scandir(self.blob_dir):
            if _HEX.fullmatch(entry.name) and entry.is_file():
                with contextlib.suppress(FileNotFoundError):
                    blobs.append(BlobInfo(ID_PREFIX + entry.name, entry.stat().st_size))
        return sorted(blobs, key=lambda b: b.id)

    def __len__(self) -> int:
        return len(self.list())

    def _remove_stale_uploads(self) -> None:
        cutoff = time.time() - STALE_TMP_SECONDS
        for path in self.blob_dir.glob(TMP_PREFIX + "*"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
