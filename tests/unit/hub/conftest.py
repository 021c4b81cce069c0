"""A real hub (uvicorn on a free loopback port, in a thread) over a temporary store, with one
uploader account."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from haca.crypto.keys import PrivateKey
from haca.hub.api import create_app
from haca.hub.quota import UploadLedger
from haca.hub.store import BlobStore
from tests.unit.hub.server import serve

SMALL_LIMIT = 64 * 1024
UPLOADER = PrivateKey.from_seed("hub tests: the uploader")
STRANGER = PrivateKey.from_seed("hub tests: not an uploader")


@dataclass
class RunningHub:
    url: str
    store: BlobStore
    ledger: UploadLedger
    key: PrivateKey


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[RunningHub]:
    """A hub whose store refuses blobs over SMALL_LIMIT bytes; UPLOADER may store 10x that."""
    store = BlobStore(tmp_path / "hub", max_size=SMALL_LIMIT)
    ledger = UploadLedger(store.root, {UPLOADER.address: 10 * SMALL_LIMIT})
    with serve(create_app(store, ledger)) as url:
        yield RunningHub(url, store, ledger, UPLOADER)
