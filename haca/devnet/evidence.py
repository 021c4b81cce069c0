"""Misbehaviour on a devnet, for real: a validator run twice with one consensus key.

`start_twin` starts a second supervisor (app + CometBFT) for a running devnet validator: a new
home holding a copy of its config and priv_validator_key.json, a fresh node key, empty block
store and app state, and a reset priv_validator_state.json (so nothing stops it from signing
what the original already signed), its own ports and the other validators as peers. It block-
syncs from genesis, then votes in consensus alongside the original.

Twins with the same view sign the same votes, which is not a double sign. So the twin waits
almost no time for a proposal (`timeout_propose`): it prevotes nil at each height where the
original, having received the proposal, prevotes the block. Two prevotes of one key for one
height and round with different block ids: the other validators' consensus reports them to
their evidence pool, which turns them into DuplicateVoteEvidence for a later block.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from haca.chain.home import ValidatorHome
from haca.chain.supervisor import configure
from haca.devnet.network import Devnet, DevnetError, rpc_height
from haca.devnet.processes import free_ports, process_alive, signal_group, spawn, wait_group_gone

RESET_SIGN_STATE = {"height": "0", "round": 0, "step": 0}  # priv_validator_state.json of a new key


@dataclass
class Twin:
    """A second instance of devnet validator `of`, sharing its consensus key."""

    of: str
    home: Path
    rpc_port: int
    p2p_port: int
    pid: int = 0

    @property
    def rpc(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    def alive(self) -> bool:
        return process_alive(self.pid)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the twin's process group (supervisor, app, CometBFT); SIGKILL after `timeout`."""
        signal_group(self.pid, signal.SIGTERM)
        wait_group_gone(self.pid, time.monotonic() + timeout)
        self.pid = 0


def prepare_twin(net: Devnet, name: str, timeout_propose: str = "1ms") -> Twin:
    """Make the twin's home next to the devnet's validators (HOME/devnet/<name>-twin)."""
    state = net.load()
    original = state.node(name)
    source = ValidatorHome(Path(original.home))
    home = ValidatorHome(net.dir / f"{name}-twin")
    if home.root.exists():
        shutil.rmtree(home.root)
    (home.cometbft / "data").mkdir(parents=True)
    shutil.copytree(source.cometbft / "config", home.cometbft / "config")
    (home.cometbft / "config" / "node_key.json").unlink()  # CometBFT makes a fresh one at start
    (home.cometbft / "config" / "addrbook.json").unlink(missing_ok=True)
    (home.cometbft / "data" / "priv_validator_state.json").write_text(json.dumps(RESET_SIGN_STATE, indent=2))
    if source.srs_dir.exists():
        shutil.copytree(source.srs_dir, home.srs_dir)
    rpc_port, p2p_port = free_ports(2)
    peers = ",".join(f"{n.node_id}@127.0.0.1:{n.p2p_port}" for n in state.nodes if n.name != name)
    configure(
        home,
        {
            ("", "moniker"): f"{name}-twin",
            ("", "proxy_app"): f"unix://{home.socket_path}",
            ("rpc", "laddr"): f"tcp://127.0.0.1:{rpc_port}",
            ("p2p", "laddr"): f"tcp://127.0.0.1:{p2p_port}",
            ("p2p", "persistent_peers"): peers,
            ("consensus", "timeout_propose"): timeout_propose,
            ("consensus", "timeout_propose_delta"): "1ms",
        },
    )
    return Twin(name, home.root, rpc_port, p2p_port)


def start_twin(net: Devnet, name: str, timeout_propose: str = "1ms", ready_timeout: float = 120.0) -> Twin:
    """Start a twin of validator `name`; return once its RPC answers (it may still be syncing).
    The caller stops it (`Twin.stop`)."""
    twin = prepare_twin(net, name, timeout_propose)
    twin.pid = spawn([sys.executable, "-m", "haca.chain.supervisor", str(twin.home)], twin.log_dir / "supervisor.log")
    deadline = time.monotonic() + ready_timeout
    while rpc_height(twin.rpc) < 0:
        if not twin.alive() or time.monotonic() > deadline:
            twin.stop()
            raise DevnetError(f"the twin of {name} did not start; see {twin.log_dir}/")
        time.sleep(0.2)
    return twin
