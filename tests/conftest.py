"""Shared fixtures. Integration tests start a real CometBFT devnet through `devnet_home`."""

import itertools
from collections.abc import Iterator

import pytest

from haca.devnet.postgres import PostgresServer, PostgresUnavailable

_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL (Debian's, installed by `make test`) on a loopback port, for this test process."""
    server = PostgresServer.temporary()
    try:
        server.start()
    except PostgresUnavailable as exc:
        server.remove()
        pytest.skip(f"PostgreSQL cannot run here, so the node scale-out tests cannot: {exc}")
    yield server
    server.remove()


@pytest.fixture
def pg_dsn(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the test PostgreSQL."""
    return postgres_server.create_database(f"t{next(_databases)}")
