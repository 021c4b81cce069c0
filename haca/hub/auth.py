"""Signed hub uploads. An upload carries an EIP-712 `HubUpload` signature (HACA domain) by the
uploader's account key over what it stores: the blob's sha256, its size and an expiry (unix
seconds). The hub checks it before it reads a byte of the body, then checks that the bytes it
receives are exactly the ones signed. A replayed signature can only store the same bytes again,
which are content-addressed (and cost nothing the second time).

    X-HACA-Uploader            0x address of the signer
    X-HACA-Upload-Signature    0x + 65 bytes r‖s‖v
    X-HACA-Upload-Expiry       unix seconds after which the hub refuses the signature
    X-HACA-Content-Sha256      64 lower-case hex digits: the sha256 of the body
    X-HACA-Upload-Size         the body's length in bytes
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from haca.crypto.keys import PrivateKey, SignatureError, normalize_address
from haca.hub.errors import SignatureExpired, SignatureInvalid, SignatureRequired
from haca.types import eip712

UPLOADER_HEADER = "X-HACA-Uploader"
SIGNATURE_HEADER = "X-HACA-Upload-Signature"
EXPIRY_HEADER = "X-HACA-Upload-Expiry"
SHA256_HEADER = "X-HACA-Content-Sha256"
SIZE_HEADER = "X-HACA-Upload-Size"
UPLOAD_HEADERS = (UPLOADER_HEADER, SIGNATURE_HEADER, EXPIRY_HEADER, SHA256_HEADER, SIZE_HEADER)

UPLOAD_PRIMARY = "HubUpload"
UPLOAD_FIELDS = [("uploader", "address"), ("sha256", "bytes32"), ("size", "uint64"), ("expiry", "uint64")]

DEFAULT_UPLOAD_TTL = 600  # seconds a client's signature stays valid (it only has to hold when the upload starts)
MAX_UPLOAD_TTL = 24 * 3600  # the hub refuses signatures that expire further ahead than this

_HEX64 = re.compile(r"[0-9a-f]{64}")
_SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")
_UINT = re.compile(r"[0-9]{1,20}")


@dataclass(frozen=True)
class UploadGrant:
    """What an upload signature allows: `uploader` may store `size` bytes hashing to `sha256`."""

    uploader: str
    sha256: str
    size: int
    expiry: int

    def message(self) -> dict[str, Any]:
        return {
            "uploader": self.uploader,
            "sha256": bytes.fromhex(self.sha256),
            "size": self.size,
            "expiry": self.expiry,
        }

    def sign(self, key: PrivateKey) -> bytes:
        return eip712.sign(key, UPLOAD_PRIMARY, UPLOAD_FIELDS, self.message())

    def signer(self, signature: bytes) -> str:
        return eip712.signer_of(UPLOAD_PRIMARY, UPLOAD_FIELDS, self.message(), signature)


def upload_headers(
    key: PrivateKey, sha256_hex: str, size: int, expiry: int | None = None, ttl: int = DEFAULT_UPLOAD_TTL
) -> dict[str, str]:
    """The headers that authorise `key`'s account to upload these bytes (expiring in `ttl` s)."""
    grant = UploadGrant(key.address, sha256_hex, size, int(time.time()) + ttl if expiry is None else expiry)
    return {
        UPLOADER_HEADER: grant.uploader,
        SIGNATURE_HEADER: "0x" + grant.sign(key).hex(),
        EXPIRY_HEADER: str(grant.expiry),
        SHA256_HEADER: grant.sha256,
        SIZE_HEADER: str(grant.size),
    }


def verify_upload(headers: Mapping[str, str], now: float) -> UploadGrant:
    """The grant the headers carry, once its signature recovers to the named uploader and it has not
    expired. SignatureRequired without any of them, SignatureInvalid when malformed or signed by
    someone else, SignatureExpired past the expiry."""
    values = {name: headers.get(name) for name in UPLOAD_HEADERS}
    if all(value is None for value in values.values()):
        raise SignatureRequired(
            f"uploads must be signed by an uploader account: send {', '.join(UPLOAD_HEADERS)} (HACA HubUpload)"
        )
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise SignatureInvalid(f"incomplete upload signature: missing {', '.join(missing)}")
    uploader, signature, expiry, sha256, size = (str(values[name]).strip() for name in UPLOAD_HEADERS)
    try:
        uploader = normalize_address(uploader)
    except ValueError as exc:
        raise SignatureInvalid(f"{UPLOADER_HEADER}: {exc}") from None
    if not _SIGNATURE.fullmatch(signature):
        raise SignatureInvalid(f"{SIGNATURE_HEADER}: expected 0x and 130 hex digits (65 bytes)")
    if not _HEX64.fullmatch(sha256):
        raise SignatureInvalid(f"{SHA256_HEADER}: expected 64 lower-case hex digits")
    for name, text in ((EXPIRY_HEADER, expiry), (SIZE_HEADER, size)):
        if not _UINT.fullmatch(text) or int(text) >= 1 << 64:
            raise SignatureInvalid(f"{name}: expected an unsigned 64-bit integer, got {text[:40]!r}")
    grant = UploadGrant(uploader, sha256, int(size), int(expiry))
    try:
        signer = grant.signer(bytes.fromhex(signature[2:]))
    except SignatureError as exc:
        raise SignatureInvalid(f"{SIGNATURE_HEADER}: {exc}") from None
    if signer != uploader:
        raise SignatureInvalid(f"the upload signature is not {uploader}'s (it recovers to {signer})")
    if grant.expiry <= now:
        raise SignatureExpired(f"the upload signature expired at {grant.expiry} (now {int(now)}): sign a fresh one")
    if grant.expiry > now + MAX_UPLOAD_TTL:
        raise SignatureInvalid(f"the upload signature expires more than {MAX_UPLOAD_TTL} s ahead ({grant.expiry})")
    return grant
