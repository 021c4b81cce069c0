"""One fixture starts a real 4-validator CometBFT devnet per test module, on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import haca.types.messages  # noqa: F401
from haca.client.chain import ChainClient
from haca.client.config import ClientConfig, KeyStore, connect
from haca.devnet.network import Devnet, up


@dataclass
class DevnetHandle:
    home: Path
    net: Devnet
    config: ClientConfig
    keys: KeyStore
    client: ChainClient

    def clients(self) -> list[ChainClient]:
        """One client per validator RPC."""
        return [ChainClient([url], self.config.chain_id, self.config.validators) for url in self.config.rpc]

    def genesis(self) -> dict:
        node = self.net.load().nodes[0]
        return json.loads((Path(node.home) / "cometbft" / "config" / "genesis.json").read_text())


def _devnet(
    tmp_path_factory: pytest.TempPathFactory, inference: bool, timeout_commit: str = "300ms"
) -> Iterator[DevnetHandle]:
    home = tmp_path_factory.mktemp("devnet")
    net = up(home, validators=4, timeout_commit=timeout_commit, inference=inference)
    config = ClientConfig.load(home)
    client = connect(config)
    try:
        yield DevnetHandle(home, net, config, KeyStore(home), client)
    finally:
        client.close()
        net.stop()


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevnetHandle]:
    """Validators only."""
    yield from _devnet(tmp_path_factory, inference=False)


@pytest.fixture(scope="module")
def fast_devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevnetHandle]:
    """Validators only, with short blocks: for tests that need a long chain (state sync)."""
    yield from _devnet(tmp_path_factory, inference=False, timeout_commit="100ms")


@pytest.fixture(scope="module")
def inference_devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevnetHandle]:
    """Validators, the model hub with the example models registered, and inference node `node0`."""
    yield from _devnet(tmp_path_factory, inference=True)
