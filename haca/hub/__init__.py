"""The model hub: a content-addressed blob store (ids `sha256:<hex>`) served over HTTP.

`BlobStore` keeps the bytes, `create_app` serves them (FastAPI), `HubClient` uploads and downloads,
checking that every byte it hands back hashes to the id it asked for. Uploads are signed by an
uploader account (`haca.hub.auth`) and charged to its byte quota (`haca.hub.quota`); downloads are
anonymous.
"""

from haca.hub.errors import (
    BlobHashMismatch,
    BlobNotFound,
    BlobTooLarge,
    ContentMismatch,
    HubError,
    HubUnavailable,
    InvalidBlobId,
    QuotaExceeded,
    SignatureExpired,
    SignatureInvalid,
    SignatureRequired,
    UploaderNotAllowed,
    UploadForbidden,
    UploadTimeout,
    UploadUnauthorized,
)
from haca.hub.store import DEFAULT_MAX_SIZE, BlobInfo, BlobStore, parse_blob_id

__all__ = [
    "DEFAULT_MAX_SIZE",
    "BlobHashMismatch",
    "BlobInfo",
    "BlobNotFound",
    "BlobStore",
    "BlobTooLarge",
    "ContentMismatch",
    "HubError",
    "HubUnavailable",
    "InvalidBlobId",
    "QuotaExceeded",
    "SignatureExpired",
    "SignatureInvalid",
    "SignatureRequired",
    "UploadForbidden",
    "UploadTimeout",
    "UploadUnauthorized",
    "UploaderNotAllowed",
    "parse_blob_id",
]
