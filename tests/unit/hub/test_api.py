"""The hub's HTTP API in-process (TestClient): routes, headers, and JSON errors for every failure.
Uploads are signed by UPLOADER (the attacks on upload signatures and quotas: test_upload_auth.py)."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.exceptions import HTTPException as StarletteHTTPException

from haca.hub.api import CONTENT_SHA256_HEADER, check_upload_headers, create_app
from haca.hub.auth import UploadGrant, upload_headers
from haca.hub.errors import ContentMismatch
from haca.hub.quota import UploadLedger
from haca.hub.store import TMP_PREFIX, BlobStore
from tests.unit.hub.conftest import UPLOADER

with warnings.catch_warnings():  # starlette asks for `httpx2` for its TestClient; httpx works the same here
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

LIMIT = 4096
DATA = bytes(range(256)) * 10  # 2560 bytes
DATA_ID = "sha256:" + hashlib.sha256(DATA).hexdigest()
OCTET = {"Content-Type": "application/octet-stream"}


def signed(data: bytes, size: int | None = None) -> dict[str, str]:
    """OCTET plus UPLOADER's signature for `data` (or for a body of `size` bytes hashing as `data`)."""
    return {**OCTET, **upload_headers(UPLOADER, hashlib.sha256(data).hexdigest(), len(data) if size is None else size)}


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path, max_size=LIMIT)


@pytest.fixture
def client(store: BlobStore) -> Iterator[TestClient]:
    ledger = UploadLedger(store.root, {UPLOADER.address: 100 * LIMIT})
    with TestClient(create_app(store, ledger), raise_server_exceptions=False) as test_client:
        yield test_client


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    error: dict[str, Any] = body["error"]
    return error


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_upload_then_download_list_and_head(client: TestClient, store: BlobStore) -> None:
    response = client.post("/v1/blobs", content=DATA, headers=signed(DATA))
    assert response.status_code == 201
    assert response.json() == {"id": DATA_ID, "size": len(DATA)}
    assert store.exists(DATA_ID)

    got = client.get(f"/v1/blobs/{DATA_ID}")
    assert got.status_code == 200 and got.content == DATA
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers[CONTENT_SHA256_HEADER.lower()] == DATA_ID.removeprefix("sha256:")
    assert int(got.headers["content-length"]) == len(DATA)

    head = client.head(f"/v1/blobs/{DATA_ID}")
    assert head.status_code == 200 and head.content == b""
    assert head.headers[CONTENT_SHA256_HEADER] == DATA_ID.removeprefix("sha256:")
    assert int(head.headers["content-length"]) == len(DATA)

    assert client.get("/v1/blobs").json() == {"blobs": [{"id": DATA_ID, "size": len(DATA)}]}


def test_upload_is_idempotent(client: TestClient, store: BlobStore) -> None:
    first = client.post("/v1/blobs", content=DATA, headers=signed(DATA))
    second = client.post("/v1/blobs", content=DATA, headers=signed(DATA))
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert len(store.list()) == 1


