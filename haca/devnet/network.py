"""A local multi-validator devnet on loopback, built from `init_validator` and `run_validator`.

HOME/config.json and HOME/keys/ are the client home; HOME/devnet/ holds the network:
devnet.json (chain id, ports, pids) and one validator home per node.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from haca.chain.genesis import AppGenesis, GenesisAccount
from haca.client.config import ClientConfig, KeyStore
from haca.devnet.accounts import DEV_BALANCE, dev_keys
from haca.devnet.layout import ValidatorHome
from haca.devnet.validator import ValidatorError, configure, init_validator


class DevnetError(RuntimeError):
    pass


@dataclass
class NodeRecord:
    name: str
    home: str
    rpc_port: int
    p2p_port: int
    node_id: str
    pid: int = 0

    @property
    def rpc(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"


@dataclass
class DevnetState:
    chain_id: str
    nodes: list[NodeRecord] = field(default_factory=list)

    def node(self, name: str) -> NodeRecord:
        for node in self.nodes:
            if node.name == name:
                return node
        raise DevnetError(f"no node {name!r}; nodes: {', '.join(n.name for n in self.nodes)}")


class Devnet:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.dir = home / "devnet"
        self.state_file = self.dir / "devnet.json"

    # --- persistent description -----------------------------------------------------------------

    def exists(self) -> bool:
        return self.state_file.exists()

    def load(self) -> DevnetState:
        if not self.exists():
            raise DevnetError(f"no devnet at {self.home}: run 'haca devnet up --home {self.home}'")
        doc = json.loads(self.state_file.read_text())
        return DevnetState(doc["chain_id"], [NodeRecord(**n) for n in doc["nodes"]])

    def save(self, state: DevnetState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
        tmp.replace(self.state_file)

    # --- lifecycle --------------------------------------------------------------------------------

    def create(self, validators: int, chain_id: str, timeout_commit: str) -> DevnetState:
        if validators < 1:
            raise DevnetError("a devnet needs at least one validator")
        self.dir.mkdir(parents=True, exist_ok=True)
        ports = free_ports(2 * validators)
        state = DevnetState(chain_id)
        identities = []
        for i in range(validators):
            root = self.dir / f"val{i}"
            ident = init_validator(root, f"val{i}")
            identities.append(ident)
            state.nodes.append(NodeRecord(f"val{i}", str(root), ports[2 * i], ports[2 * i + 1], ident.node_id))
        genesis = self._genesis(chain_id, identities)
        for node in state.nodes:
            home = ValidatorHome(Path(node.home))
            home.genesis.write_text(json.dumps(genesis, indent=2))
            peers = ",".join(f"{n.node_id}@127.0.0.1:{n.p2p_port}" for n in state.nodes if n is not node)
            configure(
                home,
                {
                    ("rpc", "laddr"): f"tcp://127.0.0.1:{node.rpc_port}",
                    ("p2p", "laddr"): f"tcp://127.0.0.1:{node.p2p_port}",
                    ("p2p", "persistent_peers"): peers,
                    ("p2p", "addr_book_strict"): False,
                    ("p2p", "allow_duplicate_ip"): True,
                    ("consensus", "timeout_commit"): timeout_commit,
                    ("", "log_level"): "state:info,*:error",
                },
            )
        self.save(state)
        self._write_client_home(state)
        return state

    def _genesis(self, chain_id: str, identities: list[Any]) -> dict[str, Any]:
        template = json.loads(ValidatorHome(self.dir / "val0").genesis.read_text())
        accounts = tuple(GenesisAccount(key.address, DEV_BALANCE) for _, key in dev_keys())
        template.update(
            genesis_time=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            chain_id=chain_id,
            initial_height="1",
            validators=[
                {"address": v.address, "pub_key": v.pub_key, "power": "10", "name": v.moniker} for v in identities
            ],
            app_hash="",
            app_state=AppGenesis(accounts=accounts).to_json(),
        )
        return template

    def _write_client_home(self, state: DevnetState) -> None:
        store = KeyStore(self.home)
        for name, key in dev_keys():
            store.add(name, key, overwrite=True)
        genesis = json.loads(ValidatorHome(Path(state.nodes[0].home)).genesis.read_text())
        trusted = [
            {"address": v["address"], "pub_key": v["pub_key"], "voting_power": v["power"]}
            for v in genesis["validators"]
        ]
        config = ClientConfig(state.chain_id, [n.rpc for n in state.nodes], default_key="dev0", validators=trusted)
        config.save(self.home)

    def start(self, name: str | None = None) -> None:
        state = self.load()
        for node in state.nodes:
            if (name is None or node.name == name) and not process_alive(node.pid):
                log = open(Path(node.home) / "supervisor.log", "ab")  # noqa: SIM115 - handed to the child
                proc = subprocess.Popen(
                    [sys.executable, "-m", "haca.devnet.validator", node.home],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
                log.close()
                node.pid = proc.pid
        self.save(state)

    def stop(self, name: str | None = None, kill: bool = False, timeout: float = 20.0) -> None:
        """SIGTERM (or SIGKILL with `kill`) each node's process group: supervisor, app, CometBFT."""
        state = self.load()
        targets = [n for n in state.nodes if name is None or n.name == name]
        if name is not None and not targets:
            state.node(name)
        sig = signal.SIGKILL if kill else signal.SIGTERM
        for node in targets:
            if node.pid and process_alive(node.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.pid, sig)
        deadline = time.monotonic() + timeout
        for node in targets:
            while node.pid and group_alive(node.pid):
                if time.monotonic() > deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(node.pid, signal.SIGKILL)
                reap(node.pid)
                time.sleep(0.05)
            node.pid = 0
        self.save(state)

    def wait_ready(self, min_height: int = 2, timeout: float = 90.0, name: str | None = None) -> None:
        state = self.load()
        deadline = time.monotonic() + timeout
        for node in state.nodes:
            if name is not None and node.name != name:
                continue
            while (height := rpc_height(node.rpc)) < min_height:
                if not process_alive(node.pid):
                    raise DevnetError(f"{node.name} exited; see {node.home}/logs/")
                if time.monotonic() > deadline:
                    raise DevnetError(
                        f"{node.name} at height {height}, not {min_height}, after {timeout:.0f}s; see {node.home}/logs/"
                    )
                time.sleep(0.2)

    def status(self) -> dict[str, Any]:
        state = self.load()
        validators = []
        for node in state.nodes:
            entry: dict[str, Any] = {
                "name": node.name,
                "rpc": node.rpc,
                "running": process_alive(node.pid),
                "height": 0,
                "app_hash": "",
            }
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                info = httpx.get(f"{node.rpc}/status", timeout=2).json()["result"]["sync_info"]
                entry.update(height=int(info["latest_block_height"]), app_hash=info["latest_app_hash"].lower())
            validators.append(entry)
        return {"chain_id": state.chain_id, "home": str(self.home), "validators": validators}


def up(
    home: Path,
    validators: int = 4,
    chain_id: str = "haca-devnet",
    timeout_commit: str = "500ms",
    ready_timeout: float = 120.0,
) -> Devnet:
    """Create the devnet if missing, start whatever is not running, return once height >= 2."""
    net = Devnet(home)
    if not net.exists():
        try:
            net.create(validators, chain_id, timeout_commit)
        except ValidatorError as exc:
            raise DevnetError(str(exc)) from exc
    net.start()
    net.wait_ready(2, ready_timeout)
    return net


def free_ports(count: int) -> list[int]:
    """Ports the OS reports free on loopback now (held open together so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def rpc_height(url: str) -> int:
    try:
        return int(httpx.get(f"{url}/status", timeout=2).json()["result"]["sync_info"]["latest_block_height"])
    except (httpx.HTTPError, KeyError, ValueError):
        return -1


def process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    reap(pid)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # A group of zombies only is dead too.
    return any(process_alive(int(p)) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pgid)


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return -1


def reap(pid: int) -> None:
    """Collect `pid` if it is our exited child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
