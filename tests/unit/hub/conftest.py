"""A real hub (uvicorn on a free loopback port, in a thread) over a temporary store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from haca.hub.api import create_app
from haca.hub.store import BlobStore
from tests.unit.hub.server import serve

SMALL_LIMIT = 64 * 1024


@dataclass
class RunningHub:
    url: str
    store: BlobStore


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[RunningHub]:
    """A hub whose store refuses blobs over SMALL_LIMIT bytes."""
    store = BlobStore(tmp_path / "hub", max_size=SMALL_LIMIT)
    with serve(create_app(store)) as url:
        yield RunningHub(url, store)
