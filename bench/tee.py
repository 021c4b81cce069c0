"""What tee mode costs against vanilla: validator CPU per receipt and per attestation, and node latency.

Four measurements, each `--rounds` times, tee and vanilla alternating inside every round so both see
the same machine; every ratio is tee / vanilla within one round, reported as min/median/max:

  verify     TeeVerifier.verify and VanillaVerifier.verify on N distinct receipts, one thread, a fresh
             VerdictCache per round (nothing cached); tee looks the enclave key's standing up in a dict.
             Gives µs per receipt, the ratio, and tee_receipts_verified_per_s_one_core (target >= 5 000).
  chain      the full validator path: an in-process HacaApp (FinalizeBlock + Commit, as CometBFT drives
             it) settling blocks of MsgSettle txs of 64 items, tee receipts signed by an enclave key
             registered with DEV evidence, vanilla ones by the node's account key. µs per receipt.
  attest     verify_attestation on the real nitro, tdx and snp fixtures (at their pinned times) and on
             DEV evidence, µs each and as a multiple of one vanilla receipt verification.
  node       p50 latency of paid POST /v1/infer in mode tee and mode vanilla on node0 of a 1-validator
             devnet, concurrency 1 and 16, pre-signed payments; tee_vs_vanilla_latency_ratio (target <= 1.05
             at both concurrencies). In tee mode the node forwards the request to its enclave (`haca enclave
             serve`, DEV platform, a separate process on a Unix socket), which runs the model itself and
             signs the receipt it computed; in vanilla mode the node runs the model and signs. Also: the same
             requests interleaved tee/vanilla in one load, the node's and the enclave's CPU per request, the
             enclave's infer round trip against running the model (and signing) in process, and that round
             trip from another process while vanilla load keeps the cores busy.

Results: bench/results/tee.json. The devnet lives in bench/.work/ and is stopped and deleted at the end,
also on an error or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
from common import (
    cpu_seconds,
    exit_on_sigterm,
    fmt,
    foreign_devnet_processes,
    loadavg,
    machine,
    node_requests,
    percentile,
    post_all,
    spread,
    timestamp,
    work_dir,
)
from tendermint.abci import types_pb2 as abci

from haca.chain.app import HacaApp
from haca.chain.genesis import AppGenesis, GenesisAccount, TeeGenesis
from haca.chain.modules.auth.keeper import FeeParams
from haca.chain.store import CommitStore
from haca.client.sdk import Client
from haca.crypto.hashing import sha256
from haca.crypto.keys import PrivateKey
from haca.devnet.layout import example_models_dir
from haca.devnet.network import Devnet, up
from haca.enclave.client import AsyncEnclaveClient, EnclaveClient
from haca.enclave.evidence import open_platform
from haca.enclave.measure import enclave_measurement
from haca.enclave.models import ModelStore
from haca.enclave.runtime import Enclave, Terms
from haca.proofs.tee.attestation import Attestation, verify_attestation
from haca.proofs.tee.binding import key_binding, measurement_id
from haca.proofs.tee.claims import Claims
from haca.proofs.tee.dev import (
    PLATFORM_CERT_FILE,
    PLATFORM_KEY_FILE,
    issue_dev_platform,
    make_dev_evidence,
    make_dev_root,
)
from haca.proofs.tee.policy import TeePolicy
from haca.proofs.verifier import EnclaveStanding, TeeVerifier, VanillaVerifier, VerdictCache, VerifyContext
from haca.runtime.onnx import OnnxModel
from haca.types.inference import MAX_SETTLEMENT_ITEMS, MsgDeposit, MsgSettle, SettlementItem
from haca.types.payment import PaymentAuthorization, SignedPayment
from haca.types.receipt import Receipt, SignedReceipt
from haca.types.registry import MsgRegisterModel, MsgRegisterNode
from haca.types.tee import GLOBAL_SCOPE, MsgAttestEnclave
from haca.types.tx import Msg, build_tx

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "tee.json"
WORK = ROOT / ".work"
FIXTURES = ROOT.parent / "tests" / "fixtures" / "tee"
TARGET_VERIFIED_PER_S = 5_000
TARGET_LATENCY_RATIO = 1.05

CHAIN_ID = "haca-bench-tee"
FEES = FeeParams(tx_fee_base=1_000, tx_fee_per_byte=10)
NODE, CLIENT, OWNER, AUTHORITY = (PrivateKey.from_seed(f"bench-tee-{s}") for s in ("node", "client", "owner", "auth"))
ENCLAVE = PrivateKey.from_seed("bench-tee-enclave")
FEE = 2_000
SCHEMA = {"x": {"dtype": "float32", "shape": [1, 4]}}
MODEL = MsgRegisterModel("bench", "sha256:" + sha256(b"bench").hex(), SCHEMA, SCHEMA, ("tee", "vanilla"), 1_000)


# --- receipts ---------------------------------------------------------------------------------------------


def make_item(mode: str, height: int, tag: str) -> SettlementItem:
    """One settlement item: a receipt for MODEL in `mode` (tee: signed by ENCLAVE, vanilla: by NODE)
    with the client's payment for exactly that request."""
    receipt = Receipt(
        chain_id=CHAIN_ID,
        node=NODE.address,
        client=CLIENT.address,
        request_id="0x" + secrets.token_bytes(32).hex(),
        model_id=MODEL.model_id,
        mode=mode,
        input_hash="0x" + sha256(b"in" + tag.encode()).hex(),
        output_hash="0x" + sha256(b"out" + tag.encode()).hex(),
        fee=FEE,
        height_hint=height,
        timestamp=int(time.time()),
    )
    auth = PaymentAuthorization(
        CHAIN_ID, CLIENT.address, NODE.address, receipt.request_id, receipt.model_id, mode, FEE, 10**9
    )
    signer = ENCLAVE if mode == "tee" else NODE
    return SettlementItem(
        SignedReceipt(receipt, receipt.sign(signer)), SignedPayment("request", auth, auth.sign(CLIENT))
    )