def test_streamed_upload_without_content_length(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for i in range(0, len(DATA), 100):
            yield DATA[i : i + 100]

    response = client.post("/v1/blobs", content=chunks(), headers=signed(DATA))
    assert response.status_code == 201 and response.json()["id"] == DATA_ID


def test_upload_without_content_type_is_accepted(client: TestClient) -> None:
    headers = upload_headers(UPLOADER, hashlib.sha256(b"raw").hexdigest(), 3)
    assert client.post("/v1/blobs", content=b"raw", headers=headers).status_code == 201


def test_upload_of_another_media_type_is_415(client: TestClient) -> None:
    headers = upload_headers(UPLOADER, hashlib.sha256(DATA).hexdigest(), len(DATA))
    response = client.post("/v1/blobs", files={"file": ("m.onnx", DATA)}, headers=headers)
    assert_error(response, 415, "unsupported_media_type")


def test_too_large_by_content_length_is_413(client: TestClient, store: BlobStore) -> None:
    big = b"x" * (LIMIT + 1)
    assert_error(client.post("/v1/blobs", content=big, headers=signed(big)), 413, "blob_too_large")
    assert store.list() == []


def test_too_large_by_signed_size_is_413_before_streaming(client: TestClient, store: BlobStore) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"y" * 1000

    headers = signed(b"y" * 10_000)  # no Content-Length: the signed size alone is over the limit
    assert_error(client.post("/v1/blobs", content=chunks(), headers=headers), 413, "blob_too_large")
    assert store.list() == []
    assert not [p for p in store.blob_dir.iterdir() if p.name.startswith(TMP_PREFIX)]


@pytest.mark.parametrize(
    "bad",
    [
        "nothex",
        "sha256:abc",
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 65,
        "md5:" + "a" * 64,
        "a" * 64,
        "%2e%2e",
        "sha256:%2e%2e",
    ],
)
def test_bad_ids_are_400(client: TestClient, bad: str) -> None:
    assert_error(client.get(f"/v1/blobs/{bad}"), 400, "invalid_blob_id")


def test_head_with_bad_id_is_400_without_body(client: TestClient) -> None:
    response = client.head("/v1/blobs/nothex")
    assert response.status_code == 400 and response.content == b""


def test_path_traversal_never_reaches_the_disk(client: TestClient, tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"secret")
    for path in ("/v1/blobs/../secret", "/v1/blobs/..%2Fsecret", "/v1/blobs/sha256:..%2F..%2Fsecret"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert b"secret" not in response.content or response.headers["content-type"].startswith("application/json")
        assert_error(response, response.status_code)


def test_unknown_blob_is_404(client: TestClient) -> None:
    assert_error(client.get("/v1/blobs/sha256:" + "0" * 64), 404, "blob_not_found")
    assert client.head("/v1/blobs/sha256:" + "0" * 64).status_code == 404


def test_unknown_route_is_404_json(client: TestClient) -> None:
    error = assert_error(client.get("/nope"), 404, "not_found")
    assert "/nope" in error["message"]
    assert_error(client.get("/v1/blobs/a/b"), 404, "not_found")


def test_wrong_method_is_405_json(client: TestClient) -> None:
    assert_error(client.delete(f"/v1/blobs/{DATA_ID}"), 405, "method_not_allowed")
    assert_error(client.put("/v1/blobs", content=b"x"), 405, "method_not_allowed")


def test_downloads_need_no_signature(client: TestClient) -> None:
    assert client.post("/v1/blobs", content=DATA, headers=signed(DATA)).status_code == 201
    assert client.get(f"/v1/blobs/{DATA_ID}").content == DATA
    assert client.get("/v1/blobs").json()["blobs"] == [{"id": DATA_ID, "size": len(DATA)}]


def test_bad_content_length_is_400(client: TestClient) -> None:
    response = client.post("/v1/blobs", content=b"abc", headers={**signed(b"abc"), "Content-Length": "-3"})
    assert response.status_code == 400  # refused before any byte is stored


@pytest.mark.parametrize(
    ("length", "refusal"),
    [("\u00b2", StarletteHTTPException), ("7" * 5000, ContentMismatch), ("00001234", None)],
    ids=["superscript-two", "5000-digits", "leading-zeros"],
)
def test_a_content_length_int_cannot_read_is_refused_not_a_500(length: str, refusal: type[Exception] | None) -> None:
    """Found while writing fuzz/fuzz_hub_upload.py: "²" passes str.isdigit() and a 5000-digit
    number is more than int() reads; both raised ValueError out of the upload route (a 500)."""
    grant = UploadGrant(UPLOADER.address, "5e" * 32, 1234, 2_000_000_000)
    headers = {"content-type": "application/octet-stream", "content-length": length}
    if refusal is None:
        check_upload_headers(headers, grant, 1 << 20)
        return
    with pytest.raises(refusal) as refused:
        check_upload_headers(headers, grant, 1 << 20)
    assert getattr(refused.value, "status_code", 400) == 400


def test_request_validation_errors_are_json(store: BlobStore) -> None:
    app = create_app(store)

    @app.get("/v1/probe")
    def probe(n: int) -> dict[str, int]:
        return {"n": n}

    with TestClient(app) as test_client:
        assert test_client.get("/v1/probe?n=3").json() == {"n": 3}
        error = assert_error(test_client.get("/v1/probe?n=three"), 422, "invalid_request")
        assert "n" in error["message"]


def test_unexpected_errors_are_500_json(store: BlobStore) -> None:
    app = create_app(store)

    @app.get("/v1/boom")
    def boom() -> None:
        raise KeyError("boom")

    with TestClient(app, raise_server_exceptions=False) as test_client:
        assert_error(test_client.get("/v1/boom"), 500, "internal")
