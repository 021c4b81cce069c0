"""Attacks on the hub from issue 19, each with its one outcome: a flood of tiny blobs is charged
what it costs the disk, an upload appends to the ledger instead of rewriting it, and a body
trickled in slowly gets a 408 JSON answer instead of holding the connection."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import warnings
from pathlib import Path

from haca.hub.api import create_app
from haca.hub.auth import upload_headers
from haca.hub.quota import UploadLedger, blob_charge
from haca.hub.store import BlobStore
from tests.unit.hub.conftest import UPLOADER
from tests.unit.hub.server import serve

with warnings.catch_warnings():  # starlette asks for `httpx2` for its TestClient; httpx works the same here
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient


def signed(data: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/octet-stream",
        **upload_headers(UPLOADER, hashlib.sha256(data).hexdigest(), len(data)),
    }


def test_tiny_blobs_are_charged_a_block_and_a_per_blob_overhead(tmp_path: Path) -> None:
    """Three 3-byte blobs use the whole quota (8 KiB each), so a fourth is refused: charged by their
    bare length, 12 bytes would have fitted thousands of times over."""
    store = BlobStore(tmp_path)
    ledger = UploadLedger(store.root, {UPLOADER.address: 3 * blob_charge(3)})
    with TestClient(create_app(store, ledger), raise_server_exceptions=False) as client:
        for tag in (b"ab1", b"ab2", b"ab3"):
            assert client.post("/v1/blobs", content=tag, headers=signed(tag)).status_code == 201
        fourth = client.post("/v1/blobs", content=b"ab4", headers=signed(b"ab4"))
    assert (fourth.status_code, fourth.json()["error"]["code"]) == (403, "upload_quota_exceeded")


def test_an_upload_appends_to_the_ledger_without_rewriting_it(tmp_path: Path) -> None:
    """The earlier records stay where they are (same file, same bytes) and one line is added."""
    store = BlobStore(tmp_path)
    ledger = UploadLedger(store.root, {UPLOADER.address: 1 << 20})
    with TestClient(create_app(store, ledger), raise_server_exceptions=False) as client:
        assert client.post("/v1/blobs", content=b"first", headers=signed(b"first")).status_code == 201
        before, inode = ledger.path.read_bytes(), os.stat(ledger.path).st_ino
        assert client.post("/v1/blobs", content=b"second", headers=signed(b"second")).status_code == 201
    after = ledger.path.read_bytes()
    assert os.stat(ledger.path).st_ino == inode and after.startswith(before) and after.count(b"\n") == 2


def test_a_body_that_trickles_in_is_answered_408_json(tmp_path: Path) -> None:
    """Headers and half the body, then silence: the hub answers 408 with its JSON error once the
    body deadline passes (the socket timeout only guards the test against a hub that never does)."""
    store = BlobStore(tmp_path)
    ledger = UploadLedger(store.root, {UPLOADER.address: 1 << 20})
    data = b"x" * 100
    headers = {**signed(data), "Content-Length": str(len(data)), "Connection": "close"}
    with serve(create_app(store, ledger, body_deadline_s=0.5)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            sock.sendall(f"POST /v1/blobs HTTP/1.1\r\nHost: {host}\r\n{head}\r\n".encode() + data[:50])
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    assert (status_line.split()[1], json.loads(body)["error"]["code"]) == (b"408", "upload_timeout")
    assert store.list() == [] and ledger.used(UPLOADER.address) == 0