def fresh(signed: SignedReceipt) -> SignedReceipt:
    """The same receipt as a validator sees it, decoded from its JSON: its digest not yet computed."""
    return SignedReceipt.from_json(signed.to_json())


# --- (a) per receipt: the verifiers alone -----------------------------------------------------------------


def bench_verify(rounds: int, n: int) -> dict[str, Any]:
    signed = {mode: [make_item(mode, 10, f"{mode}{i}").receipt for i in range(n)] for mode in ("tee", "vanilla")}
    standings = {
        ENCLAVE.address: EnclaveStanding(ENCLAVE.address, NODE.address, "dev", "0x" + "00" * 32, True, True, True)
    }
    ctx = VerifyContext(CHAIN_ID, 20, 1_700_000_000, MODEL.name, NODE.address, standings.get)
    detail = []
    for r in range(rounds):
        figures: dict[str, Any] = {}
        for mode in ("tee", "vanilla") if r % 2 == 0 else ("vanilla", "tee"):
            verifier = TeeVerifier(VerdictCache()) if mode == "tee" else VanillaVerifier(VerdictCache())
            batch = [fresh(s) for s in signed[mode]]
            wall, cpu = time.perf_counter(), time.process_time()
            for s in batch:
                verifier.verify(s, b"", ctx)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            assert verifier.cache.misses == n and verifier.cache.hits == 0
            figures[mode] = {
                "cpu_us": round(cpu / n * 1e6, 2),
                "wall_us": round(wall / n * 1e6, 2),
                "per_s": round(n / cpu, 1),
            }
        figures["tee_per_s"] = figures["tee"]["per_s"]
        figures["ratio"] = round(figures["tee"]["cpu_us"] / figures["vanilla"]["cpu_us"], 3)
        detail.append(figures)
    return {
        "receipts_per_round": n,
        "rounds_detail": detail,
        "tee_us": spread([d["tee"]["cpu_us"] for d in detail], 2),
        "vanilla_us": spread([d["vanilla"]["cpu_us"] for d in detail], 2),
        "tee_vs_vanilla": spread([d["ratio"] for d in detail]),
        "tee_receipts_verified_per_s_one_core": spread([d["tee_per_s"] for d in detail], 1),
    }


# --- (a) per receipt: the chain path through HacaApp -------------------------------------------------------


class Chain:
    """One validator's HacaApp over its own store, driven block by block as CometBFT would."""

    def __init__(self, path: Path, genesis_time: int) -> None:
        self.app = HacaApp(CommitStore(path))
        self.height = self.app.store.height
        self.genesis_time = genesis_time
        self.nonces: dict[str, int] = {}

    def block_hash(self, height: int) -> bytes:
        return sha256(b"bench-block" + height.to_bytes(8, "big"))

    def block_time(self, height: int) -> int:
        return self.genesis_time + 2 * height

    def init(self, genesis: AppGenesis) -> None:
        state = json.dumps(genesis.to_json()).encode()
        self.app.init_chain(abci.RequestInitChain(chain_id=CHAIN_ID, app_state_bytes=state))

    def tx(self, key: PrivateKey, *msgs: Msg) -> bytes:
        nonce = self.nonces.get(key.address, 0)
        self.nonces[key.address] = nonce + 1
        return build_tx(key, CHAIN_ID, nonce, msgs, FEES.tx_fee_base, FEES.tx_fee_per_byte).encode()

    def block(self, txs: Sequence[bytes] = ()) -> abci.ResponseFinalizeBlock:
        self.height += 1
        request = abci.RequestFinalizeBlock(height=self.height, txs=list(txs), hash=self.block_hash(self.height))
        request.time.seconds = self.block_time(self.height)
        response = self.app.finalize_block(request)
        self.app.commit(abci.RequestCommit())
        bad = [r.log for r in response.tx_results if r.code != 0]
        if bad:
            raise RuntimeError(f"block {self.height}: {len(bad)} txs failed: {bad[0][:300]}")
        return response

    def close(self) -> None:
        self.app.store.close()


