"""HubClient against a real hub on loopback: uploads, verified downloads, and refusal of bytes that do
not hash to the id asked for."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import Response

from haca.hub.auth import upload_headers
from haca.hub.client import HubClient
from haca.hub.errors import (
    BlobHashMismatch,
    BlobNotFound,
    BlobTooLarge,
    HubError,
    HubUnavailable,
    InvalidBlobId,
    SignatureRequired,
    UploaderNotAllowed,
)
from haca.hub.store import TMP_PREFIX
from tests.unit.hub.conftest import SMALL_LIMIT, STRANGER, UPLOADER, RunningHub
from tests.unit.hub.server import free_port, serve

DATA = b"\x08\x07" + bytes(range(256)) * 100  # 25.6 kB, under the test hub's limit


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def signed(data: bytes) -> dict[str, str]:
    """Headers of an upload of `data` by the test hub's uploader (no Content-Length: httpx adds it)."""
    headers = upload_headers(UPLOADER, hashlib.sha256(data).hexdigest(), len(data))
    return {"Content-Type": "application/octet-stream", **headers}


def no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.startswith(TMP_PREFIX)]


def test_upload_bytes_and_file_then_download(hub: RunningHub, tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(DATA)
    with HubClient(hub.url, key=hub.key) as client:
        assert client.health()
        seen: list[int] = []
        blob_id = client.upload(source, progress=seen.append)
        assert blob_id == sha(DATA) and sum(seen) == len(DATA)
        assert client.upload(DATA) == blob_id  # idempotent, bytes or file alike
        assert client.upload(str(source)) == blob_id
        assert [b.to_json() for b in client.list()] == [{"id": blob_id, "size": len(DATA)}]
        assert client.exists(blob_id)
        assert not client.exists(sha(b"other"))

        out = client.download(blob_id, tmp_path / "dl" / "copy.onnx")
        assert out == tmp_path / "dl" / "copy.onnx" and out.read_bytes() == DATA
        into_dir = client.download(blob_id, tmp_path / "dl")
        assert into_dir == tmp_path / "dl" / blob_id.removeprefix("sha256:")
        assert into_dir.read_bytes() == DATA
        assert client.fetch_bytes(blob_id) == DATA
        assert no_temp_files(tmp_path / "dl")
    assert hub.store.list()[0].id == blob_id


def test_upload_info_and_empty_blob(hub: RunningHub) -> None:
    with HubClient(hub.url, key=hub.key) as client:
        info = client.upload_info(b"")
        assert info.id == sha(b"") and info.size == 0
        assert client.fetch_bytes(info.id) == b""


def test_tampered_blob_on_the_hub_is_refused_and_leaves_no_file(hub: RunningHub, tmp_path: Path) -> None:
    with HubClient(hub.url, key=hub.key) as client:
        blob_id = client.upload(DATA)
        hub.store.get_path(blob_id).write_bytes(DATA[:-1] + b"\x00")  # the hub's disk now lies
        dest = tmp_path / "model.onnx"
        with pytest.raises(BlobHashMismatch):
            client.download(blob_id, dest)
        assert not dest.exists() and no_temp_files(tmp_path)
        with pytest.raises(BlobHashMismatch):
            client.fetch_bytes(blob_id)


def test_lying_server_is_refused(tmp_path: Path) -> None:
    """A server that answers every id with the same wrong bytes (and claims the right hash)."""
    wanted = sha(DATA)
    liar = FastAPI()

    @liar.get("/v1/blobs/{blob_id}")
    def lie(blob_id: str) -> Response:
        return Response(b"not the model", media_type="application/octet-stream", headers={"X-Content-Sha256": blob_id})

    with serve(liar) as url, HubClient(url) as client:
        dest = tmp_path / "model.onnx"
        dest.write_bytes(b"previous good copy")
        with pytest.raises(BlobHashMismatch):
            client.download(wanted, dest)
        assert dest.read_bytes() == b"previous good copy"  # untouched: the replace never happened
        assert no_temp_files(tmp_path)


def test_existing_destination_is_replaced_only_by_verified_bytes(hub: RunningHub, tmp_path: Path) -> None:
    dest = tmp_path / "m.onnx"
    dest.write_bytes(b"stale")
    with HubClient(hub.url, key=hub.key) as client:
        client.download(client.upload(DATA), dest)
    assert dest.read_bytes() == DATA


def test_upload_answer_naming_other_bytes_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        return httpx.Response(201, json={"id": sha(b"something else"), "size": len(DATA)})

    with (
        HubClient("http://hub.test", key=UPLOADER, transport=httpx.MockTransport(handler)) as client,
        pytest.raises(BlobHashMismatch),
    ):
        client.upload(DATA)


def test_download_over_the_client_limit_is_refused(hub: RunningHub, tmp_path: Path) -> None:
    with HubClient(hub.url, key=hub.key) as uploader:
        blob_id = uploader.upload(DATA)
    with HubClient(hub.url, max_size=1000) as client:
        with pytest.raises(BlobTooLarge):
            client.download(blob_id, tmp_path / "big")
        assert not (tmp_path / "big").exists() and no_temp_files(tmp_path)


def test_bad_ids_are_refused_locally_and_by_the_hub(hub: RunningHub, tmp_path: Path) -> None:
    with HubClient(hub.url, key=hub.key) as client:
        for bad in ("sha256:xyz", "sha256:" + "A" * 64, "../../etc/passwd"):
            with pytest.raises(InvalidBlobId):
                client.download(bad, tmp_path / "x")
            with pytest.raises(InvalidBlobId):
                client.fetch_bytes(bad)
            with pytest.raises(InvalidBlobId):
                client.exists(bad)
    assert list(tmp_path.iterdir()) == [tmp_path / "hub"]
    response = httpx.get(f"{hub.url}/v1/blobs/sha256:xyz")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_blob_id" and response.json()["error"]["message"]


def test_unknown_blob_is_404_json_and_blob_not_found(hub: RunningHub, tmp_path: Path) -> None:
    unknown = sha(b"never uploaded")
    response = httpx.get(f"{hub.url}/v1/blobs/{unknown}")
    assert response.status_code == 404 and response.json()["error"]["code"] == "blob_not_found"
    with HubClient(hub.url, key=hub.key) as client:
        with pytest.raises(BlobNotFound):
            client.download(unknown, tmp_path / "x")
        with pytest.raises(BlobNotFound):
            client.fetch_bytes(unknown)
    assert not (tmp_path / "x").exists() and no_temp_files(tmp_path)


def test_oversize_upload_is_413_and_blob_too_large(hub: RunningHub, tmp_path: Path) -> None:
    big = b"z" * (SMALL_LIMIT + 1)
    response = httpx.post(f"{hub.url}/v1/blobs", content=big, headers=signed(big))
    assert response.status_code == 413 and response.json()["error"]["code"] == "blob_too_large"
    source = tmp_path / "big.onnx"
    source.write_bytes(big)
    with HubClient(hub.url, key=hub.key) as client:
        with pytest.raises(BlobTooLarge):
            client.upload(source)
        with pytest.raises(BlobTooLarge):
            client.upload(big)
    assert hub.store.list() == [] and no_temp_files(hub.store.blob_dir)


def test_chunked_body_longer_than_signed_is_400_and_leaves_nothing(hub: RunningHub) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(SMALL_LIMIT // 1000 + 2):
            yield b"q" * 1000

    headers = signed(b"q" * 1000)  # signs 1000 bytes, streams more than the store's limit
    response = httpx.post(f"{hub.url}/v1/blobs", content=chunks(), headers=headers)
    assert response.status_code == 400 and response.json()["error"]["code"] == "upload_content_mismatch"
    assert hub.store.list() == [] and no_temp_files(hub.store.blob_dir)


def test_invalid_route_is_404_json(hub: RunningHub) -> None:
    for method, path in (("GET", "/v2/blobs"), ("GET", "/"), ("POST", "/v1/other")):
        response = httpx.request(method, f"{hub.url}{path}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found" and response.json()["error"]["message"]


def test_unreachable_hub_is_hub_unavailable(tmp_path: Path) -> None:
    with HubClient(f"http://127.0.0.1:{free_port()}", key=UPLOADER, timeout=2) as client:
        assert not client.health()
        with pytest.raises(HubUnavailable):
            client.upload(b"x")
        with pytest.raises(HubUnavailable):
            client.download(sha(b"x"), tmp_path / "x")
    assert not (tmp_path / "x").exists() and no_temp_files(tmp_path)


def test_bad_url_is_refused() -> None:
    with pytest.raises(HubError):
        HubClient("ftp://hub")


def test_hub_main_runs_as_a_process(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "haca.hub.main",
            "--root",
            str(tmp_path / "root"),
            "--port",
            str(port),
            "--uploader",
            f"{UPLOADER.address}=1MiB",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        client = HubClient(url, key=UPLOADER)
        deadline = time.monotonic() + 30
        while not client.health():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "hub process did not answer /healthz"
            time.sleep(0.1)
        blob_id = client.upload(DATA)
        assert (tmp_path / "root" / "blobs" / blob_id.removeprefix("sha256:")).read_bytes() == DATA
        with pytest.raises(UploaderNotAllowed):
            HubClient(url, key=STRANGER).upload(b"anything")
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert proc.returncode == -15  # ended by the SIGTERM it was sent


def test_a_client_without_a_key_refuses_to_upload_and_sends_nothing() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(201, json={"id": sha(DATA), "size": len(DATA)})

    with (
        HubClient("http://hub.test", transport=httpx.MockTransport(handler)) as client,
        pytest.raises(SignatureRequired),
    ):
        client.upload(DATA)
    assert sent == []


def test_a_client_signed_by_a_non_uploader_gets_uploader_not_allowed(hub: RunningHub, tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(DATA)
    with HubClient(hub.url, key=STRANGER) as client, pytest.raises(UploaderNotAllowed):
        client.upload(source)
    assert hub.store.list() == [] and no_temp_files(hub.store.blob_dir)


def test_a_download_only_client_needs_no_key(hub: RunningHub) -> None:
    with HubClient(hub.url, key=hub.key) as uploader:
        blob_id = uploader.upload(DATA)
    with HubClient(hub.url) as client:
        assert client.fetch_bytes(blob_id) == DATA
