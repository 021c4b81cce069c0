"""Fuzz what the hub reads of an upload before its body: `haca.hub.auth.verify_upload` (the five
X-HACA-* signature headers, the EIP-712 HubUpload signature recovered from them), then
`haca.hub.api.check_upload_headers` (Content-Type and Content-Length against the signed grant), and
the blob ids its routes take (`haca.hub.store.parse_blob_id`). Anything is either accepted or
refused with a HubError (SignatureRequired, SignatureInvalid, SignatureExpired: 401; InvalidBlobId,
ContentMismatch: 400; UnsupportedMediaType: 415; BlobTooLarge: 413) or Starlette's HTTPException
(400, a Content-Length that is not a number); an accepted grant was signed by the uploader it names.

The first byte picks what the rest is (seeds: a validly signed upload at a fixed time):
  0  the five headers as JSON (a name -> value object; values not strings are left out);
  1  one header's value (the next byte picks which), the others as signed;
  2  a blob id;
  3  Content-Type, a NUL, then Content-Length (latin-1, as HTTP headers are decoded) for the grant.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import atheris
import fuzzlib

with atheris.instrument_imports(include=["haca"]):
    from starlette.exceptions import HTTPException

    from haca.crypto.keys import PrivateKey
    from haca.hub.api import check_upload_headers
    from haca.hub.auth import UPLOAD_HEADERS, UploadGrant, upload_headers, verify_upload
    from haca.hub.errors import HubError
    from haca.hub.store import parse_blob_id

NOW = 1_780_000_000.0
UPLOADER = PrivateKey.from_seed("fuzz-uploader")
SHA256 = "5e" * 32
HEADERS = upload_headers(UPLOADER, SHA256, 1234, expiry=int(NOW) + 600)
GRANT = verify_upload(HEADERS, NOW)
MAX_SIZE = 1 << 20


@atheris.instrument_func
def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 4, data[1:]
    text = rest.decode("utf-8", errors="replace")
    try:
        if mode == 2:
            assert len(parse_blob_id(text)) == 64
            return
        if mode == 3:
            content_type, _, length = rest.decode("latin-1").partition("\x00")
            check_upload_headers({"content-type": content_type, "content-length": length}, GRANT, MAX_SIZE)
            assert int(length) == GRANT.size <= MAX_SIZE
            return
        if mode == 1:
            if not rest:
                return
            headers = {**HEADERS, UPLOAD_HEADERS[rest[0] % len(UPLOAD_HEADERS)]: rest[1:].decode("utf-8", "replace")}
        else:
            try:
                doc = json.loads(text)
            except (ValueError, RecursionError):
                return
            if not isinstance(doc, dict):
                return
            headers = {str(k): v for k, v in doc.items() if isinstance(v, str)}
        grant = verify_upload(headers, NOW)
    except (HubError, HTTPException):
        return
    assert isinstance(grant, UploadGrant) and grant.expiry > NOW
    assert grant.signer(bytes.fromhex(headers["X-HACA-Upload-Signature"].strip()[2:])) == grant.uploader


def seeds() -> Iterator[bytes]:
    yield b"\x00" + json.dumps(HEADERS).encode()
    for i, name in enumerate(UPLOAD_HEADERS):
        yield b"\x01" + bytes([i]) + HEADERS[name].encode()
    yield b"\x02" + f"sha256:{SHA256}".encode()
    yield b"\x03application/octet-stream\x001234"
    yield b"\x03application/octet-stream; charset=binary\x00 1234"
    yield "\x03\x00\u00b2".encode("latin-1")  # a superscript two: str.isdigit() says yes, int() says no


if __name__ == "__main__":
    fuzzlib.main("hub_upload", test_one_input, seeds)