def dev_platform(directory: Path) -> tuple[bytes, bytes, bytes]:
    """A DEV root and one platform issued by it: (root PEM, platform key PEM, platform chain PEM)."""
    root = make_dev_root(directory / "root")
    issue_dev_platform(directory / "root", directory / "platform")
    return (
        root,
        (directory / "platform" / PLATFORM_KEY_FILE).read_bytes(),
        (directory / "platform" / PLATFORM_CERT_FILE).read_bytes(),
    )


def start_chain(work: Path, dev: tuple[bytes, bytes, bytes]) -> Chain:
    """A chain with the dev format allowed, the dev measurement approved, MODEL and NODE registered
    (tee and vanilla), CLIENT's escrow for NODE funded and ENCLAVE registered for NODE."""
    root, platform_key, platform_chain = dev
    dev_mid = measurement_id(Claims("dev", {"measurement": enclave_measurement()}, b"", False, "UpToDate"))
    policy = TeePolicy(formats=("dev",), roots={"dev": root.decode()}, heartbeat_interval=1_000_000)
    genesis = AppGenesis(
        fees=FEES,
        accounts=tuple(GenesisAccount(k.address, 10**15) for k in (NODE, CLIENT, OWNER, AUTHORITY)),
        authorities=(AUTHORITY.address,),
        tee=TeeGenesis(policy, ((GLOBAL_SCOPE, dev_mid),)),
    )
    work.mkdir(parents=True, exist_ok=True)
    chain = Chain(work / "state.db", int(time.time()))  # block times inside the DEV certificates' validity
    chain.init(genesis)
    chain.block()
    chain.block([chain.tx(OWNER, MODEL)])
    node_msg = MsgRegisterNode("http://node:8000", ("tee", "vanilla"), (MODEL.name,), 0)
    chain.block([chain.tx(NODE, node_msg), chain.tx(CLIENT, MsgDeposit(NODE.address, 10**12))])
    report = key_binding(CHAIN_ID, NODE.address, ENCLAVE.address, chain.block_hash(chain.height))
    evidence = make_dev_evidence(
        platform_key, platform_chain, enclave_measurement(), report, chain.block_time(chain.height + 1)
    )
    chain.block([chain.tx(NODE, MsgAttestEnclave(ENCLAVE.address, "dev", evidence, b"", chain.height))])
    return chain


def bench_chain(work: Path, dev: tuple[bytes, bytes, bytes], rounds: int, blocks: int, txs: int) -> dict[str, Any]:
    chain = start_chain(work, dev)
    per_block = txs * MAX_SETTLEMENT_ITEMS
    detail = []
    try:
        for r in range(rounds):
            # A B B A … (A alternating between rounds): the state grows block by block, so each mode gets
            # as many early blocks as late ones.
            first, second = ("tee", "vanilla") if r % 2 == 0 else ("vanilla", "tee")
            order = [(first, second) if b % 2 == 0 else (second, first) for b in range(blocks)]
            cpu = {"tee": 0.0, "vanilla": 0.0}
            wall = {"tee": 0.0, "vanilla": 0.0}
            for b, pair in enumerate(order):
                for mode in pair:
                    height = chain.height
                    items = [make_item(mode, height, f"{r}.{b}.{i}") for i in range(per_block)]
                    raw = [
                        chain.tx(NODE, MsgSettle(tuple(items[i : i + MAX_SETTLEMENT_ITEMS])))
                        for i in range(0, per_block, MAX_SETTLEMENT_ITEMS)
                    ]
                    w, c = time.perf_counter(), time.process_time()
                    response = chain.block(raw)
                    cpu[mode] += time.process_time() - c
                    wall[mode] += time.perf_counter() - w
                    statuses = {
                        a.value
                        for result in response.tx_results
                        for e in result.events
                        if e.type == "settle"
                        for a in e.attributes
                        if a.key == "status"
                    }
                    expected = {"verified"} if mode == "tee" else {"settled"}
                    if statuses != expected:
                        raise RuntimeError(f"{mode} receipts settled with statuses {statuses}, not {expected}")
            n = blocks * per_block
            figures: dict[str, Any] = {
                mode: {"cpu_us": round(cpu[mode] / n * 1e6, 1), "wall_us": round(wall[mode] / n * 1e6, 1)}
                for mode in ("tee", "vanilla")
            }
            figures["ratio"] = round(figures["tee"]["cpu_us"] / figures["vanilla"]["cpu_us"], 3)
            figures["tee_minus_vanilla_us"] = round(figures["tee"]["cpu_us"] - figures["vanilla"]["cpu_us"], 1)
            detail.append(figures)
    finally:
        chain.close()
    return {
        "blocks_per_mode_per_round": blocks,
        "settle_txs_per_block": txs,
        "items_per_tx": MAX_SETTLEMENT_ITEMS,
        "receipts_per_mode_per_round": blocks * per_block,
        "rounds_detail": detail,
        "tee_us": spread([d["tee"]["cpu_us"] for d in detail], 1),
        "vanilla_us": spread([d["vanilla"]["cpu_us"] for d in detail], 1),
        "tee_vs_vanilla": spread([d["ratio"] for d in detail]),
        "tee_minus_vanilla_us": spread([d["tee_minus_vanilla_us"] for d in detail], 1),
    }


