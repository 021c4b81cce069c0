"""Starting a node: load its models from the hub (refusing bytes that do not hash to their id),
register it on chain, start the settler, serve HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import uvicorn

from haca.client import records
from haca.client.chain import ChainClient
from haca.client.config import ClientConfig, KeyStore, connect
from haca.client.errors import ConfigError, QueryFailed
from haca.client.rpc import CometRpc
from haca.crypto.keys import PrivateKey
from haca.enclave.client import AsyncEnclaveClient, EnclaveClient, EnclaveError
from haca.hub.client import HubClient
from haca.node.api import create_app
from haca.node.chainview import ChainView
from haca.node.context import NodeContext, ServedModel, current_quotes
from haca.node.enclave import EnclaveKey
from haca.node.follower import ChainFollower
from haca.node.metrics import Metrics
from haca.node.payments import PaymentGate
from haca.node.prover import Prover
from haca.node.receipts import ReceiptQueue, ReceiptStore
from haca.node.settler import FlushPolicy, Settler
from haca.node.txlock import TxLock
from haca.proofs.zk.circuit import Circuit, circuit_from_files, load_circuit
from haca.proofs.zk.srs import srs_file
from haca.runtime.llm import LlmModel
from haca.runtime.onnx import OnnxModel
from haca.types.batch import MsgSettleBatch
from haca.types.modes import Mode
from haca.types.registry import ModelManifest, MsgRegisterNode, NodeRegistration
from haca.types.staking import MsgBond

log = structlog.get_logger("haca.node")

READ_TIMEOUT_S = 2.0  # a chain read on the request path; CometBFT answers a query in milliseconds
SLOW_READ_S = 0.5


@dataclass
class NodeSettings:
    home: Path  # client home: config.json (chain id, RPC, hub) and keys/
    key: str = "node0"
    host: str = "127.0.0.1"
    port: int = 8080
    endpoint: str = ""  # public URL registered on chain; default http://host:port
    models: list[str] = field(default_factory=list)  # model names; default every registered model
    modes: tuple[str, ...] = (Mode.VANILLA,)
    price: int = 0  # per inference; the fee is max(this, the model's price)
    data_dir: Path | None = None  # receipts.db and model cache; default HOME/node/<key>
    hub: str = ""
    batch_size: int = 64  # receipts per settlement tx (the chain takes at most 64)
    flush_interval: float = 1.0
    batches: FlushPolicy | None = None  # settle batchable receipts in MsgSettleBatch, flushed by this policy
    enclave: Path | None = None  # tee: the enclave's Unix socket (it runs the tee requests)
    circuits: Path | None = None  # zkml: built circuits, one folder per model name (<dir>/<name>/circuit.json)
    srs_dir: Path | None = None  # zkml: the network's SRS files (kzg<logrows>.srs)
    provers: int = 1  # zkml: prover worker processes
    llm_slots: int = 1  # LLMs: requests one model runs at once (each slot is a warm llama.cpp instance)
    llm_queue: int = 8  # LLMs: requests that may wait for a slot; more get 429
    stake: int | None = None  # bond at least this (default: the chain's minimum stake for the modes served)
    # A PostgreSQL DSN: this process is one worker of a node whose workers share the receipt store
    # (haca.node.pgstore); empty: the node's own SQLite file (DATA/receipts.db)
    store: str = ""
    worker: str = ""  # this worker's name in the shared store (default host:pid:random)

    @property
    def data(self) -> Path:
        return self.data_dir or self.home / "node" / self.key

    @property
    def public_url(self) -> str:
        return self.endpoint or f"http://{self.host}:{self.port}"


@dataclass
class Node:
    settings: NodeSettings
    context: NodeContext
    settler: Settler
    chain: ChainClient
    enclave: EnclaveKey | None = None
    prover: Prover | None = None
    follower: ChainFollower | None = None
    view: ChainView | None = None

    def app(self) -> Any:
        return create_app(self.context)

    def close(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        if self.prover is not None:
            self.prover.stop()
        if self.enclave is not None:
            self.enclave.stop()
        self.settler.stop()
        self.context.store.close()
        self.chain.close()
        if self.view is not None:
            self.view.close()
            self.view.chain.close()


def build_node(settings: NodeSettings) -> Node:
    config = ClientConfig.load(settings.home)
    key = KeyStore(settings.home).get(settings.key).key
    chain = connect(config)
    hub_url = settings.hub or str(config.extra.get("hub", ""))
    if not hub_url:
        raise ConfigError("no hub configured: pass --hub or add 'hub' to the config's extra")
    models = load_models(chain, HubClient(hub_url), settings)
    store = open_store(settings, key.address)
    tx_lock = store.new_tx_lock()  # the node account's txs: registration, settlements, enclave attestations
    with tx_lock:
        register(chain, key, settings, models)
    reads = read_client(config)
    view = ChainView(reads, key.address)
    gate = PaymentGate(key.address, config.chain_id, config.denom, view, store, holds=store.new_holds())
    gate.proving.workers = max(1, settings.provers)
    provers = settings.provers if Mode.ZKML in settings.modes else 0
    gate.proving.capacity = lambda: store.prover_capacity(provers)  # a shared store: every worker's provers
    metrics = Metrics()  # GET /metrics; the settler and the prover count here too
    enclave = open_enclave(chain, key, settings, tx_lock, models) if Mode.TEE in settings.modes else None
    batches = settings.batches
    settler = Settler(
        store,
        chain,
        view,
        key,
        settings.batch_size,
        settings.flush_interval,
        flush=batches,
        sign_root=root_signer(config.chain_id, key, enclave) if batches is not None else None,
        metrics=metrics,
        tx_lock=tx_lock,
    )
    prover = None
    circuits = {s.model_id: s.circuit for s in models.values() if s.circuit is not None}
    if Mode.ZKML in settings.modes and circuits:
        srs_dir = settings.srs_dir
        if srs_dir is None:
            raise ConfigError("mode zkml needs --srs-dir (the network's SRS files)")
        prover = Prover(
            store,
            circuits,
            lambda c: srs_file(srs_dir, c.logrows),
            settings.provers,
            on_proof=settler.wake,
            metrics=metrics,
            load=gate.proving,  # measured proof times set what zkml work the node admits
        )
    context = NodeContext(
        key,
        config.chain_id,
        models,
        settings.modes,
        gate,
        store,
        on_receipt=settler.notify,
        price=settings.price,
        enclave=enclave,
        on_proof_job=prover.notify if prover is not None else None,
        llm_queue=settings.llm_queue,
        metrics=metrics,
    )
    follower = ChainFollower(reads.rpc.height, view.note_height, lambda: current_quotes(context))
    return Node(settings, context, settler, chain, enclave, prover, follower, view)


def read_client(config: ClientConfig) -> ChainClient:
    """The chain client the request path reads through: short timeouts, and an endpoint slower
    than SLOW_READ_S tried after the others, so a stalled RPC holds no request for long (the
    settler keeps the default client: its txs may take a while)."""
    reads = connect(config)
    reads.rpc.close()
    reads.rpc = CometRpc(config.rpc, timeout=READ_TIMEOUT_S, connect_timeout=1.0, slow_after=SLOW_READ_S)
    return reads


def root_signer(chain_id: str, key: PrivateKey, enclave: EnclaveKey | None) -> Callable[[MsgSettleBatch], bytes]:
    """Who signs a batch's root: the node's account key for vanilla, its enclave for tee (only over
    receipts the enclave produced: it refuses anything else, and those receipts settle alone)."""

    def sign(batch: MsgSettleBatch) -> bytes:
        if batch.mode == Mode.TEE:
            if enclave is None:
                raise ValueError("a tee batch needs the enclave, and this node has none")
            try:
                return enclave.sign_batch(chain_id, key.address, batch)
            except EnclaveError as exc:
                raise ValueError(f"the enclave did not sign the batch: {exc}") from exc
        return batch.header(chain_id, key.address).sign(key)

    return sign


def open_store(settings: NodeSettings, node: str) -> ReceiptQueue:
    """The node's own SQLite file, or (with a DSN) the PostgreSQL store its workers share."""
    if not settings.store:
        return ReceiptStore(settings.data / "receipts.db")
    from haca.node.pgstore import PostgresReceiptStore, StoreUnavailable

    try:
        return PostgresReceiptStore(settings.store, node, settings.worker or None)
    except StoreUnavailable as exc:
        raise ConfigError(str(exc)) from exc


