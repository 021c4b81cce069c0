"""Hub uploads need an uploader's signature and fit its quota (issue 7, item 10). Each test performs
one attack on POST /v1/blobs and asserts its one outcome (status and JSON error code) and that
nothing was stored or charged; then the honest path, the ledger and the flag parsing."""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from haca.crypto.keys import PrivateKey
from haca.hub.api import create_app
from haca.hub.auth import (
    EXPIRY_HEADER,
    MAX_UPLOAD_TTL,
    SIGNATURE_HEADER,
    UPLOAD_HEADERS,
    UPLOADER_HEADER,
    upload_headers,
)
from haca.hub.errors import HubError, QuotaExceeded, UploaderNotAllowed
from haca.hub.quota import (
    LEDGER_NAME,
    LEGACY_LEDGER_NAME,
    UploadLedger,
    blob_charge,
    build_quotas,
    parse_size,
    parse_uploader,
)
from haca.hub.store import TMP_PREFIX, BlobInfo, BlobStore
from tests.unit.hub.conftest import STRANGER, UPLOADER

with warnings.catch_warnings():  # starlette asks for `httpx2` for its TestClient; httpx works the same here
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

LIMIT = 64 * 1024
DATA = bytes(range(256)) * 10  # 2560 bytes, charged one block + the per-blob overhead (8 KiB)
QUOTA = blob_charge(len(DATA)) + 4096  # DATA fits once
OTHER = b"o" * len(DATA)  # same size, other bytes
MORE = b"m" * 1000  # another 8 KiB charge: does not fit beside DATA
OCTET = {"Content-Type": "application/octet-stream"}


def hex_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def signed(data: bytes, key: PrivateKey = UPLOADER, **kwargs: Any) -> dict[str, str]:
    return {**OCTET, **upload_headers(key, hex_of(data), len(data), **kwargs)}


@dataclass
class Hub:
    client: TestClient
    store: BlobStore
    ledger: UploadLedger

    def nothing_stored(self) -> bool:
        temps = [p for p in self.store.blob_dir.iterdir() if p.name.startswith(TMP_PREFIX)]
        return self.store.list() == [] and not temps and not self.ledger.path.exists()

    def upload(self, data: bytes, headers: dict[str, str]) -> httpx.Response:
        return self.client.post("/v1/blobs", content=data, headers=headers)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    store = BlobStore(tmp_path / "hub", max_size=LIMIT)
    ledger = UploadLedger(store.root, {UPLOADER.address: QUOTA})
    with TestClient(create_app(store, ledger), raise_server_exceptions=False) as client:
        yield Hub(client, store, ledger)


def error_of(response: httpx.Response) -> tuple[int, str]:
    """(status, code) of a JSON `{"error": {"code", "message"}}` answer."""
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"} and body["error"]["message"]
    return response.status_code, body["error"]["code"]


# --- the attacks ------------------------------------------------------------------------------------


def test_anonymous_upload_is_401_and_stores_nothing(hub: Hub) -> None:
    response = hub.upload(DATA, OCTET)
    assert error_of(response) == (401, "upload_signature_required")
    assert response.headers["www-authenticate"].startswith("HACA-Upload")
    assert hub.nothing_stored()


def test_upload_signed_by_a_non_uploader_is_403_and_stores_nothing(hub: Hub) -> None:
    assert error_of(hub.upload(DATA, signed(DATA, STRANGER))) == (403, "uploader_not_allowed")
    assert hub.nothing_stored()


def test_upload_over_quota_is_403_and_changes_nothing(hub: Hub) -> None:
    assert hub.upload(DATA, signed(DATA)).status_code == 201
    blobs, used, ledger = hub.store.list(), hub.ledger.used(UPLOADER.address), hub.ledger.path.read_bytes()
    assert error_of(hub.upload(MORE, signed(MORE))) == (403, "upload_quota_exceeded")
    assert hub.store.list() == blobs and hub.ledger.used(UPLOADER.address) == used == blob_charge(len(DATA))
    assert hub.ledger.path.read_bytes() == ledger