# --- (b) per attestation ----------------------------------------------------------------------------------


def attestation_cases(dev: tuple[bytes, bytes, bytes]) -> dict[str, tuple[Attestation, int, dict[str, bytes]]]:
    """(attestation, the time to verify it at, roots) per format: the real fixtures at their pinned times."""
    nitro, tdx, snp = FIXTURES / "nitro", FIXTURES / "tdx", FIXTURES / "snp"
    root, platform_key, platform_chain = dev
    now = int(time.time())
    report = key_binding(CHAIN_ID, NODE.address, ENCLAVE.address, bytes(32))
    dev_doc = make_dev_evidence(platform_key, platform_chain, enclave_measurement(), report, now)
    return {
        "nitro": (Attestation("nitro", (nitro / "nitro_attestation.bin").read_bytes()), 1766668537, {}),
        "tdx": (
            Attestation("tdx", (tdx / "tdx_quote").read_bytes(), (tdx / "tdx_quote_collateral.json").read_bytes()),
            1751328000,
            {},
        ),
        "snp": (
            Attestation(
                "snp",
                bytes.fromhex((snp / "report_milan.hex").read_text().strip()),
                (snp / "vcek_milan.der").read_bytes(),
            ),
            1751328000,
            {},
        ),
        "dev": (Attestation("dev", dev_doc), now, {"dev": root}),
    }


def bench_attestations(dev: tuple[bytes, bytes, bytes], rounds: int, reps: int, vanilla_us: float) -> dict[str, Any]:
    cases = attestation_cases(dev)
    for name, (att, now, roots) in cases.items():  # warm: imports, pinned roots parsed once per process
        claims = verify_attestation(att, now, roots)
        assert claims.format == name, (name, claims.format)
    detail: list[dict[str, float]] = []
    for r in range(rounds):
        figures = {}
        names = list(cases) if r % 2 == 0 else list(reversed(cases))
        for name in names:
            att, now, roots = cases[name]
            cpu = time.process_time()
            for _ in range(reps):
                verify_attestation(att, now, roots)
            figures[name] = round((time.process_time() - cpu) / reps * 1e6, 1)
        detail.append(figures)
    out: dict[str, Any] = {"verifications_per_round": reps, "rounds_detail": detail}
    for name in cases:
        us = spread([d[name] for d in detail], 1)
        out[name] = {"us": us, "x_vanilla_receipt": round(us["median"] / vanilla_us, 1)}
    out["vanilla_receipt_us_median"] = vanilla_us
    return out


# --- node latency on a devnet -----------------------------------------------------------------------------


def check_tee_answer(client: Client, url: str, model: str, example: Any, socket_path: Path) -> dict[str, Any]:
    """One paid tee request: its receipt must be signed by the enclave's key (not the node's account
    key), and its output must equal a vanilla request's (the enclave ran the same model)."""
    answers = {}
    for mode in ("tee", "vanilla"):
        ((body, headers),) = node_requests(client, url, model, example, 1, mode)
        answers[mode] = httpx.post(url, content=body, headers={"content-type": "application/json", **headers}).json()
    signed = SignedReceipt.from_json(answers["tee"]["receipt"])
    signer = signed.receipt.signer(signed.signature)
    with EnclaveClient(socket_path) as enclave:
        enclave_key = enclave.key()["address"]
    if signed.receipt.mode != "tee" or signer != enclave_key or signer == signed.receipt.node:
        raise RuntimeError(
            f"the tee answer's receipt is mode {signed.receipt.mode}, signed by {signer}, not the enclave {enclave_key}"
        )
    if answers["tee"]["output"] != answers["vanilla"]["output"]:
        raise RuntimeError(f"tee output {answers['tee']['output']} != vanilla {answers['vanilla']['output']}")
    return {"enclave_key": signer, "node": signed.receipt.node, "output_equals_vanilla": True}


def bench_terms(chain_id: str, node: str) -> Terms:
    """Terms for one iris request on the devnet's chain for `node` (the enclave takes prices as given)."""
    return Terms(chain_id, node, CLIENT.address, "0x" + secrets.token_bytes(32).hex(), 1, 1_000, "request", 1_000)