def open_enclave(
    chain: ChainClient,
    key: PrivateKey,
    settings: NodeSettings,
    tx_lock: TxLock,
    models: dict[str, ServedModel],
) -> EnclaveKey:
    """Connect to the enclave, have it load the tee models itself (it fetches and hashes their
    bytes), and register its key on chain (tee mode is refused until it is)."""
    if settings.enclave is None:
        raise ConfigError("mode tee needs an enclave: pass --enclave SOCKET (the `haca enclave serve` socket)")
    try:
        enclave = EnclaveKey(chain, key, EnclaveClient(settings.enclave), AsyncEnclaveClient(settings.enclave), tx_lock)
        for served in {s.model_id: s for s in models.values()}.values():
            if Mode.TEE in served.manifest.modes:
                llm = served.llm
                enclave.load(served.model_id, served.manifest.kind, *((llm.context, llm.slots) if llm else ()))
        enclave.attest()
    except EnclaveError as exc:
        raise ConfigError(f"the enclave at {settings.enclave} did not answer: {exc}") from exc
    if enclave.dev:
        log.warning("dev_enclave", key=enclave.address, note="DEV-MODE, NOT FOR PRODUCTION")
    return enclave


def load_models(chain: ChainClient, hub: HubClient, settings: NodeSettings) -> dict[str, ServedModel]:
    names = settings.models or [m.name for m in records.manifests(chain)]
    served: dict[str, ServedModel] = {}
    cache = settings.data / "models"
    cache.mkdir(parents=True, exist_ok=True)
    for name in names:
        manifest = records.manifest(chain, name)
        if not set(manifest.modes) & set(settings.modes):
            continue
        kind = manifest.kind
        path = cache / (manifest.model_id.removeprefix("sha256:") + "." + kind)
        if not path.exists():
            hub.download(manifest.model_id, path)  # verifies the bytes hash to the id
        if kind == "gguf":
            llm = LlmModel(path, context=manifest.max_rows, slots=settings.llm_slots)
            model = ServedModel(manifest, llm)
        else:
            model = ServedModel(manifest, OnnxModel(path), _circuit_for(settings, manifest, hub))
        served[name] = served[manifest.model_id] = model
        log.info("model_loaded", name=name, version=manifest.version, id=manifest.model_id)
    if not served:
        raise ConfigError(f"none of the models {names} can be served in modes {list(settings.modes)}")
    return served