@pytest.mark.parametrize(
    ("body", "why"),
    [(OTHER, "other bytes of the signed size"), (DATA[:-1], "one byte short"), (DATA + b"!", "one byte more")],
)
def test_signature_for_other_bytes_than_sent_is_400_and_stores_nothing(hub: Hub, body: bytes, why: str) -> None:
    headers = signed(DATA)

    def chunks() -> Iterator[bytes]:  # streamed, so no Content-Length tells the hub in advance
        yield from (body[i : i + 500] for i in range(0, len(body), 500))

    response = hub.client.post("/v1/blobs", content=chunks(), headers=headers)
    assert error_of(response) == (400, "upload_content_mismatch"), why
    assert hub.nothing_stored() and hub.ledger.used(UPLOADER.address) == 0


def test_content_length_other_than_the_signed_size_is_400_before_the_body(hub: Hub) -> None:
    assert error_of(hub.upload(DATA + b"!", signed(DATA))) == (400, "upload_content_mismatch")
    assert hub.nothing_stored()


def test_expired_signature_is_401_and_stores_nothing(hub: Hub) -> None:
    response = hub.upload(DATA, signed(DATA, expiry=int(time.time()) - 1))
    assert error_of(response) == (401, "upload_signature_expired")
    assert hub.nothing_stored()


def test_signature_expiring_too_far_ahead_is_401(hub: Hub) -> None:
    response = hub.upload(DATA, signed(DATA, expiry=int(time.time()) + MAX_UPLOAD_TTL + 60))
    assert error_of(response) == (401, "upload_signature_invalid")
    assert hub.nothing_stored()


def test_signature_by_another_key_than_the_named_uploader_is_401(hub: Hub) -> None:
    headers = {**signed(DATA, STRANGER), UPLOADER_HEADER: UPLOADER.address}  # claims to be the uploader
    assert error_of(hub.upload(DATA, headers)) == (401, "upload_signature_invalid")
    assert hub.nothing_stored()


def test_signature_with_a_changed_expiry_is_401(hub: Hub) -> None:
    headers = signed(DATA)
    headers[EXPIRY_HEADER] = str(int(headers[EXPIRY_HEADER]) + 60)  # extend a signature: it no longer recovers
    assert error_of(hub.upload(DATA, headers)) == (401, "upload_signature_invalid")
    assert hub.nothing_stored()


@pytest.mark.parametrize("header", UPLOAD_HEADERS)
def test_incomplete_signature_headers_are_401(hub: Hub, header: str) -> None:
    headers = {k: v for k, v in signed(DATA).items() if k != header}
    assert error_of(hub.upload(DATA, headers)) == (401, "upload_signature_invalid")
    assert hub.nothing_stored()


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (SIGNATURE_HEADER, "0x1234"),
        (SIGNATURE_HEADER, "0x" + "00" * 65),
        (UPLOADER_HEADER, "0xnotanaddress"),
        (EXPIRY_HEADER, "-5"),
        (EXPIRY_HEADER, str(1 << 64)),
        ("X-HACA-Content-Sha256", "sha256:" + "a" * 64),
        ("X-HACA-Upload-Size", "2560.0"),
    ],
)
def test_malformed_signature_headers_are_401(hub: Hub, header: str, value: str) -> None:
    headers = {**signed(DATA), header: value}
    assert error_of(hub.upload(DATA, headers)) == (401, "upload_signature_invalid")
    assert hub.nothing_stored()