def enclave_round_trip(
    socket_path: Path, platform_dir: Path, model_path: Path, example: Any, chain_id: str, node: str, n: int
) -> dict[str, float]:
    """One tee infer through the enclave's socket (sync and asyncio clients, one at a time: the whole
    round trip, model run and receipt signature in the enclave process), against what the node does
    instead in vanilla mode (OnnxModel prepare + run in process; its receipt signature is
    `vanilla_sign_in_process`), and against the enclave's own work on one request (an Enclave runtime
    on a DEV platform in this process: prepare, run, hash inputs and outputs, sign): p50 µs of each.
    The devnet's enclave has attested for (`chain_id`, `node`): the node registered it at start."""
    data = model_path.read_bytes()
    model_id = "sha256:" + sha256(data).hex()
    local_model = OnnxModel(data)
    receipt = replace(make_item("tee", 1, "rtt").receipt.receipt, chain_id=chain_id)
    models = WORK / f"enclave-models-{os.getpid()}"
    models.mkdir(parents=True, exist_ok=True)
    (models / f"{model_id.removeprefix('sha256:')}.onnx").write_bytes(data)
    store = ModelStore(models)
    try:
        enclave = Enclave(open_platform("dev", enclave_measurement(), platform_dir), enclave_measurement(), store)
        enclave.attest(chain_id, node, bytes(32))
        enclave.load(model_id, "onnx", 0, 1)
        # a request id runs once per enclave: fresh terms for every call (made before the clock)
        terms = [bench_terms(chain_id, node) for _ in range(n)]
        warm = [bench_terms(chain_id, node) for _ in range(50)]
        run_local, sign_local, handled = [], [], []
        for _ in range(50):
            local_model.run(local_model.prepare(example))
            enclave.infer(model_id, example, warm.pop())
        for i in range(n):
            t = time.perf_counter()
            local_model.run(local_model.prepare(example))
            run_local.append(time.perf_counter() - t)
            r = replace(receipt, timestamp=i)
            t = time.perf_counter()
            r.sign(NODE)
            sign_local.append(time.perf_counter() - t)
            t = time.perf_counter()
            enclave.infer(model_id, example, terms[i])
            handled.append(time.perf_counter() - t)
    finally:
        store.close()
        shutil.rmtree(models, ignore_errors=True)
    sync = []
    with EnclaveClient(socket_path) as remote:
        if model_id not in remote.key()["models"]:
            raise RuntimeError(f"the devnet's enclave has not loaded {model_id}")
        for _ in range(50):
            remote.infer(model_id, example, bench_terms(chain_id, node))
        for i in range(n):
            t = time.perf_counter()
            remote.infer(model_id, example, terms[i])
            sync.append(time.perf_counter() - t)

    again = [bench_terms(chain_id, node) for _ in range(n)]

    async def run_async() -> list[float]:
        out = []
        remote = AsyncEnclaveClient(socket_path, pool_size=1)
        try:
            for _ in range(50):
                await remote.infer(model_id, example, bench_terms(chain_id, node))
            for i in range(n):
                t = time.perf_counter()
                await remote.infer(model_id, example, again[i])
                out.append(time.perf_counter() - t)
        finally:
            await remote.close()
        return out

    asynchronous = asyncio.run(run_async())
    us = 1e6
    return {
        "calls": n,
        "vanilla_run_in_process_p50_us": round(percentile(run_local, 0.5) * us, 1),
        "vanilla_sign_in_process_p50_us": round(percentile(sign_local, 0.5) * us, 1),
        "enclave_infer_in_process_p50_us": round(percentile(handled, 0.5) * us, 1),
        "socket_sync_p50_us": round(percentile(sync, 0.5) * us, 1),
        "socket_async_p50_us": round(percentile(asynchronous, 0.5) * us, 1),
        "socket_async_p99_us": round(percentile(asynchronous, 0.99) * us, 1),
        "socket_async_minus_vanilla_run_and_sign_p50_us": round(
            (percentile(asynchronous, 0.5) - percentile(run_local, 0.5) - percentile(sign_local, 0.5)) * us, 1
        ),
    }


PROBE = """
import json, secrets, sys, time
from haca.enclave.client import EnclaveClient
from haca.enclave.runtime import Terms
socket_path, model_id, example, terms = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
seconds = float(sys.argv[5])
out = []
with EnclaveClient(socket_path) as enclave:
    terms["request_id"] = "0x" + secrets.token_bytes(32).hex()  # a request id runs once per enclave
    enclave.infer(model_id, example, Terms.from_json(terms))
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        terms["request_id"] = "0x" + secrets.token_bytes(32).hex()
        t = time.perf_counter()
        enclave.infer(model_id, example, Terms.from_json(terms))
        out.append(time.perf_counter() - t)
        time.sleep(0.002)
out.sort()
print(json.dumps({"calls": len(out), "p50_us": out[len(out) // 2] * 1e6, "p90_us": out[int(len(out) * 0.9)] * 1e6}))
"""


