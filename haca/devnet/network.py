"""A local multi-validator devnet on loopback, built from `init_validator` and `run_validator`.

HOME/config.json and HOME/keys/ are the client home; HOME/devnet/ holds the network:
devnet.json (chain id, ports, pids) and one validator home per node.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from haca.chain.genesis import AppGenesis, GenesisAccount, TeeGenesis
from haca.chain.home import ValidatorHome, unix_socket_path
from haca.chain.modules.inference.keeper import InferenceParams
from haca.chain.modules.staking.keeper import StakingParams
from haca.chain.supervisor import ValidatorError, configure, init_validator
from haca.client.config import ClientConfig, KeyStore
from haca.devnet import services
from haca.devnet.accounts import DEV_BALANCE, NODE_BOND, VALIDATOR_BOND, dev_keys, operator_key, service_keys
from haca.devnet.layout import dev_srs_dir
from haca.devnet.processes import free_ports, process_alive, signal_group, spawn, wait_group_gone
from haca.enclave.measure import enclave_measurement
from haca.proofs.tee.binding import measurement_id
from haca.proofs.tee.claims import Claims
from haca.proofs.tee.dev import issue_dev_platform, make_dev_root
from haca.proofs.tee.dev_gpu import dev_gpu_golden
from haca.proofs.tee.policy import TeePolicy
from haca.proofs.zk.srs import srs_file
from haca.types.tee import GLOBAL_SCOPE
from haca.types.tx import MAX_TX_BYTES

DEVNET_SNAPSHOT_INTERVAL = 100  # blocks between state-sync snapshots on a devnet validator
DEV_ROOT_DIR = "dev-root"  # the devnet's DEV attestation root (key and certificate)


# A devnet's minimum stakes: a node must bond to serve, more for the verified modes (what it can
# be slashed from when a claim against it expires or it equivocates). The unbonding period is the
# default one plus the longer claim deadline: it must outlast the claim window and deadline
# (haca.chain.windows). A devnet's blocks come every few hundred ms, so its windows are counted in
# more blocks than a real chain's: a node must be able to prove a zkml answer inside the deadline,
# and to settle (a receipt settles within the claim window of its height) across a restart.
DEVNET_INFERENCE = InferenceParams(claim_deadline=200, claim_window=2000)
DEVNET_STAKING = StakingParams(
    unbonding_period=DEVNET_INFERENCE.claim_window + DEVNET_INFERENCE.claim_deadline,
    min_stake_vanilla=10**18,
    min_stake_tee=10**20,
    min_stake_zkml=10**20,
    power_unit=VALIDATOR_BOND // 10,  # each genesis validator: power 10
    min_validator_stake=VALIDATOR_BOND // 10,
)


GENESIS_POWER = VALIDATOR_BOND // DEVNET_STAKING.power_unit
# A devnet's unbonding period is minutes (tests wait it out); its clients trust its genesis set far
# longer, so a devnet resumed days later still verifies. A devnet is not a security boundary: a real
# network's clients keep the trusting period below its unbonding time (haca.client.config).
DEVNET_TRUSTING_PERIOD = 10 * 365 * 24 * 3600


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
    metrics_port: int = 0  # the app's Prometheus endpoint (0: none, a devnet made before it existed)

    @property
    def rpc(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    @property
    def metrics(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics" if self.metrics_port else ""


@dataclass
class ServiceRecord:
    """A hub or an inference node run by the devnet."""

    name: str
    kind: str  # "hub" | "enclave" | "node" | "explorer"
    port: int  # an enclave's is 0: it listens on a Unix socket
    pid: int = 0
    address: str = ""  # a node's account

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class DevnetState:
    chain_id: str
    nodes: list[NodeRecord] = field(default_factory=list)
    services: list[ServiceRecord] = field(default_factory=list)

    def node(self, name: str) -> NodeRecord:
        for node in self.nodes:
            if node.name == name:
                return node
        raise DevnetError(f"no validator {name!r}; validators: {', '.join(n.name for n in self.nodes)}")

    def known(self, name: str | None) -> None:
        names = [n.name for n in self.nodes] + [s.name for s in self.services]
        if name is not None and name not in names:
            raise DevnetError(f"no process {name!r}; known: {', '.join(names)}")


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
        return DevnetState(
            doc["chain_id"],
            [NodeRecord(**n) for n in doc["nodes"]],
            [ServiceRecord(**s) for s in doc.get("services", [])],
        )

    def save(self, state: DevnetState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
        tmp.replace(self.state_file)

    # --- lifecycle --------------------------------------------------------------------------------

    def create(self, validators: int, chain_id: str, timeout_commit: str, inference: bool = True) -> DevnetState:
        if validators < 1:
            raise DevnetError("a devnet needs at least one validator")
        self.dir.mkdir(parents=True, exist_ok=True)
        ports = free_ports(3 * validators + 3)
        metrics_ports = ports[2 * validators : 3 * validators]
        state = DevnetState(chain_id)
        identities = []
        for i in range(validators):
            root = self.dir / f"val{i}"
            ident = init_validator(root, f"val{i}")
            identities.append(ident)
            record = NodeRecord(f"val{i}", str(root), ports[2 * i], ports[2 * i + 1], ident.node_id)
            record.metrics_port = metrics_ports[i]
            state.nodes.append(record)
        genesis = json.dumps(self._genesis(chain_id, identities, inference), indent=2)
        for node in state.nodes:
            self._configure_node(node, [n for n in state.nodes if n is not node], genesis, timeout_commit, inference)
        if inference:
            node_key = dict(service_keys())["node0"]
            issue_dev_platform(self.dir / DEV_ROOT_DIR, self.dir / "enclave0")
            state.services = [
                ServiceRecord("hub", "hub", ports[-2]),
                ServiceRecord("enclave0", "enclave", 0),
                ServiceRecord("node0", "node", ports[-1], address=node_key.address),
            ]
        state.services.append(ServiceRecord("explorer", "explorer", ports[-3]))
        self.save(state)
        self._write_client_home(state)
        return state

    @staticmethod
    def _configure_node(
        node: NodeRecord, peers: list[NodeRecord], genesis: str, timeout_commit: str, inference: bool
    ) -> None:
        home = ValidatorHome(Path(node.home))
        home.genesis.write_text(genesis)
        home.app_dir.mkdir(parents=True, exist_ok=True)
        settings = {"metrics_port": node.metrics_port, "snapshot_interval": DEVNET_SNAPSHOT_INTERVAL}
        home.app_config.write_text(json.dumps(settings) + "\n")
        home.srs_dir.mkdir(parents=True, exist_ok=True)
        srs = sorted({(c.logrows, c.srs_hash) for c in services.example_circuits().values()}) if inference else []
        for logrows, _ in srs:  # the SRS is a genesis artefact: every validator holds the files
            shutil.copyfile(srs_file(dev_srs_dir(), logrows), srs_file(home.srs_dir, logrows))
        configure(
            home,
            {
                ("rpc", "laddr"): f"tcp://127.0.0.1:{node.rpc_port}",
                ("p2p", "laddr"): f"tcp://127.0.0.1:{node.p2p_port}",
                ("p2p", "persistent_peers"): ",".join(f"{n.node_id}@127.0.0.1:{n.p2p_port}" for n in peers),
                ("p2p", "addr_book_strict"): False,
                ("p2p", "allow_duplicate_ip"): True,
                ("consensus", "timeout_commit"): timeout_commit,
                # zkml: a circuit's verifying key or a batch of proofs in one tx (CometBFT's
                # defaults are 1 MiB per tx and 1 MB per RPC body; blocks take 21 MiB)
                ("mempool", "max_tx_bytes"): MAX_TX_BYTES,
                ("rpc", "max_body_bytes"): 3 * MAX_TX_BYTES,
                ("", "log_level"): "state:info,*:error",
            },
        )

    def add_validator(self, name: str, timeout_commit: str = "300ms") -> NodeRecord:
        """A new validator home for the running devnet (`start(name)` runs it): the same genesis,
        the others as its peers. It replays the chain from genesis and follows it as a full node
        until an operator makes it a validator (`haca validator create --validator-home`)."""
        state = self.load()
        if any(n.name == name for n in state.nodes) or any(s.name == name for s in state.services):
            raise DevnetError(f"{name!r} is taken")
        root = self.dir / name
        ident = init_validator(root, name)
        rpc_port, p2p_port, metrics_port = free_ports(3)
        record = NodeRecord(name, str(root), rpc_port, p2p_port, ident.node_id)
        record.metrics_port = metrics_port
        genesis = ValidatorHome(Path(state.nodes[0].home)).genesis.read_text()
        inference = any(s.kind == "node" for s in state.services)
        self._configure_node(record, list(state.nodes), genesis, timeout_commit, inference)
        state.nodes.append(record)
        self.save(state)
        return record

    def _genesis(self, chain_id: str, identities: list[Any], inference: bool = True) -> dict[str, Any]:
        template = json.loads(ValidatorHome(self.dir / "val0").genesis.read_text())
        accounts = tuple(GenesisAccount(key.address, DEV_BALANCE) for _, key in dev_keys() + service_keys())
        authority = dict(dev_keys())["dev0"].address  # the devnet's governance authority
        # zkml: the dev SRS of each example circuit's size, pinned by hash (made by `make setup`)
        srs = (
            tuple(sorted({(c.logrows, c.srs_hash) for c in services.example_circuits().values()})) if inference else ()
        )
        # The DEV platform is allowed on a devnet only, explicitly, with this devnet's own root; its
        # measurement is that of the enclave's code and runtime in this tree (`haca enclave measure`).
        dev_root = make_dev_root(self.dir / DEV_ROOT_DIR).decode()
        dev_claims = Claims("dev", {"measurement": enclave_measurement()}, b"", False, "UpToDate", dev=True)
        # Its enclave brings DEV GPU evidence too: the policy takes it, with the DEV GPU's golden values.
        policy = TeePolicy(
            formats=("dev", "nitro", "sgx", "snp", "tdx"),
            roots={"dev": dev_root},
            gpu_formats=("dev-gpu", "nvidia"),
            gpu_golden=TeePolicy.from_json({"gpu_golden": dev_gpu_golden()}).gpu_golden,
        )
        tee = TeeGenesis(
            policy,
            ((GLOBAL_SCOPE, measurement_id(dev_claims)),),
        )
        template.update(
            genesis_time=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            chain_id=chain_id,
            initial_height="1",
            validators=[
                # what the app answers InitChain with (power by stake); the clients' trusted set
                {"address": v.address, "pub_key": v.pub_key, "power": str(GENESIS_POWER), "name": v.moniker}
                for v in identities
            ],
            app_hash="",
            app_state=AppGenesis(
                accounts=accounts,
                authorities=(authority,),
                tee=tee,
                srs=srs,
                inference=DEVNET_INFERENCE,
                staking=DEVNET_STAKING,
                bonds=tuple(
                    sorted(
                        [(operator_key(v.moniker).address, VALIDATOR_BOND) for v in identities]
                        + [(dict(service_keys())["node0"].address, NODE_BOND)]
                    )
                ),
                validators=tuple((v.pub_key["value"], operator_key(v.moniker).address) for v in identities),
            ).to_json(),
        )
        return template

    def _write_client_home(self, state: DevnetState) -> None:
        store = KeyStore(self.home)
        for name, key in dev_keys() + service_keys():
            store.add(name, key, overwrite=True)
        genesis = json.loads(ValidatorHome(Path(state.nodes[0].home)).genesis.read_text())
        trusted = [
            {"address": v["address"], "pub_key": v["pub_key"], "voting_power": v["power"]}
            for v in genesis["validators"]
        ]
        extra: dict[str, Any] = {"srs_dir": str(dev_srs_dir())}  # zkml: where `haca verify` finds the SRS
        for svc in state.services:
            if svc.kind == "hub":
                extra["hub"] = svc.url
            elif svc.kind == "node":
                extra.setdefault("nodes", []).append({"name": svc.name, "url": svc.url, "address": svc.address})
        config = ClientConfig(
            state.chain_id,
            [n.rpc for n in state.nodes],
            default_key="dev0",
            validators=trusted,
            extra=extra,
            trusting_period=DEVNET_TRUSTING_PERIOD,
        )
        config.save(self.home)

    def start(self, name: str | None = None) -> None:
        """Start what is not running: validators, then (once they produce blocks) hub and node."""
        state = self.load()
        state.known(name)
        for node in state.nodes:
            if name in (None, node.name) and not process_alive(node.pid):
                node.pid = spawn(
                    [sys.executable, "-m", "haca.chain.supervisor", node.home], Path(node.home) / "supervisor.log"
                )
        self.save(state)
        if name is None or any(s.name == name for s in state.services):
            self.wait_ready(2, 120)
            self._start_services(name)

    def _start_services(self, name: str | None) -> None:
        state = self.load()
        logs = self.dir / "logs"
        for svc in state.services:
            if name not in (None, svc.name) or process_alive(svc.pid):
                continue
            if svc.kind == "hub":
                svc.pid = spawn(services.hub_command(self.dir / "hub", svc.port), logs / "hub.log")
                self.save(state)
                services.wait_http(f"{svc.url}/healthz", svc.pid, "hub", logs / "hub.log")
                services.register_example_models(self.home, svc.url)
            elif svc.kind == "explorer":
                log = logs / "explorer.log"
                svc.pid = spawn(services.explorer_command(self.home, svc.port), log)
                self.save(state)
                services.wait_http(f"{svc.url}/healthz", svc.pid, "explorer", log)
            elif svc.kind == "enclave":
                socket = self.enclave_socket(svc.name)
                socket.unlink(missing_ok=True)
                hub = next((s.url for s in state.services if s.kind == "hub"), "")
                node = "node" + svc.name.removeprefix("enclave")
                command = services.enclave_command(
                    socket, self.dir / svc.name, self.home / "node" / node / "models", hub
                )
                svc.pid = spawn(command, logs / f"{svc.name}.log")
                self.save(state)
                services.wait_socket(socket, svc.pid, svc.name, logs / f"{svc.name}.log")
            else:
                enclave = self.enclave_socket("enclave" + svc.name.removeprefix("node"))
                services.approve_enclave_code(self.home, enclave)  # resumed after a code change: approve it
                command = services.node_command(self.home, svc.name, svc.port, enclave)
                svc.pid = spawn(command, logs / f"{svc.name}.log")
                self.save(state)
                services.wait_http(f"{svc.url}/healthz", svc.pid, svc.name, logs / f"{svc.name}.log")
        self.save(state)

    def enclave_socket(self, name: str) -> Path:
        return unix_socket_path(self.dir / name / "enclave.sock")

    def stop(self, name: str | None = None, kill: bool = False, timeout: float = 20.0) -> None:
        """SIGTERM (or SIGKILL with `kill`) each process group: a validator's supervisor, app and
        CometBFT together; the hub; the node."""
        state = self.load()
        state.known(name)
        procs: list[NodeRecord | ServiceRecord] = [*state.services, *state.nodes]
        targets = [p for p in procs if name in (None, p.name)]
        for proc in targets:
            signal_group(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in targets:
            wait_group_gone(proc.pid, deadline)
            proc.pid = 0
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
                "metrics": node.metrics,
                "running": process_alive(node.pid),
                "height": 0,
                "app_hash": "",
            }
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                info = httpx.get(f"{node.rpc}/status", timeout=2).json()["result"]["sync_info"]
                entry.update(height=int(info["latest_block_height"]), app_hash=info["latest_app_hash"].lower())
            validators.append(entry)
        answer: dict[str, Any] = {
            "chain_id": state.chain_id,
            "home": str(self.home),
            "validators": validators,
            "hub": None,
            "explorer": None,
            "nodes": [],
        }
        for svc in state.services:
            if svc.kind in ("hub", "explorer"):
                answer[svc.kind] = svc.url
            elif svc.kind == "node":
                answer["nodes"].append(
                    {
                        "name": svc.name,
                        "url": svc.url,
                        "address": svc.address,
                        "modes": list(services.NODE_MODES),
                        "running": process_alive(svc.pid),
                    }
                )
        return answer


def up(
    home: Path,
    validators: int = 4,
    chain_id: str = "haca-devnet",
    timeout_commit: str = "500ms",
    inference: bool = True,
) -> Devnet:
    """Create the devnet if missing, start whatever is not running; return once validators are at
    height >= 2 and, with `inference`, the hub and node answer (example models registered)."""
    net = Devnet(home)
    if not net.exists():
        try:
            net.create(validators, chain_id, timeout_commit, inference)
        except ValidatorError as exc:
            raise DevnetError(str(exc)) from exc
    else:  # a devnet made before its config named a trusting period: the devnet's, not the default
        config = ClientConfig.load(home)
        if config.trusting_period != DEVNET_TRUSTING_PERIOD:
            config.trusting_period = DEVNET_TRUSTING_PERIOD
            config.save(home)
    try:
        net.start()
    except services.ServiceError as exc:
        raise DevnetError(str(exc)) from exc
    return net


def rpc_height(url: str) -> int:
    try:
        return int(httpx.get(f"{url}/status", timeout=2).json()["result"]["sync_info"]["latest_block_height"])
    except (httpx.HTTPError, KeyError, ValueError):
        return -1
