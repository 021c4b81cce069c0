"""BlobStore: content addressing, atomic streamed writes, size limits, strict ids."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from haca.hub.errors import BlobNotFound, BlobTooLarge, HubError, InvalidBlobId
from haca.hub.store import STALE_TMP_SECONDS, TMP_PREFIX, BlobInfo, BlobStore, blob_id_of, parse_blob_id

DATA = b"onnx bytes \x00\x01\x02" * 1000


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def leftovers(store: BlobStore) -> list[str]:
    return [p.name for p in store.blob_dir.iterdir() if p.name.startswith(TMP_PREFIX)]


def test_put_stream_returns_the_sha256_id_and_stores_the_bytes(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    blob_id = store.put_stream(DATA[i : i + 777] for i in range(0, len(DATA), 777))
    assert blob_id == sha(DATA) == blob_id_of(DATA)
    path = store.get_path(blob_id)
    assert path == tmp_path / "blobs" / blob_id.removeprefix("sha256:")
    assert path.read_bytes() == DATA
    assert store.exists(blob_id) and store.size(blob_id) == len(DATA)
    assert store.verify(blob_id)
    assert leftovers(store) == []


def test_put_is_idempotent(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    first = store.put_bytes(DATA)
    mtime = store.get_path(first).stat().st_mtime_ns
    assert store.put_stream([DATA[:10], DATA[10:]]) == first
    assert store.get_path(first).stat().st_mtime_ns == mtime  # not rewritten
    assert store.list() == [BlobInfo(first, len(DATA))]
    assert leftovers(store) == []


def test_empty_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    blob_id = store.put_stream([])
    assert blob_id == sha(b"") and store.size(blob_id) == 0


def test_list_is_sorted_and_skips_uploads_in_progress(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    ids = [store.put_bytes(bytes([i]) * (i + 1)) for i in range(5)]
    writer = store.writer()
    writer.write(b"partial")
    (store.blob_dir / "not-a-blob").write_bytes(b"x")
    assert [b.id for b in store.list()] == sorted(ids)
    assert {b.size for b in store.list()} == {1, 2, 3, 4, 5}
    assert len(store) == 5
    writer.abort()
    assert leftovers(store) == []


def test_over_the_limit_raises_and_keeps_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_size=100)
    with pytest.raises(BlobTooLarge):
        store.put_stream([b"a" * 60, b"b" * 60])
    assert store.list() == [] and leftovers(store) == []
    assert store.put_bytes(b"c" * 100) == sha(b"c" * 100)  # exactly the limit is fine
    with pytest.raises(BlobTooLarge):
        store.put_stream([b"d" * 11], max_size=10)  # per-call override
    assert leftovers(store) == []


def test_failure_in_the_source_removes_the_temp_file(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)

    def broken() -> Iterator[bytes]:
        yield b"some"
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        store.put_stream(broken())
    assert leftovers(store) == [] and store.list() == []


def test_put_file(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(DATA * 3)
    store = BlobStore(tmp_path / "store")
    assert store.put_file(source) == sha(DATA * 3)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sha256:",
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "A" * 64,
        "SHA256:" + "a" * 64,
        "sha1:" + "a" * 64,
        "a" * 64,
        "sha256:" + "g" * 64,
        "sha256:" + "a" * 64 + "\n",
        "sha256:../../" + "a" * 58,
        "sha256:" + "a" * 60 + "/../",
        "../blobs/" + "a" * 64,
    ],
)
def test_invalid_ids_are_refused_everywhere(tmp_path: Path, bad: str) -> None:
    store = BlobStore(tmp_path)
    for call in (parse_blob_id, store.get_path, store.exists, store.size, store.path_for):
        with pytest.raises(InvalidBlobId):
            call(bad)


def test_invalid_id_of_wrong_type() -> None:
    with pytest.raises(InvalidBlobId):
        parse_blob_id(None)
    with pytest.raises(InvalidBlobId):
        parse_blob_id(b"sha256:" + b"a" * 64)


def test_unknown_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    unknown = "sha256:" + "0" * 64
    assert not store.exists(unknown)
    with pytest.raises(BlobNotFound):
        store.get_path(unknown)
    with pytest.raises(BlobNotFound):
        store.size(unknown)


def test_error_hierarchy_and_codes() -> None:
    for cls, code in (
        (BlobNotFound, "blob_not_found"),
        (BlobTooLarge, "blob_too_large"),
        (InvalidBlobId, "invalid_blob_id"),
    ):
        assert issubclass(cls, HubError) and cls.code == code


def test_verify_detects_a_corrupted_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    blob_id = store.put_bytes(DATA)
    store.get_path(blob_id).write_bytes(DATA[:-1] + b"?")
    assert not store.verify(blob_id)


def test_stale_uploads_are_removed_on_open_fresh_ones_kept(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    stale, fresh = store.blob_dir / (TMP_PREFIX + "old"), store.blob_dir / (TMP_PREFIX + "new")
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    old = time.time() - STALE_TMP_SECONDS - 60
    os.utime(stale, (old, old))
    BlobStore(tmp_path)
    assert not stale.exists() and fresh.exists()


def test_writer_context_manager_aborts_unless_committed(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    with store.writer() as writer:
        writer.write(b"abc")
        assert writer.tmp_path.exists()
    assert leftovers(store) == []
    with store.writer() as writer:
        writer.write(b"abc")
        info = writer.commit()
    assert info == BlobInfo(sha(b"abc"), 3) and store.exists(info.id)
    with pytest.raises(HubError):
        writer.write(b"more")