def enclave_under_load(
    socket_path: Path,
    model_id: str,
    example: Any,
    terms: Terms,
    url: str,
    reqs: list[tuple[bytes, dict[str, str]]],
    concurrency: int,
) -> dict[str, float]:
    """The enclave's infer round trip seen from a third process, sequential calls 2 ms apart, first
    with the machine idle, then while `reqs` (vanilla) load the node at `concurrency`: how long a tee
    request waits for the enclave process to get a core when the node, the client and the validator
    keep both busy."""
    args = [
        sys.executable,
        "-c",
        PROBE,
        str(socket_path),
        model_id,
        json.dumps(example),
        json.dumps(terms.to_json()),
    ]
    idle = json.loads(subprocess.run([*args, "1.5"], capture_output=True, text=True, check=True).stdout)
    probe = subprocess.Popen([*args, "1.5"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)  # the probe is connected before the load starts
        asyncio.run(post_all(url, reqs, concurrency))
        loaded = json.loads(probe.communicate(timeout=60)[0])
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait()
    return {
        "idle_p50_us": round(idle["p50_us"], 1),
        "idle_p90_us": round(idle["p90_us"], 1),
        f"under_c{concurrency}_vanilla_load_p50_us": round(loaded["p50_us"], 1),
        f"under_c{concurrency}_vanilla_load_p90_us": round(loaded["p90_us"], 1),
        "calls_under_load": loaded["calls"],
    }


def bench_node(work: Path, platform_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """`platform_dir`: a DEV platform for the enclave runtime run in this process."""
    home = work / "home"
    manifest = json.loads((example_models_dir() / "manifest.json").read_text())
    entry = next(m for m in manifest["models"] if m["name"] == args.model)
    example, model_path = entry["example_input"], example_models_dir() / entry["file"]
    print(f"devnet (1 validator, hub, DEV enclave0, node0 tee+vanilla) in {home} …", flush=True)
    started = time.perf_counter()
    net = Devnet(home)
    try:
        up(home, validators=1, timeout_commit="500ms")
        startup_s = round(time.perf_counter() - started, 1)
        client = Client.from_home(home, "dev1")
        client.deposit(10**15)
        url = f"{net.status()['nodes'][0]['url']}/v1/infer"
        pids = {svc.name: svc.pid for svc in net.load().services}
        measured = {"node": pids["node0"], "enclave": pids["enclave0"]}
        result: dict[str, Any] = {"model": args.model, "devnet_startup_s": startup_s}
        result["tee_answer"] = check_tee_answer(client, url, args.model, example, net.enclave_socket("enclave0"))
        for concurrency in (1, 16):  # warm-up, both modes
            for mode in ("tee", "vanilla"):
                asyncio.run(post_all(url, node_requests(client, url, args.model, example, 100, mode), concurrency))
        detail = []
        for r in range(args.rounds):
            figures: dict[str, Any] = {}
            for concurrency in (1, 16):
                print(f"round {r + 1}/{args.rounds}, concurrency {concurrency}: tee and vanilla batches …", flush=True)
                latencies: dict[str, list[float]] = {"tee": [], "vanilla": []}
                cpu = {(mode, proc): 0.0 for mode in latencies for proc in measured}
                elapsed = {"tee": 0.0, "vanilla": 0.0}
                for b in range(args.batches):  # A B B A …: tee and vanilla batches take turns
                    for mode in ("tee", "vanilla") if (b + r) % 2 == 0 else ("vanilla", "tee"):
                        reqs = node_requests(client, url, args.model, example, args.batch, mode)
                        before = {proc: cpu_seconds(pid) for proc, pid in measured.items()}
                        t = time.perf_counter()
                        latencies[mode] += asyncio.run(post_all(url, reqs, concurrency))[0]
                        elapsed[mode] += time.perf_counter() - t
                        for proc, pid in measured.items():
                            cpu[(mode, proc)] += cpu_seconds(pid) - before[proc]
                row = {}
                for mode in ("tee", "vanilla"):
                    row[f"{mode}_p50_ms"] = round(percentile(latencies[mode], 0.5) * 1e3, 3)
                    row[f"{mode}_p99_ms"] = round(percentile(latencies[mode], 0.99) * 1e3, 3)
                    row[f"{mode}_rps"] = round(len(latencies[mode]) / elapsed[mode], 1)
                    for proc in measured:
                        row[f"{mode}_{proc}_cpu_ms_per_request"] = round(
                            cpu[(mode, proc)] / len(latencies[mode]) * 1e3, 3
                        )
                row["ratio"] = round(row["tee_p50_ms"] / row["vanilla_p50_ms"], 3)
                row["tee_minus_vanilla_p50_ms"] = round(row["tee_p50_ms"] - row["vanilla_p50_ms"], 3)
                # The same requests interleaved one by one (tee, vanilla, tee, …) in one load: both modes
                # meet exactly the same machine, so the difference is what tee adds on a request's path.
                tee_reqs = node_requests(client, url, args.model, example, args.mixed, "tee")
                vanilla_reqs = node_requests(client, url, args.model, example, args.mixed, "vanilla")
                mixed = [req for pair in zip(tee_reqs, vanilla_reqs, strict=True) for req in pair]
                mixed_latencies = asyncio.run(post_all(url, mixed, concurrency))[0]
                row["mixed_tee_p50_ms"] = round(percentile(mixed_latencies[0::2], 0.5) * 1e3, 3)
                row["mixed_vanilla_p50_ms"] = round(percentile(mixed_latencies[1::2], 0.5) * 1e3, 3)
                row["mixed_ratio"] = round(row["mixed_tee_p50_ms"] / row["mixed_vanilla_p50_ms"], 3)
                row["mixed_tee_minus_vanilla_p50_ms"] = round(row["mixed_tee_p50_ms"] - row["mixed_vanilla_p50_ms"], 3)
                row["other_cometbft_processes"] = foreign_devnet_processes(work)
                figures[f"c{concurrency}"] = row
                print(f"    {row}", flush=True)
            detail.append(figures)
        result["requests_per_mode_per_round"] = args.batches * args.batch
        result["rounds_detail"] = detail
        for c in ("c1", "c16"):
            keys = [k for k in detail[0][c] if not k.endswith("p99_ms") and k != "other_cometbft_processes"]
            result[c] = {key: spread([d[c][key] for d in detail]) for key in keys}
        print("enclave infer round trip …", flush=True)
        node_address = net.status()["nodes"][0]["address"]
        socket_path = net.enclave_socket("enclave0")
        result["enclave_round_trip"] = enclave_round_trip(
            socket_path, platform_dir, model_path, example, client.chain.chain_id, node_address, 2000
        )
        reqs = node_requests(client, url, args.model, example, 4 * args.batch, "vanilla")
        model_id = "sha256:" + sha256(model_path.read_bytes()).hex()
        result["enclave_under_load"] = enclave_under_load(
            socket_path, model_id, example, bench_terms(client.chain.chain_id, node_address), url, reqs, 16
        )
        result["node_pending_receipts_after"] = httpx.get(url.replace("/v1/infer", "/healthz")).json()[
            "pending_receipts"
        ]
        client.close()
        return result
    finally:
        if net.exists():
            net.stop()
        shutil.rmtree(home, ignore_errors=True)


# --- the run ----------------------------------------------------------------------------------------------


def timed(label: str, fn: Callable[[], dict[str, Any]], seconds: dict[str, float]) -> dict[str, Any]:
    print(f"{label} …", flush=True)
    started = time.perf_counter()
    out = fn()
    seconds[label] = round(time.perf_counter() - started, 1)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    seconds: dict[str, float] = {}
    result: dict[str, Any] = {"rounds": args.rounds}
    with work_dir("tee") as work:
        load_before, foreign = loadavg(), foreign_devnet_processes(work)
        dev = dev_platform(work / "dev")
        result["verify"] = timed(
            "verify: TeeVerifier / VanillaVerifier", lambda: bench_verify(args.rounds, args.receipts), seconds
        )
        vanilla_us = result["verify"]["vanilla_us"]["median"]
        result["attestations"] = timed(
            "verify_attestation: nitro, tdx, snp, dev",
            lambda: bench_attestations(dev, args.rounds, args.attestations, vanilla_us),
            seconds,
        )
        result["chain"] = timed(
            "chain: HacaApp settling tee / vanilla receipts",
            lambda: bench_chain(work / "chain", dev, args.rounds, args.blocks, args.settle_txs),
            seconds,
        )
        if not args.no_node:
            result["node"] = timed(
                "node: /v1/infer tee / vanilla",
                lambda: bench_node(work / "node", work / "dev" / "platform", args),
                seconds,
            )
    v = result["verify"]
    summary: dict[str, Any] = {
        "tee_receipts_verified_per_s_one_core": v["tee_receipts_verified_per_s_one_core"],
        "tee_receipts_verified_per_s_target": TARGET_VERIFIED_PER_S,
        "tee_receipts_verified_per_s_met": v["tee_receipts_verified_per_s_one_core"]["median"] >= TARGET_VERIFIED_PER_S,
        "verify_tee_us": v["tee_us"],
        "verify_vanilla_us": v["vanilla_us"],
        "verify_tee_vs_vanilla": v["tee_vs_vanilla"],
        "chain_settle_tee_us": result["chain"]["tee_us"],
        "chain_settle_vanilla_us": result["chain"]["vanilla_us"],
        "chain_settle_tee_vs_vanilla": result["chain"]["tee_vs_vanilla"],
        "attestation_us_median": {k: result["attestations"][k]["us"]["median"] for k in ("nitro", "tdx", "snp", "dev")},
    }
    if "node" in result:
        node = result["node"]
        summary["tee_vs_vanilla_latency_ratio"] = {"c1": node["c1"]["ratio"], "c16": node["c16"]["ratio"]}
        summary["tee_vs_vanilla_latency_ratio_interleaved"] = {
            "c1": node["c1"]["mixed_ratio"],
            "c16": node["c16"]["mixed_ratio"],
        }
        summary["tee_minus_vanilla_p50_ms_interleaved"] = {
            "c1": node["c1"]["mixed_tee_minus_vanilla_p50_ms"],
            "c16": node["c16"]["mixed_tee_minus_vanilla_p50_ms"],
        }
        summary["tee_vs_vanilla_latency_ratio_target"] = TARGET_LATENCY_RATIO
        summary["tee_vs_vanilla_latency_ratio_met"] = {
            c: node[c]["ratio"]["median"] <= TARGET_LATENCY_RATIO for c in ("c1", "c16")
        }
    result = {"summary": summary, **result}
    result["seconds"] = seconds
    result["machine"] = machine(load_before, foreign)
    result["date"] = timestamp()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every measurement (default 5)")
    parser.add_argument("--receipts", type=int, default=2000, help="distinct receipts per verifier per round")
    parser.add_argument("--attestations", type=int, default=50, help="verify_attestation calls per format per round")
    parser.add_argument("--blocks", type=int, default=4, help="chain: blocks per mode per round (default 4)")
    parser.add_argument("--settle-txs", type=int, default=4, help="chain: MsgSettle txs of 64 items per block")
    parser.add_argument("--batch", type=int, default=125, help="node: requests per batch (default 125)")
    parser.add_argument("--batches", type=int, default=4, help="node: batches per mode, concurrency and round (4)")
    parser.add_argument("--mixed", type=int, default=250, help="node: requests per mode in the interleaved load")
    parser.add_argument("--model", default="iris")
    parser.add_argument("--no-node", action="store_true", help="skip the devnet (CPU figures only)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if (
        min(
            args.rounds,
            args.receipts,
            args.attestations,
            args.blocks,
            args.settle_txs,
            args.batch,
            args.batches,
            args.mixed,
        )
        < 1
    ):
        parser.error("every count must be positive")
    exit_on_sigterm()
    started = time.perf_counter()
    result = run(args)
    result["seconds"]["total"] = round(time.perf_counter() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")

    s = result["summary"]
    print("\nfigure (min / median / max)")
    print(f"  verify tee µs/receipt           {fmt(s['verify_tee_us'])}")
    print(f"  verify vanilla µs/receipt       {fmt(s['verify_vanilla_us'])}")
    print(f"  verify tee / vanilla            {fmt(s['verify_tee_vs_vanilla'])}")
    met = "met" if s["tee_receipts_verified_per_s_met"] else "NOT met"
    print(f"  tee receipts verified/s, 1 core {fmt(s['tee_receipts_verified_per_s_one_core'])} (target >= 5000: {met})")
    print(f"  chain settle tee µs/receipt     {fmt(s['chain_settle_tee_us'])}")
    print(f"  chain settle vanilla µs/receipt {fmt(s['chain_settle_vanilla_us'])}")
    print(f"  chain settle tee / vanilla      {fmt(s['chain_settle_tee_vs_vanilla'])}")
    for name in ("nitro", "tdx", "snp", "dev"):
        a = result["attestations"][name]
        print(f"  verify_attestation {name:<6} µs    {fmt(a['us'])} ({a['x_vanilla_receipt']} x a vanilla receipt)")
    if "node" in result:
        node = result["node"]
        for c in ("c1", "c16"):
            ok = "met" if s["tee_vs_vanilla_latency_ratio_met"][c] else "NOT met"
            n = node[c]
            print(
                f"  node {c:<3} p50 ms tee {fmt(n['tee_p50_ms'])}, vanilla {fmt(n['vanilla_p50_ms'])};"
                f" ratio {fmt(n['ratio'])} (target <= 1.05: {ok})"
            )
            print(
                f"           tee - vanilla p50 ms {fmt(n['tee_minus_vanilla_p50_ms'])};"
                f" req/s tee {fmt(n['tee_rps'])}, vanilla {fmt(n['vanilla_rps'])}"
            )
            print(
                f"           interleaved p50 ms tee {fmt(n['mixed_tee_p50_ms'])},"
                f" vanilla {fmt(n['mixed_vanilla_p50_ms'])}; ratio {fmt(n['mixed_ratio'])},"
                f" tee - vanilla {fmt(n['mixed_tee_minus_vanilla_p50_ms'])}"
            )
            print(
                f"           CPU ms/request node tee {fmt(n['tee_node_cpu_ms_per_request'])},"
                f" vanilla {fmt(n['vanilla_node_cpu_ms_per_request'])};"
                f" enclave (tee) {fmt(n['tee_enclave_cpu_ms_per_request'])}"
            )
        print(f"  enclave infer round trip: {node['enclave_round_trip']}")
        print(f"  enclave infer round trip from another process: {node['enclave_under_load']}")
    print(f"seconds: {result['seconds']}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
