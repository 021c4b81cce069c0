"""State-sync snapshots: what ListSnapshots, LoadSnapshotChunk, OfferSnapshot and ApplySnapshotChunk
serve and take.

A snapshot of height H is the flat state committed at H (every key and value, the derived indexes
too, in key order) as one byte stream of records `u32 key length, key, u32 value length, value`
(big-endian), cut into chunks of CHUNK_SIZE bytes. Its metadata is canonical JSON: the format,
height, app hash, block time and every chunk's sha256; the snapshot's hash is the sha256 of the
metadata. All of it is consensus state, so every validator makes the same bytes at the same height.

Made every `interval` blocks from a read connection pinned right after the commit of H, on a thread
of its own, so blocks go on while it is written; the last `keep` are kept. Each lives in
`<directory>/<height>/` (metadata.json, chunk-<i>), written under a temporary name and renamed
when complete: a crash leaves no half snapshot.

A restore checks each chunk against its hash as it arrives (a bad one is fetched again, and its
sender refused), and the last one rebuilds the trie: its root must be the app hash CometBFT's light
client verified, or the snapshot is rejected and nothing is kept. The derived indexes are not in
the trie, so nothing proves them: a snapshot offering false ones would make this validator commit
another app hash at the first block they matter, and stop there (it cannot sway the others).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from haca.chain.store import CommitStore
from haca.types.encoding import canonical_json

log = structlog.get_logger("haca.snapshots")

FORMAT = 1
CHUNK_SIZE = 4 * 1024 * 1024  # under CometBFT's 16 MB chunk limit and the 10 MB
MAX_CHUNKS = 100_000


class SnapshotError(ValueError):
    """A snapshot (its metadata or a chunk) that cannot be what it says."""


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot's metadata, as ListSnapshots offers it and OfferSnapshot takes it."""

    height: int
    app_hash: bytes
    block_time: int
    chunk_hashes: tuple[bytes, ...]

    @property
    def metadata(self) -> bytes:
        return canonical_json(
            {
                "format": FORMAT,
                "height": self.height,
                "app_hash": self.app_hash.hex(),
                "block_time": self.block_time,
                "chunks": [h.hex() for h in self.chunk_hashes],
            }
        )

    @property
    def hash(self) -> bytes:
        return hashlib.sha256(self.metadata).digest()

    @classmethod
    def parse(cls, raw: bytes) -> SnapshotInfo:
        """Metadata bytes in their one canonical form (SnapshotError otherwise)."""
        try:
            doc = json.loads(raw)
            info = cls(
                int(doc["height"]),
                bytes.fromhex(doc["app_hash"]),
                int(doc["block_time"]),
                tuple(bytes.fromhex(h) for h in doc["chunks"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SnapshotError(f"unreadable snapshot metadata: {exc}") from None
        if doc.get("format") != FORMAT or info.metadata != raw:
            raise SnapshotError("snapshot metadata not in its one canonical form")
        return info

    @classmethod
    def from_metadata(cls, raw: bytes, height: int, snapshot_hash: bytes, chunks: int) -> SnapshotInfo:
        """The metadata an offer carries, checked against the offer's own height, hash and chunk count."""
        if hashlib.sha256(raw).digest() != snapshot_hash:
            raise SnapshotError("the snapshot's hash is not the hash of its metadata")
        info = cls.parse(raw)
        if info.height != height or len(info.chunk_hashes) != chunks or not 0 < chunks <= MAX_CHUNKS:
            raise SnapshotError("the snapshot's metadata does not match its offer (height, chunks)")
        if any(len(h) != 32 for h in info.chunk_hashes) or len(info.app_hash) != 32:
            raise SnapshotError("a chunk hash or the app hash is not 32 bytes")
        return info


def records(rows: Iterator[tuple[bytes, bytes]]) -> Iterator[bytes]:
    for key, value in rows:
        yield len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big") + value


def parse_records(stream: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The (key, value) records of a snapshot's byte stream; SnapshotError when it is cut or keys
    are not in strictly increasing order (one state, one stream)."""
    at, previous = 0, None
    while at < len(stream):
        if at + 4 > len(stream):
            raise SnapshotError("the snapshot stream ends inside a record")
        size = int.from_bytes(stream[at : at + 4], "big")
        key = stream[at + 4 : at + 4 + size]
        at += 4 + size
        if at + 4 > len(stream) or len(key) != size:
            raise SnapshotError("the snapshot stream ends inside a record")
        size = int.from_bytes(stream[at : at + 4], "big")
        value = stream[at + 4 : at + 4 + size]
        at += 4 + size
        if len(value) != size:
            raise SnapshotError("the snapshot stream ends inside a record")
        if previous is not None and key <= previous:
            raise SnapshotError("snapshot keys are not in strictly increasing order")
        previous = key
        yield key, value


def write_snapshot(
    reader: sqlite3.Connection, height: int, app_hash: bytes, block_time: int, directory: Path
) -> SnapshotInfo:
    """The state `reader` sees (pinned at `height`) as a snapshot under `directory`/<height>."""
    partial = directory / f".{height}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    hashes: list[bytes] = []
    buffer = bytearray()

    def flush(final: bool) -> None:
        while len(buffer) >= CHUNK_SIZE or (final and buffer):
            chunk = bytes(buffer[:CHUNK_SIZE])
            del buffer[:CHUNK_SIZE]
            (partial / f"chunk-{len(hashes)}").write_bytes(chunk)
            hashes.append(hashlib.sha256(chunk).digest())

    rows = ((bytes(k), bytes(v)) for k, v in reader.execute("SELECT key, value FROM state ORDER BY key"))
    for record in records(rows):
        buffer += record
        flush(final=False)
    flush(final=True)
    if not hashes:  # an empty state still makes one (empty) chunk: CometBFT wants at least one
        (partial / "chunk-0").write_bytes(b"")
        hashes.append(hashlib.sha256(b"").digest())
    info = SnapshotInfo(height, app_hash, block_time, tuple(hashes))
    (partial / "metadata.json").write_bytes(info.metadata)
    final_dir = directory / str(height)
    shutil.rmtree(final_dir, ignore_errors=True)
    partial.rename(final_dir)
    return info


class Snapshots:
    """This validator's snapshots: made every `interval` blocks (0: never), the last `keep` kept."""

    def __init__(self, directory: Path, store: CommitStore, interval: int, keep: int = 2) -> None:
        self.directory, self.store, self.interval, self.keep = directory, store, interval, max(1, keep)
        self._lock = threading.Lock()
        if directory.exists():  # what a crash left half written
            for partial in directory.glob(".*.partial"):
                shutil.rmtree(partial, ignore_errors=True)
        self._thread: threading.Thread | None = None

    def after_commit(self, height: int) -> None:
        """Called once `height` is committed: start its snapshot if it is due (one at a time)."""
        if not self.interval or height % self.interval:
            return
        if self._thread is not None and self._thread.is_alive():
            log.warning("snapshot_skipped", height=height, reason="the previous one is still being written")
            return
        reader = self.store.pinned_reader()
        args = (reader, height, self.store.app_hash, self.store.block_time)
        self._thread = threading.Thread(target=self._make, args=args, name=f"snapshot-{height}", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _make(self, reader: sqlite3.Connection, height: int, app_hash: bytes, block_time: int) -> None:
        try:
            info = write_snapshot(reader, height, app_hash, block_time, self.directory)
            log.info("snapshot_made", height=height, chunks=len(info.chunk_hashes))
            self._prune()
        except Exception:  # a snapshot is a service to others: its failure must not stop the chain
            log.exception("snapshot_failed", height=height)
        finally:
            reader.close()

    def _prune(self) -> None:
        with self._lock:
            for height in self.heights()[: -self.keep]:
                shutil.rmtree(self.directory / str(height), ignore_errors=True)

    def heights(self) -> list[int]:
        if not self.directory.exists():
            return []
        return sorted(
            int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and (p / "metadata.json").exists()
        )

    def list(self) -> list[SnapshotInfo]:
        """The snapshots this validator serves; one whose metadata cannot be read is left out
        (a peer would refuse it anyway)."""
        out = []
        for height in self.heights():
            try:
                info = SnapshotInfo.parse((self.directory / str(height) / "metadata.json").read_bytes())
            except (OSError, SnapshotError) as exc:
                log.warning("snapshot_unreadable", height=height, error=str(exc))
                continue
            if info.height == height:
                out.append(info)
        return out

    def chunk(self, height: int, index: int) -> bytes:
        """A chunk of one of this validator's snapshots (b"" when it has no such chunk)."""
        path = self.directory / str(height) / f"chunk-{index}"
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return b""


class Restore:
    """One snapshot being restored: its chunks, each checked against its hash as it arrives."""

    def __init__(self, info: SnapshotInfo, app_hash: bytes) -> None:
        if info.app_hash != app_hash:
            raise SnapshotError("the snapshot's app hash is not the one the light client verified")
        self.info = info
        self.chunks: dict[int, bytes] = {}

    def take(self, index: int, chunk: bytes) -> bool:
        """Keep chunk `index` if it is the one the metadata names; False when it is not."""
        if not 0 <= index < len(self.info.chunk_hashes):
            raise SnapshotError(f"chunk {index} is not in a snapshot of {len(self.info.chunk_hashes)}")
        if hashlib.sha256(chunk).digest() != self.info.chunk_hashes[index]:
            return False
        self.chunks[index] = chunk
        return True

    @property
    def complete(self) -> bool:
        return len(self.chunks) == len(self.info.chunk_hashes)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return parse_records(b"".join(self.chunks[i] for i in range(len(self.info.chunk_hashes))))
