"""The hub's error hierarchy. Each class has a stable `code`; the HTTP API maps them to statuses once
(`haca.hub.api`), the client maps `{"error": {"code"}}` answers back to these classes, and the CLI
prints them as one line. A root of its own: the hub does not build on the client SDK."""

from __future__ import annotations


class HubError(Exception):
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


class UploadUnauthorized(HubError):
    """An upload without a valid, unexpired uploader signature (HTTP 401)."""

    code = "upload_unauthorized"


class SignatureRequired(UploadUnauthorized):
    """No upload signature headers (an anonymous upload), or a client without a key to sign one."""

    code = "upload_signature_required"


class SignatureInvalid(UploadUnauthorized):
    """Malformed headers, or a signature that does not recover to the named uploader."""

    code = "upload_signature_invalid"


class SignatureExpired(UploadUnauthorized):
    """The signed expiry has passed (or lies further ahead than the hub accepts)."""

    code = "upload_signature_expired"


class UploadForbidden(HubError):
    """A validly signed upload by an account that may not store these bytes (HTTP 403)."""

    code = "upload_forbidden"


class UploaderNotAllowed(UploadForbidden):
    """The signer is not one of the hub's uploaders."""

    code = "uploader_not_allowed"


class QuotaExceeded(UploadForbidden):
    """The blob would take the uploader past its byte quota."""

    code = "upload_quota_exceeded"


class ContentMismatch(HubError):
    """The uploaded bytes are not the ones the signature names (sha256 or size) (HTTP 400)."""

    code = "upload_content_mismatch"


class UploadTimeout(HubError):
    """The body did not arrive within the upload's deadline (HTTP 408): a slow sender may not hold
    a connection, its reservation and a temporary file open for ever."""

    code = "upload_timeout"


ERRORS_BY_CODE: dict[str, type[HubError]] = {
    cls.code: cls
    for cls in (
        HubError,
        InvalidBlobId,
        BlobNotFound,
        BlobTooLarge,
        BlobHashMismatch,
        HubUnavailable,
        UploadUnauthorized,
        SignatureRequired,
        SignatureInvalid,
        SignatureExpired,
        UploadForbidden,
        UploaderNotAllowed,
        QuotaExceeded,
        ContentMismatch,
        UploadTimeout,
    )
}
