"""The hub's error hierarchy. Each class has a stable `code`; the HTTP API maps them to statuses once
(`haca.hub.api`), the client maps `{"error": {"code"}}` answers back to these classes, and the CLI
prints them as one line (they are `HacaError`s)."""

from __future__ import annotations

from haca.client.errors import HacaError


class HubError(HacaError):
    code = "hub_error"


class InvalidBlobId(HubError):
    """Not `sha256:` followed by 64 lower-case hex digits."""

    code = "invalid_blob_id"


class BlobNotFound(HubError):
    code = "blob_not_found"


class BlobTooLarge(HubError):
    code = "blob_too_large"


class BlobHashMismatch(HubError):
    """Bytes that do not hash to the id they were asked for (or uploaded as)."""

    code = "blob_hash_mismatch"


class HubUnavailable(HubError):
    """The hub could not be reached, or answered something that is not the hub's protocol."""

    code = "hub_unavailable"


ERRORS_BY_CODE: dict[str, type[HubError]] = {
    cls.code: cls for cls in (HubError, InvalidBlobId, BlobNotFound, BlobTooLarge, BlobHashMismatch, HubUnavailable)
}
