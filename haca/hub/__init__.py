"""The model hub: a content-addressed blob store (ids `sha256:<hex>`) served over HTTP.

`BlobStore` keeps the bytes, `create_app` serves them (FastAPI), `HubClient` uploads and downloads,
checking that every byte it hands back hashes to the id it asked for.
"""

from haca.hub.errors import BlobHashMismatch, BlobNotFound, BlobTooLarge, HubError, HubUnavailable, InvalidBlobId
from haca.hub.store import DEFAULT_MAX_SIZE, BlobInfo, BlobStore, parse_blob_id

__all__ = [
    "DEFAULT_MAX_SIZE",
    "BlobHashMismatch",
    "BlobInfo",
    "BlobNotFound",
    "BlobStore",
    "BlobTooLarge",
    "HubError",
    "HubUnavailable",
    "InvalidBlobId",
    "parse_blob_id",
]
