"""HTTP client of the model hub (httpx). Whatever it returns has been checked to hash to the id it
was asked for: a node must refuse model bytes that do not match the model id on chain. Uploads are
signed with the uploader's account key (`haca.hub.auth`); downloads need no key."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import httpx

from haca.crypto.keys import PrivateKey
from haca.hub.auth import DEFAULT_UPLOAD_TTL, upload_headers
from haca.hub.errors import (
    ERRORS_BY_CODE,
    BlobHashMismatch,
    BlobNotFound,
    BlobTooLarge,
    HubError,
    HubUnavailable,
    SignatureRequired,
)
from haca.hub.store import CHUNK_SIZE, DEFAULT_MAX_SIZE, ID_PREFIX, TMP_PREFIX, BlobInfo, parse_blob_id

Progress = Callable[[int], None]
"""Called with the number of bytes just sent or received."""


class HubClient:
    def __init__(
        self,
        url: str,
        key: PrivateKey | None = None,
        timeout: float = 60.0,
        max_size: int = DEFAULT_MAX_SIZE,
        transport: httpx.BaseTransport | None = None,
        upload_ttl: int = DEFAULT_UPLOAD_TTL,
    ) -> None:
        """`key` signs uploads (the uploader's account; None for a download-only client); `max_size`
        bounds what a download accepts (BlobTooLarge past it); `upload_ttl` is how long an upload
        signature stays valid; `transport` is for tests."""
        if not url.startswith(("http://", "https://")):
            raise HubError(f"hub URL {url!r}: expected http:// or https://")
        self.url = url.rstrip("/")
        self.key = key
        self.max_size = max_size
        self.upload_ttl = upload_ttl
        self._http = httpx.Client(
            base_url=self.url, timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)), transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HubClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- upload ---------------------------------------------------------------------------------

    def upload(self, source: Path | str | bytes, progress: Progress | None = None) -> str:
        """Upload a file (streamed; a str is a path) or bytes; returns the blob id."""
        return self.upload_info(source, progress).id

    def upload_info(self, source: Path | str | bytes, progress: Progress | None = None) -> BlobInfo:
        """Upload and return {id, size}, signed by this client's key (SignatureRequired without one).
        A file is hashed first, then streamed. BlobHashMismatch if the hub names other bytes."""
        if self.key is None:
            raise SignatureRequired("uploading to the hub needs the uploader's account key (HubClient(url, key=...))")
        if isinstance(source, bytes):
            size, hex_digest = len(source), hashlib.sha256(source).hexdigest()
            headers = {**_octet_stream(size), **upload_headers(self.key, hex_digest, size, ttl=self.upload_ttl)}
            response = self._request("POST", "/v1/blobs", content=source, headers=headers)
            if progress:
                progress(size)
        else:
            path = Path(source)
            with open(path, "rb") as file:
                size, hex_digest = _hash_file(file)
                file.seek(0)
                headers = {**_octet_stream(size), **upload_headers(self.key, hex_digest, size, ttl=self.upload_ttl)}

                def chunks() -> Iterator[bytes]:
                    for chunk in iter(lambda: file.read(CHUNK_SIZE), b""):
                        yield chunk
                        if progress:
                            progress(len(chunk))

                response = self._request("POST", "/v1/blobs", content=chunks(), headers=headers)
        answer = _json(response)
        expected = ID_PREFIX + hex_digest
        if answer.get("id") != expected or answer.get("size") != size:
            raise BlobHashMismatch(
                f"hub stored {answer.get('id')} ({answer.get('size')} bytes), we sent {expected} ({size} bytes)"
            )
        return BlobInfo(expected, size)

    # --- download -------------------------------------------------------------------------------

    def download(self, blob_id: str, dest: Path | str, progress: Progress | None = None) -> Path:
        """Stream the blob to `dest` (a file path, or an existing directory: then `dest/<hex>`).
        The bytes go to a temporary file beside it and are renamed into place only once they hash
        to `blob_id`; otherwise BlobHashMismatch and no file is left."""
        hex_digest = parse_blob_id(blob_id)
        target = Path(dest)
        if target.is_dir():
            target = target / hex_digest
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=target.parent)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in self._stream_verified(blob_id, hex_digest, progress):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            tmp.chmod(0o644)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target

    def fetch_bytes(self, blob_id: str) -> bytes:
        """The blob's bytes, checked to hash to `blob_id` (BlobHashMismatch otherwise)."""
        hex_digest = parse_blob_id(blob_id)
        return b"".join(self._stream_verified(blob_id, hex_digest, None))

    def _stream_verified(self, blob_id: str, hex_digest: str, progress: Progress | None) -> Iterator[bytes]:
        """Yield the body's chunks; raise (after the last chunk) unless they hash to the id. Callers
        must not treat what they received as valid until this generator finishes."""
        digest = hashlib.sha256()
        size = 0
        try:
            with self._http.stream("GET", f"/v1/blobs/{blob_id}") as response:
                if response.status_code != 200:
                    response.read()
                    _raise_for_error(response)
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > self.max_size:
                    raise BlobTooLarge(f"{blob_id} is {declared} bytes, over the limit of {self.max_size}")
                for chunk in response.iter_bytes(CHUNK_SIZE):
                    size += len(chunk)
                    if size > self.max_size:
                        raise BlobTooLarge(f"{blob_id} exceeds the limit of {self.max_size} bytes")
                    digest.update(chunk)
                    yield chunk
                    if progress:
                        progress(len(chunk))
        except httpx.HTTPError as exc:
            raise HubUnavailable(f"{self.url}: GET {blob_id}: {exc}") from exc
        if digest.hexdigest() != hex_digest:
            raise BlobHashMismatch(
                f"hub {self.url} sent {size} bytes for {blob_id} that hash to {ID_PREFIX}{digest.hexdigest()}"
            )

    # --- metadata -------------------------------------------------------------------------------

    def exists(self, blob_id: str) -> bool:
        parse_blob_id(blob_id)
        response = self._request("HEAD", f"/v1/blobs/{blob_id}", ok=(200, 404))
        return response.status_code == 200

    def list(self) -> list[BlobInfo]:
        answer = _json(self._request("GET", "/v1/blobs"))
        return [BlobInfo(b["id"], int(b["size"])) for b in answer.get("blobs", [])]

    def health(self) -> bool:
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    # --- plumbing -------------------------------------------------------------------------------

    def _request(self, method: str, path: str, ok: tuple[int, ...] = (200, 201), **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise HubUnavailable(f"{self.url}: {method} {path}: {exc}") from exc
        if response.status_code not in ok:
            _raise_for_error(response)
        return response


def _hash_file(file: BinaryIO) -> tuple[int, str]:
    """(size, sha256 hex) of an open binary file, read from where it stands to its end."""
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: file.read(CHUNK_SIZE), b""):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def _octet_stream(size: int) -> dict[str, str]:
    return {"Content-Type": "application/octet-stream", "Content-Length": str(size)}


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        doc = response.json()
    except ValueError as exc:
        raise HubUnavailable(f"{response.request.url}: HTTP {response.status_code}, not JSON") from exc
    if not isinstance(doc, dict):
        raise HubUnavailable(f"{response.request.url}: expected a JSON object")
    return doc


def _raise_for_error(response: httpx.Response) -> None:
    """Raise the HubError named by an `{"error": {"code", "message"}}` answer (or by the status)."""
    code, message = "", ""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    where = f"{response.request.method} {response.request.url}"
    if not code:
        if response.status_code == 404:
            raise BlobNotFound(f"{where}: not found")
        if response.status_code == 413:
            raise BlobTooLarge(f"{where}: too large")
        raise HubUnavailable(f"{where}: HTTP {response.status_code}")
    cls = ERRORS_BY_CODE.get(code, HubError)
    error_obj = cls(message or f"{where}: HTTP {response.status_code}")
    if cls is HubError:
        error_obj.code = code  # keep the hub's code (e.g. not_found for an unknown route)
    raise error_obj
