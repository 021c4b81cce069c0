"""The hub's HTTP API (FastAPI) over a `BlobStore`.

    POST /v1/blobs             raw body (application/octet-stream), streamed -> 201 {"id", "size"};
                               signed by an uploader (headers in `haca.hub.auth`), within its quota
    GET  /v1/blobs/{id}        the bytes (application/octet-stream, header X-Content-Sha256: <hex>)
    HEAD /v1/blobs/{id}        the same headers, no body
    GET  /v1/blobs             {"blobs": [{"id", "size"}]}
    GET  /healthz              {"status": "ok"}

Every error is JSON `{"error": {"code", "message"}}`: 400 bad id or request, or bytes other than the
signed ones; 401 an upload without a valid, unexpired signature; 403 a signer that is not an uploader
or is over its quota; 404 unknown blob or route, 405 wrong method, 408 a body that did not arrive
within its deadline, 413 too large, 415 not octet-stream, 422 request validation. Downloads need no
signature.

The signature is checked, and the quota reserved, before a byte of the body is read; the body is
hashed as it streams and stored only if it is exactly the signed sha256 and size. The whole body
must arrive within `upload_deadline(size)` seconds (a base plus the time at a minimum rate), like
the node's BODY_DEADLINE_S: a sender trickling bytes cannot hold a connection, its quota
reservation and a temporary file for ever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from haca.hub.auth import UploadGrant, verify_upload
from haca.hub.errors import (
    BlobHashMismatch,
    BlobNotFound,
    BlobTooLarge,
    ContentMismatch,
    HubError,
    InvalidBlobId,
    UploadForbidden,
    UploadTimeout,
    UploadUnauthorized,
)
from haca.hub.quota import UploadLedger
from haca.hub.store import ID_PREFIX, BlobStore, BlobWriter, parse_blob_id

CONTENT_SHA256_HEADER = "X-Content-Sha256"
UPLOAD_MEDIA_TYPES = ("application/octet-stream", "")
BODY_DEADLINE_S = 30.0  # any upload's body gets this long, plus its size at MIN_UPLOAD_RATE
MIN_UPLOAD_RATE = 1 << 20  # bytes/s: a 2 GiB model must arrive within ~35 minutes

HUB_ERROR_STATUS: dict[type[HubError], int] = {
    InvalidBlobId: 400,
    BlobNotFound: 404,
    BlobTooLarge: 413,
    BlobHashMismatch: 400,
    ContentMismatch: 400,
    UploadUnauthorized: 401,
    UploadForbidden: 403,
    UploadTimeout: 408,
}
UPLOAD_AUTH_SCHEME = 'HACA-Upload realm="hub"'  # WWW-Authenticate of a 401: sign a HubUpload (haca.hub.auth)
HTTP_STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "blob_too_large",
    415: "unsupported_media_type",
}


class UnsupportedMediaType(HubError):
    code = "unsupported_media_type"


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def hub_error_status(exc: HubError) -> int:
    if isinstance(exc, UnsupportedMediaType):
        return 415
    for cls in type(exc).__mro__:
        if cls in HUB_ERROR_STATUS:
            return HUB_ERROR_STATUS[cls]
    return 400


def check_upload_headers(headers: Mapping[str, str], grant: UploadGrant, max_size: int) -> None:
    """An upload's Content-Type and Content-Length against what `grant` signs, before any body byte:
    UnsupportedMediaType (415), a 400 for a Content-Length that is not a decimal number,
    ContentMismatch (400) for one that is not the signed size, BlobTooLarge (413)."""
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in UPLOAD_MEDIA_TYPES:
        raise UnsupportedMediaType(f"upload the raw bytes as application/octet-stream, not {media_type!r}")
    length = headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):  # str.isdigit() is also true of "²", which int() refuses
            raise StarletteHTTPException(400, f"bad Content-Length {length[:40]!r}")
        if len(length) > 20 or int(length) != grant.size:  # (int() refuses more than 4300 digits)
            raise ContentMismatch(f"Content-Length {length[:40]} is not the signed size {grant.size}")
    if grant.size > max_size:
        raise BlobTooLarge(f"blob of {grant.size} bytes exceeds the size limit of {max_size} bytes")


def upload_deadline(size: int, base_s: float = BODY_DEADLINE_S, min_rate: int = MIN_UPLOAD_RATE) -> float:
    """Seconds the body of a `size`-byte upload may take in all."""
    return base_s + size / min_rate


def create_app(
    store: BlobStore,
    ledger: UploadLedger | None = None,
    clock: Callable[[], float] = time.time,
    body_deadline_s: float = BODY_DEADLINE_S,
    min_upload_rate: int = MIN_UPLOAD_RATE,
) -> FastAPI:
    """The hub over `store`. `ledger` holds the uploaders and their quotas (None: nobody may
    upload, a read-only hub); `clock` gives the time that upload signatures expire against;
    an upload's body must arrive within `body_deadline_s` + size / `min_upload_rate` seconds."""
    ledger = ledger if ledger is not None else UploadLedger(store.root, {})
    app = FastAPI(title="HACA model hub", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.state.ledger = ledger

    # --- errors: mapped once, always JSON ---------------------------------------------------

    @app.exception_handler(HubError)
    async def on_hub_error(request: Request, exc: HubError) -> JSONResponse:
        headers = {"WWW-Authenticate": UPLOAD_AUTH_SCHEME} if isinstance(exc, UploadUnauthorized) else None
        return error_response(hub_error_status(exc), exc.code, str(exc) or type(exc).__name__, headers)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}" for err in exc.errors()
        )
        return error_response(422, "invalid_request", details or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_STATUS_CODES.get(exc.status_code, "http_error")
        message = str(exc.detail) if exc.detail else code
        if exc.status_code == 404 and exc.detail == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return error_response(exc.status_code, code, message, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, "internal", f"{type(exc).__name__}: {exc}")

    # --- routes -------------------------------------------------------------------------------

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.post("/v1/blobs", status_code=201)
    async def upload(request: Request) -> JSONResponse:
        grant = verify_upload(request.headers, clock())  # 401 unless signed, before any body byte
        ledger.require_uploader(grant.uploader)  # 403
        check_upload_headers(request.headers, grant, store.max_size)
        stored = await run_in_threadpool(store.exists, ID_PREFIX + grant.sha256)
        reservation = await run_in_threadpool(ledger.reserve, grant.uploader, grant.sha256, grant.size, stored)
        writer: BlobWriter | None = None
        try:
            writer = await run_in_threadpool(store.writer)
            deadline = upload_deadline(grant.size, body_deadline_s, min_upload_rate)
            try:
                async with asyncio.timeout(deadline):
                    async for chunk in request.stream():
                        if chunk:
                            if writer.size + len(chunk) > grant.size:
                                raise ContentMismatch(f"the body is longer than the signed {grant.size} bytes")
                            writer.write(chunk)
            except TimeoutError:
                raise UploadTimeout(
                    f"the body ({grant.size} bytes) did not arrive within {deadline:.0f} s "
                    f"({writer.size} bytes came): upload at {min_upload_rate} bytes/s or faster"
                ) from None
            if writer.size != grant.size or writer.hexdigest != grant.sha256:
                raise ContentMismatch(
                    f"the body ({writer.size} bytes, sha256 {writer.hexdigest}) is not the signed one "
                    f"({grant.size} bytes, sha256 {grant.sha256})"
                )
            info = await run_in_threadpool(ledger.commit, reservation, writer)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            reservation.release()
        return JSONResponse(info.to_json(), status_code=201)

    @app.get("/v1/blobs")
    def list_blobs() -> dict[str, Any]:
        return {"blobs": [b.to_json() for b in store.list()]}

    @app.api_route("/v1/blobs/{blob_id}", methods=["GET", "HEAD"])
    def download(blob_id: str) -> Response:
        hex_digest = parse_blob_id(blob_id)
        path = store.get_path(blob_id)
        return FileResponse(
            path,
            media_type="application/octet-stream",
            headers={CONTENT_SHA256_HEADER: hex_digest},
            filename=None,
        )

    return app