def test_a_hub_without_uploaders_refuses_every_upload(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    with TestClient(create_app(store), raise_server_exceptions=False) as client:
        response = client.post("/v1/blobs", content=DATA, headers=signed(DATA))
    assert error_of(response) == (403, "uploader_not_allowed")
    assert store.list() == []


# --- the honest path ---------------------------------------------------------------------------------


def test_an_honest_upload_is_stored_and_counts_against_the_quota_once(hub: Hub) -> None:
    first = hub.upload(DATA, signed(DATA))
    again = hub.upload(DATA, signed(DATA))  # a re-upload (or a replayed signature) costs nothing
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() == {"id": "sha256:" + hex_of(DATA), "size": len(DATA)}
    assert hub.store.list() == [BlobInfo("sha256:" + hex_of(DATA), len(DATA))]
    assert hub.ledger.used(UPLOADER.address) == blob_charge(len(DATA))
    lines = [json.loads(line) for line in hub.ledger.path.read_text().splitlines()]
    assert lines == [{"sha256": hex_of(DATA), "uploader": UPLOADER.address, "size": len(DATA)}]
    reopened = UploadLedger(hub.store.root, {UPLOADER.address: QUOTA})  # durable across restarts
    assert reopened.used(UPLOADER.address) == blob_charge(len(DATA))
    assert reopened.charged_to(hex_of(DATA)) == UPLOADER.address


def test_an_uploader_at_its_quota_may_still_re_upload_a_stored_blob(hub: Hub) -> None:
    assert hub.upload(DATA, signed(DATA)).status_code == 201
    assert hub.upload(DATA, signed(DATA)).status_code == 201
    assert hub.ledger.used(UPLOADER.address) == blob_charge(len(DATA))


def test_a_blob_stored_by_one_uploader_costs_another_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    ledger = UploadLedger(store.root, {UPLOADER.address: QUOTA, STRANGER.address: 0})
    with TestClient(create_app(store, ledger), raise_server_exceptions=False) as client:
        assert client.post("/v1/blobs", content=DATA, headers=signed(DATA)).status_code == 201
        assert client.post("/v1/blobs", content=DATA, headers=signed(DATA, STRANGER)).status_code == 201
        refused = client.post("/v1/blobs", content=MORE, headers=signed(MORE, STRANGER))
    assert error_of(refused) == (403, "upload_quota_exceeded")
    assert ledger.used(UPLOADER.address) == blob_charge(len(DATA)) and ledger.used(STRANGER.address) == 0


def test_a_failed_ledger_write_keeps_no_uncharged_blob(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(*args: Any) -> None:
        raise OSError("no space left on device")

    monkeypatch.setattr(hub.ledger, "_append", disk_full)
    assert error_of(hub.upload(DATA, signed(DATA)))[0] == 500
    assert hub.nothing_stored() and hub.ledger.used(UPLOADER.address) == 0


# --- the ledger ------------------------------------------------------------------------------------


def test_a_failed_rename_takes_the_charge_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path)
    ledger = UploadLedger(store.root, {UPLOADER.address: QUOTA})
    writer = store.writer()
    writer.write(DATA)

    def rename_fails() -> BlobInfo:
        raise OSError("read-only file system")

    monkeypatch.setattr(writer, "commit", rename_fails)
    reservation = ledger.reserve(UPLOADER.address, hex_of(DATA), len(DATA), already_stored=False)
    with pytest.raises(OSError):
        ledger.commit(reservation, writer)
    writer.abort()
    assert ledger.used(UPLOADER.address) == 0 and reservation.released and store.list() == []
    reopened = UploadLedger(store.root, {UPLOADER.address: QUOTA})  # the drop is on disk too
    assert reopened.used(UPLOADER.address) == 0 and reopened.charged_to(hex_of(DATA)) is None


def test_a_charge_left_by_a_crash_makes_the_retry_free(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    entry = {"sha256": hex_of(DATA), "uploader": UPLOADER.address, "size": len(DATA)}  # then the hub died
    (tmp_path / LEDGER_NAME).write_text(json.dumps(entry) + "\n" + '{"sha256": "cut sho')  # and a torn line
    ledger = UploadLedger(store.root, {UPLOADER.address: blob_charge(len(DATA))})  # exactly at its quota
    with TestClient(create_app(store, ledger), raise_server_exceptions=False) as client:
        assert client.post("/v1/blobs", content=DATA, headers=signed(DATA)).status_code == 201
    assert ledger.used(UPLOADER.address) == blob_charge(len(DATA)) and store.exists("sha256:" + hex_of(DATA))


def test_the_earlier_whole_file_ledger_is_imported_once(tmp_path: Path) -> None:
    entry = {"uploader": UPLOADER.address, "size": len(DATA)}
    (tmp_path / LEGACY_LEDGER_NAME).write_text(json.dumps({"version": 1, "blobs": {hex_of(DATA): entry}}))
    ledger = UploadLedger(tmp_path, {UPLOADER.address: QUOTA})
    assert ledger.used(UPLOADER.address) == blob_charge(len(DATA)) and ledger.charged_to(hex_of(DATA))
    assert not (tmp_path / LEGACY_LEDGER_NAME).exists() and (tmp_path / LEDGER_NAME).exists()
    assert UploadLedger(tmp_path, {UPLOADER.address: QUOTA}).used(UPLOADER.address) == blob_charge(len(DATA))


def test_uploads_under_way_hold_their_bytes_against_the_quota(tmp_path: Path) -> None:
    ledger = UploadLedger(tmp_path, {UPLOADER.address: QUOTA})
    first = ledger.reserve(UPLOADER.address, hex_of(DATA), len(DATA), already_stored=False)
    with pytest.raises(QuotaExceeded):
        ledger.reserve(UPLOADER.address, hex_of(MORE), len(MORE), already_stored=False)
    first.release()
    first.release()  # idempotent
    ledger.reserve(UPLOADER.address, hex_of(MORE), len(MORE), already_stored=False).release()
    with pytest.raises(UploaderNotAllowed):
        ledger.reserve(STRANGER.address, hex_of(MORE), len(MORE), already_stored=False)


def test_an_unreadable_ledger_stops_the_hub_from_starting(tmp_path: Path) -> None:
    (tmp_path / LEDGER_NAME).write_text("{not json\n")
    with pytest.raises(HubError, match="refusing to start"):
        UploadLedger(tmp_path, {UPLOADER.address: QUOTA})


def test_sizes_and_uploader_flags(tmp_path: Path) -> None:
    assert [parse_size(t) for t in ("0", "1048576", "4k", "512MiB", "10G", "2 GiB")] == [
        0,
        1 << 20,
        4096,
        512 << 20,
        10 << 30,
        2 << 30,
    ]
    for bad in ("", "-1", "1.5G", "ten", "5 PB"):
        with pytest.raises(ValueError):
            parse_size(bad)
    upper = "0x" + UPLOADER.address[2:].upper()
    assert parse_uploader(upper, 7) == (UPLOADER.address, 7)
    assert parse_uploader(f"{UPLOADER.address}=1KiB", 7) == (UPLOADER.address, 1024)
    with pytest.raises(ValueError):
        parse_uploader("0x1234=1G", 7)
    path = tmp_path / "uploaders.json"
    path.write_text(json.dumps({UPLOADER.address: None, STRANGER.address: "1MiB"}))
    assert build_quotas([f"{STRANGER.address}=5"], path, default_quota=9) == {
        UPLOADER.address: 9,
        STRANGER.address: 5,  # the flag wins over the file
    }
    path.write_text(json.dumps({UPLOADER.address: -1}))
    with pytest.raises(ValueError):
        build_quotas([], path)


def test_hub_flags_name_the_uploaders(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    import haca.hub.main as hub_main
    from haca.cli.hub import hub_app
    from haca.devnet.accounts import service_keys
    from haca.devnet.services import hub_command

    started: list[tuple[Any, ...]] = []
    monkeypatch.setattr(hub_main, "run_hub", lambda *args: started.append(args))
    hub_main.main(["--root", str(tmp_path), "--port", "9", "--uploader", f"{UPLOADER.address}=2KiB"])
    result = CliRunner().invoke(
        hub_app,
        ["--port", "9", "--root", str(tmp_path), "--uploader", STRANGER.address, "--default-quota", "1MiB", "--json"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["uploaders"] == {STRANGER.address: 1 << 20}
    assert [args[4] for args in started] == [{UPLOADER.address: 2048}, {STRANGER.address: 1 << 20}]
    command = hub_command(tmp_path, 9)
    assert dict(service_keys())["publisher"].address in command and "--uploader" in command