def _circuit_for(settings: NodeSettings, manifest: ModelManifest, hub: HubClient) -> Circuit | None:
    """zkml: this model's circuit — built here (--circuits) or fetched from the hub by the hashes the
    manifest pins — if its settings and verifying key are the ones the chain verifies against."""
    pinned = manifest.circuit
    if Mode.ZKML not in settings.modes or pinned is None:
        return None
    circuit = load_circuit(settings.circuits / manifest.name) if settings.circuits else None
    if circuit is None and pinned.pk_hash is not None and settings.srs_dir is not None:
        circuit = fetch_circuit(
            hub,
            pinned.ref(),
            settings.data / "circuits" / manifest.model_id.removeprefix("sha256:"),
            manifest.model_id,
            srs_file(settings.srs_dir, pinned.logrows),
        )
    if circuit is None:
        log.warning("no_circuit", model=manifest.name, note="zkml is not offered for it")
        return None
    if (circuit.settings_hash, circuit.vk_hash) != (pinned.settings_hash, pinned.vk_hash):
        log.warning("circuit_mismatch", model=manifest.name, local=circuit.vk_hash, chain=pinned.vk_hash)
        return None
    return circuit


CIRCUIT_FILES = {
    "settings_hash": "settings.json",
    "vk_hash": "vk.key",
    "compiled_hash": "circuit.ezkl",
    "pk_hash": "pk.key",
}


def fetch_circuit(hub: HubClient, pinned: dict[str, Any], directory: Path, model_id: str, srs: Path) -> Circuit:
    """Download a circuit's four artefacts from the hub (each refused unless it hashes to its pin)."""
    cached = load_circuit(directory)
    if cached is not None:
        return cached
    directory.mkdir(parents=True, exist_ok=True)
    for field_name, file_name in CIRCUIT_FILES.items():
        if not (directory / file_name).exists():
            hub.download(pinned[field_name], directory / file_name)  # verifies the bytes hash to the id
    log.info("circuit_fetched", model=model_id, vk=pinned["vk_hash"])
    return circuit_from_files(directory, model_id, srs)


def ensure_stake(chain: ChainClient, key: PrivateKey, modes: tuple[str, ...], stake: int | None = None) -> int:
    """Bond what the node needs to register for `modes` (the chain's minimum stake; `stake` to
    bond more), if it has less bonded; returns what it bonds now (0 when it has enough)."""
    params = chain.query("/staking/params")
    need = max([int(params.get(f"min_stake_{mode}", 0)) for mode in modes] + [stake or 0])
    bonded = int(chain.query("/staking/stake", key.address.encode())["bonded"])
    if bonded >= need:
        return 0
    chain.send_msgs(key, (MsgBond(need - bonded),))
    log.info("node_bonded", address=key.address, amount=need - bonded, bonded=need)
    return need - bonded


def register(chain: ChainClient, key: PrivateKey, settings: NodeSettings, models: dict[str, ServedModel]) -> None:
    names = tuple(sorted({s.name for s in models.values()}))
    ensure_stake(chain, key, settings.modes, settings.stake)
    msg = MsgRegisterNode(settings.public_url, tuple(sorted(settings.modes)), names, settings.price)
    current = None
    with contextlib.suppress(QueryFailed):
        current = records.node_registration(chain, key.address)
    if current is not None and current == NodeRegistration.registered(msg, key.address, current.height):
        return
    chain.send_msgs(key, (msg,))
    log.info("node_registered", address=key.address, endpoint=settings.public_url, models=list(names))


def run_node(settings: NodeSettings) -> None:
    node = build_node(settings)
    node.settler.start()
    if node.follower is not None:
        node.follower.start()
    if node.enclave is not None:
        node.enclave.start()
    if node.prover is not None:
        node.prover.start()
    try:
        uvicorn.run(node.app(), host=settings.host, port=settings.port, log_level="warning", access_log=False)
    finally:
        node.close()
