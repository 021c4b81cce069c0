"""Three operators make a network from nothing with the CLI (issue 24, part 2), as README's
"Running a network" walks through, each in its own home on loopback: a draft genesis, three
`validator init` + `validator gentx`, `network collect`, the genesis and peers copied into each
home, three `validator run`; the chain makes blocks signed by the three, app hashes agree."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from haca.chain.home import ValidatorHome
from haca.chain.supervisor import configure
from haca.client.config import KeyStore
from haca.client.rpc import CometRpc
from haca.crypto.keys import PrivateKey
from haca.devnet.processes import free_ports, signal_group, spawn, wait_group_gone
from tests.integration.helpers import wait_height

pytestmark = [pytest.mark.devnet, pytest.mark.slow]
UNIT = 10**18


def cli(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "haca.cli.main", *args, "--json"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_three_operators_assemble_a_genesis_and_their_validators_make_blocks(tmp_path: Path):
    operators = [PrivateKey.from_seed(f"network operator {i}") for i in range(3)]
    keys = tmp_path / "keys"
    store = KeyStore(keys)
    for i, key in enumerate(operators):
        store.add(f"op{i}", key)
    draft = tmp_path / "draft.json"
    accounts = [arg for k in operators for arg in ("--account", f"{k.address}={100 * UNIT}")]
    cli("network", "init", "--chain-id", "haca-three", "--out", str(draft), *accounts,
        "--authority", operators[0].address)  # fmt: skip

    ports = free_ports(6)
    homes = [tmp_path / f"machine{i}" / "validator" for i in range(3)]
    gentxs = []
    for i, home in enumerate(homes):
        cli("validator", "init", "--home", str(home), "--moniker", f"op{i}")
        gentx = tmp_path / f"gentx{i}.json"
        cli("validator", "gentx", "--validator-home", str(home), "--draft", str(draft), "--bond", str((i + 1) * UNIT),
            "--p2p", f"127.0.0.1:{ports[2 * i + 1]}", "--moniker", f"op{i}", "--out", str(gentx),
            "--from", f"op{i}", "--home", str(keys))  # fmt: skip
        gentxs += ["--gentx", str(gentx)]
    genesis = tmp_path / "genesis.json"
    collected = cli("network", "collect", "--draft", str(draft), *gentxs, "--out", str(genesis))
    peers = collected["persistent_peers"].split(",")
    assert len(peers) == 3

    pids = []
    try:
        for i, home in enumerate(homes):
            vh = ValidatorHome(home)
            vh.genesis.write_text(genesis.read_text())
            configure(
                vh,
                {
                    ("rpc", "laddr"): f"tcp://127.0.0.1:{ports[2 * i]}",
                    ("p2p", "laddr"): f"tcp://127.0.0.1:{ports[2 * i + 1]}",
                    ("p2p", "persistent_peers"): ",".join(p for j, p in enumerate(peers) if j != i),
                    ("p2p", "addr_book_strict"): False,
                    ("p2p", "allow_duplicate_ip"): True,
                    ("consensus", "timeout_commit"): "300ms",
                },
            )
            pids.append(spawn([sys.executable, "-m", "haca.chain.supervisor", str(home)], home / "supervisor.log"))
        rpcs = [CometRpc(f"http://127.0.0.1:{ports[2 * i]}") for i in range(3)]
        for rpc in rpcs:
            wait_height(rpc, 5, timeout=120)
        validators = {v["voting_power"] for v in rpcs[0].validators(5)}
        assert validators == {"1", "2", "3"}  # power from each operator's bond
        hashes = {r.commit(5)["signed_header"]["header"]["app_hash"] for r in rpcs}
        assert len(hashes) == 1
        signed = [s for s in rpcs[1].commit(5)["signed_header"]["commit"]["signatures"] if s["block_id_flag"] == 2]
        assert len(signed) >= 2  # more than 2/3 of 6 power needs at least two of the three
    finally:
        for pid in pids:
            signal_group(pid, signal.SIGTERM)
        for pid in pids:
            wait_group_gone(pid, time.monotonic() + 20)
