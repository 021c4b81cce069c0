"""What zkml costs through HACA against raw EZKL, how fast validators verify proofs, and the trust gap.

Four measurements:

  prove      for three circuits (tiny: the tests' 4 → 3 linear layer; mlp-regressor: the devnet's
             circuit; digits-cnn: the example CNN at logrows 16), `haca.proofs.zk.proof.prove` against
             `ezkl.gen_witness` + `ezkl.prove` called directly on the same compiled circuit, proving key,
             SRS and input file, taking turns inside every round. prove_ratio_vs_ezkl = HACA / raw within
             one round (target <= 1.1). Also the proof's size.
  verify     `verify_proof` (bytes in, as validators and clients call it), `ZkmlVerifier.verify` (the
             validator's path: a receipt decoded from JSON, its signature, the proof, the instances
             commitment; a fresh VerdictCache each call so nothing is cached) and raw `ezkl.verify` on the
             files, taking turns call by call. verify_ratio_vs_ezkl = verify_proof / raw (target <= 1.1).
  one core   `verify_proof` in a child process pinned to one CPU with RAYON_NUM_THREADS=1, over the
             distinct proofs made in the prove part: zk_proofs_verified_per_s (CPU time; target >= 20 for
             the small circuits, tiny and mlp-regressor).
  trust gap  on a 1-validator devnet (timeout_commit 300ms, node0 proving mlp-regressor with one worker),
             sequential zkml inferences: answer latency (`Client.infer`, status proving), then answer →
             proof stored at the node → chain record `verified`; p50/p95 per round.

With --probe it also proves a family of synthetic MLPs (16 → W → W → 1, ReLU) at logrows 15 to 18, once
each in a child process, for its wall time, CPU time and peak memory: where this machine stops coping.
Without --probe the previous file's probe section is carried over, dated.

Circuits are built once per machine under build/bench-circuits/ (digits-cnn: ~1 min of setup, a ~2 GB
proving key); the tiny one is the tests' (build/test-circuits/), mlp-regressor is `make setup`'s.
Results: bench/results/zk.json. The devnet lives in bench/.work/ and is stopped and deleted at the end,
also on an error or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    exit_on_sigterm,
    fmt,
    foreign_devnet_processes,
    loadavg,
    machine,
    mean,
    meminfo_mb,
    percentile,
    spread,
    stop_devnet,
    timestamp,
    work_dir,
)

from haca.chain.modules.auth.keeper import FeeParams
from haca.chain.modules.inference.keeper import InferenceParams
from haca.client.sdk import Client
from haca.crypto.keys import PrivateKey
from haca.devnet.network import Devnet, up
from haca.devnet.services import EXAMPLE_PRICES
from haca.proofs.verifier import CircuitArtefacts, VerdictCache, VerifyContext, ZkmlVerifier
from haca.proofs.zk.circuit import Circuit, build_circuit, load_circuit
from haca.proofs.zk.proof import (
    Instances,
    decode_proof,
    ezkl_proof_json,
    instances_commitment,
    proof_instances,
    prove,
    verify_proof,
)
from haca.proofs.zk.srs import file_sha256, make_dev_srs, srs_file
from haca.types.inference import MsgSettle, SettlementItem
from haca.types.modes import Status
from haca.types.payment import PaymentAuthorization, SignedPayment
from haca.types.receipt import Receipt, SignedReceipt
from haca.types.tx import build_tx

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
RESULTS = ROOT / "results" / "zk.json"
BUILD = REPO / "build"
MODELS = BUILD / "models"
SETUP_SRS = BUILD / "srs"  # make setup's dev SRS (logrows 15)
BENCH_CIRCUITS = BUILD / "bench-circuits"
BENCH_SRS = BENCH_CIRCUITS / "srs"  # dev SRS of the other sizes, made here once
TARGET_RATIO = 1.1
TARGET_VERIFIED_PER_S = 20
TARGET_FEE_RATIO = 1.0  # a zkml receipt's settlement tx fee at most the inference fee it earns
BATCH_FIGURE = 5  # receipts per settlement tx for the per-receipt fee in a shared tx
SIZES = ("tiny", "mlp-regressor", "digits-cnn")
SMALL = ("tiny", "mlp-regressor")  # the circuits the verified/s target is for
DIGITS_LOGROWS = 16
PROBE_WIDTHS = (128, 256, 384, 512)  # synthetic 16 → W → W → 1 MLPs: logrows 15, 16, 17, 18
PRACTICAL_PROVE_S = 60  # a trust gap of a minute: beyond it, zkml stops being "verified soon after"
PROBE_MAX_LOGROWS = 18  # each step doubles prove time and memory: 19 would be ~11 GB, 1.5-3 min a proof
BUILD_NOTE = "bench-build.json"  # how long building the circuit took, when this bench built it
CHAIN_ID = "haca-bench-zk"
NODE = PrivateKey.from_seed("bench-zk-node")
CLIENT = PrivateKey.from_seed("bench-zk-client")


# --- circuits ---------------------------------------------------------------------------------------------


def srs_for_build(logrows: int) -> Path:
    """The SRS a bench circuit is set up against: make setup's where it has that size, else one made here."""
    setup = srs_file(SETUP_SRS, logrows)
    return setup if setup.exists() else make_dev_srs(BENCH_SRS, logrows)


_SRS_BY_HASH: dict[str, Path] = {}


def srs_of(circuit: Circuit) -> Path:
    """The SRS file the circuit was set up against (found by its hash, so the two SRS folders never mix)."""
    if circuit.srs_hash not in _SRS_BY_HASH:
        for directory in (SETUP_SRS, BENCH_SRS, REPO / "build" / "test-circuits"):
            path = srs_file(directory, circuit.logrows)
            if path.exists() and file_sha256(path) == circuit.srs_hash:
                _SRS_BY_HASH[circuit.srs_hash] = path
                break
        else:
            raise RuntimeError(f"no SRS of logrows {circuit.logrows} hashing to {circuit.srs_hash}")
    return _SRS_BY_HASH[circuit.srs_hash]


def manifest_example(name: str) -> list[list[float]]:
    """A model's example input from build/models/manifest.json, as one flat list per input."""
    import numpy as np

    entries = {m["name"]: m for m in json.loads((MODELS / "manifest.json").read_text())["models"]}
    return [[float(v) for v in np.asarray(entries[name]["example_input"], dtype=np.float64).ravel()]]


def tiny() -> tuple[Circuit, list[list[float]]]:
    """The tests' tiny circuit (seed 1), built or reused under build/test-circuits/."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.zkhelpers import INPUT, tiny_circuit

    return tiny_circuit(1), [list(row) for row in INPUT]


def mlp_regressor() -> tuple[Circuit, list[list[float]]]:
    circuit = load_circuit(BUILD / "circuits" / "mlp-regressor")
    if circuit is None:
        raise SystemExit("no build/circuits/mlp-regressor: run make setup")
    return circuit, manifest_example("mlp-regressor")


def digits_cnn() -> tuple[Circuit, list[list[float]]]:
    """digits-cnn calibrated on its example at logrows 16 (left alone, calibration picks 17)."""
    example = manifest_example("digits-cnn")
    directory = BENCH_CIRCUITS / "digits-cnn"
    model = MODELS / "digits-cnn.onnx"
    circuit = timed_build(lambda: build_circuit(model, example, directory, srs_for_build, max_logrows=DIGITS_LOGROWS))
    return circuit, example


def wide_mlp(width: int) -> tuple[Circuit, list[list[float]]]:
    """A synthetic 16 → width → width → 1 ReLU MLP (weights from a fixed seed: same bytes every run)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(width)
    nodes, weights, previous, fan_in = [], [], "x", 16
    for layer in range(2):
        w = (rng.normal(size=(fan_in, width)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.normal(size=(width,)) * 0.1).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"W{layer}"), numpy_helper.from_array(b, f"b{layer}")]
        nodes += [
            helper.make_node("MatMul", [previous, f"W{layer}"], [f"h{layer}"]),
            helper.make_node("Add", [f"h{layer}", f"b{layer}"], [f"a{layer}"]),
            helper.make_node("Relu", [f"a{layer}"], [f"r{layer}"]),
        ]
        previous, fan_in = f"r{layer}", width
    weights.append(numpy_helper.from_array((rng.normal(size=(fan_in, 1)) / np.sqrt(fan_in)).astype(np.float32), "Wo"))
    nodes.append(helper.make_node("MatMul", [previous, "Wo"], ["y"]))
    graph = helper.make_graph(
        nodes,
        f"wide{width}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="haca-bench")
    model.ir_version = 8
    name = f"wide-{width}x2"
    BENCH_CIRCUITS.mkdir(parents=True, exist_ok=True)
    path = BENCH_CIRCUITS / f"{name}.onnx"
    onnx.save(model, str(path))
    example = [[float(v) for v in rng.uniform(-1, 1, size=16)]]
    circuit = timed_build(
        lambda: build_circuit(path, example, BENCH_CIRCUITS / name, srs_for_build, max_logrows=PROBE_MAX_LOGROWS)
    )
    return circuit, example


def timed_build(build: Callable[[], Circuit]) -> Circuit:
    """`build()`, noting beside the circuit how long it took when it did build (a cache hit takes well
    under a second), so later runs can report the setup cost they did not pay."""
    started = time.perf_counter()
    circuit = build()
    took = time.perf_counter() - started
    if took > 2:
        (circuit.directory / BUILD_NOTE).write_text(json.dumps({"build_s": round(took, 1), "date": timestamp()}))
    return circuit


def settings_rows(circuit: Circuit) -> dict[str, Any]:
    doc = json.loads(circuit.settings_path.read_text())
    note = circuit.directory / BUILD_NOTE
    return {
        "build_s": json.loads(note.read_text())["build_s"] if note.exists() else None,
        "logrows": circuit.logrows,
        "num_rows": doc.get("num_rows"),
        "num_inner_cols": doc["run_args"].get("num_inner_cols"),
        "pk_bytes": circuit.pk_path.stat().st_size,
        "vk_bytes": circuit.vk_path.stat().st_size,
    }


def proof_sizes(wire: bytes, ezkl_json: bytes | None = None) -> dict[str, int]:
    """The wire form's size (what a settlement carries), the proof transcript's, and the JSON EZKL
    writes for the same proof (what travelled before the binary encoding)."""
    sizes = {"wire_bytes": len(wire), "proof_bytes": len(decode_proof(wire)[0])}
    return {**sizes, "json_bytes": len(ezkl_json)} if ezkl_json is not None else sizes


def settlement_fees(name: str, wire: bytes, ezkl_json: bytes | None = None) -> dict[str, Any]:
    """At devnet prices (genesis fee params, the example model's price): the tx fee a node pays to
    settle one zkml receipt alone (a MsgSettle of one item, proof included) against the inference
    fee it earns. The settlement fee proper is burned from the client's escrow, not the node's."""
    price = EXAMPLE_PRICES.get(name)
    fees = FeeParams()
    instances = proof_instances(wire)
    receipt = SignedReceipt.from_json(zkml_receipt(instances, price or 0))
    auth = PaymentAuthorization(
        CHAIN_ID,
        CLIENT.address,
        NODE.address,
        receipt.receipt.request_id,
        receipt.receipt.model_id,
        "zkml",
        receipt.receipt.fee,
        10**9,
    )
    payment = SignedPayment("request", auth, auth.sign(CLIENT))

    def tx_fee(evidence: bytes, items: int = 1) -> int:
        msg = MsgSettle(tuple(SettlementItem(receipt, payment, evidence) for _ in range(items)))
        return build_tx(NODE, CHAIN_ID, 0, (msg,), fees.tx_fee_base, fees.tx_fee_per_byte).fee

    out: dict[str, Any] = {
        "tx_fee_base": fees.tx_fee_base,
        "tx_fee_per_byte": fees.tx_fee_per_byte,
        "settlement_tx_fee": tx_fee(wire),
        # the settler packs several proofs per tx, sharing its base fee and envelope
        f"settlement_tx_fee_per_receipt_batch_of_{BATCH_FIGURE}": tx_fee(wire, BATCH_FIGURE) // BATCH_FIGURE,
        "inference_fee": price,
        "burned_settlement_fee": InferenceParams().settlement_fee_for(price) if price is not None else None,
    }
    if ezkl_json is not None:
        out["settlement_tx_fee_ezkl_json"] = tx_fee(ezkl_json)
    if price:
        out["tx_fee_per_inference_fee"] = round(out["settlement_tx_fee"] / price, 3)
        batched = out[f"settlement_tx_fee_per_receipt_batch_of_{BATCH_FIGURE}"]
        out[f"tx_fee_per_inference_fee_batch_of_{BATCH_FIGURE}"] = round(batched / price, 3)
        out["ratio_met"] = out["tx_fee_per_inference_fee"] <= TARGET_FEE_RATIO
    return out


# --- (a) prove and verify: HACA against raw EZKL -----------------------------------------------------------


class RawEzkl:
    """EZKL called directly on one circuit's files, as a user of EZKL would: input and proof on disk."""

    def __init__(self, circuit: Circuit, inputs: list[list[float]], directory: Path) -> None:
        self.circuit, self.srs = circuit, srs_of(circuit)
        directory.mkdir(parents=True, exist_ok=True)
        self.input = directory / "input.json"
        self.input.write_text(json.dumps({"input_data": inputs}))
        self.witness, self.proof = directory / "witness.json", directory / "proof.json"

    def prove(self) -> bytes:
        import ezkl

        c = self.circuit
        ezkl.gen_witness(str(self.input), str(c.compiled_path), str(self.witness), None, None)
        ezkl.prove(str(self.witness), str(c.compiled_path), str(c.pk_path), str(self.proof), str(self.srs))
        return self.proof.read_bytes()

    def verify(self, proof_file: Path) -> bool:
        import ezkl

        c = self.circuit
        return bool(ezkl.verify(str(proof_file), str(c.settings_path), str(c.vk_path), str(self.srs), False))


def zkml_receipt(instances: Instances, fee: int = 1_000) -> dict[str, Any]:
    """A node-signed zkml receipt committing to these instances, as JSON (decoded afresh per check)."""
    receipt = Receipt(
        chain_id=CHAIN_ID,
        node=NODE.address,
        client=CLIENT.address,
        request_id="0x" + secrets.token_bytes(32).hex(),
        model_id="sha256:" + "00" * 32,
        mode="zkml",
        input_hash="0x" + "11" * 32,
        output_hash="0x" + "22" * 32,
        fee=fee,
        height_hint=10,
        timestamp=int(time.time()),
        instances_hash=instances_commitment(instances),
    )
    return SignedReceipt(receipt, receipt.sign(NODE)).to_json()


def bench_prove_verify(
    name: str, circuit: Circuit, inputs: list[list[float]], work: Path, rounds: int, proves: int, verifies: int
) -> dict[str, Any]:
    """`rounds` rounds; in each, `proves` HACA proves and as many raw ones taking turns, then `verifies`
    calls of each verifier taking turns on that round's HACA proof."""
    srs = srs_of(circuit)
    settings, vk = circuit.settings_path.read_bytes(), circuit.vk_path.read_bytes()
    raw = RawEzkl(circuit, inputs, work / name)
    artefacts = CircuitArtefacts(settings, vk, circuit.settings_hash, circuit.vk_hash, srs)
    ctx = VerifyContext(CHAIN_ID, 20, 1_700_000_000, "", NODE.address, circuit=artefacts)
    proofs: list[bytes] = []
    detail: list[dict[str, float]] = []
    loads: list[dict[str, float]] = []
    haca_proof, raw_json = b"", b""
    for r in range(rounds):
        times: dict[str, list[float]] = {"haca": [], "raw": []}
        for p in range(proves):
            for who in ("haca", "raw") if (r + p) % 2 == 0 else ("raw", "haca"):
                started = time.perf_counter()
                proof = prove(circuit, inputs, srs).proof if who == "haca" else raw.prove()
                times[who].append(time.perf_counter() - started)
                proofs.append(proof)
                if who == "haca":
                    haca_proof = proof
                else:
                    raw_json = proof
        made = proof_instances(haca_proof)
        proof_file = work / name / f"verify-{r}.json"
        proof_file.write_bytes(ezkl_proof_json(haca_proof))  # raw EZKL reads its JSON
        receipt_json = zkml_receipt(made)
        vtimes: dict[str, list[float]] = {"haca": [], "raw": [], "validator": []}
        for v in range(-1, verifies):  # call -1 of each: a warm-up, not timed
            order = ("haca", "raw", "validator") if (r + v) % 2 == 0 else ("validator", "raw", "haca")
            for who in order:
                started = time.perf_counter()
                if who == "haca":
                    ok = verify_proof(haca_proof, settings, vk, srs) == made
                elif who == "raw":
                    ok = raw.verify(proof_file)
                else:
                    verifier = ZkmlVerifier(VerdictCache())
                    verdict = verifier.verify(SignedReceipt.from_json(receipt_json), haca_proof, ctx)
                    ok = verdict.status == Status.VERIFIED and verifier.cache.misses == 2
                if v >= 0:
                    vtimes[who].append(time.perf_counter() - started)
                if not ok:
                    raise RuntimeError(f"{name}: {who} verification failed")
        figures = {
            "prove_s_haca": round(mean(times["haca"]), 3),
            "prove_s_raw": round(mean(times["raw"]), 3),
            "verify_ms_haca": round(percentile(vtimes["haca"], 0.5) * 1e3, 3),
            "verify_ms_raw": round(percentile(vtimes["raw"], 0.5) * 1e3, 3),
            "verify_ms_validator": round(percentile(vtimes["validator"], 0.5) * 1e3, 3),
        }
        figures["prove_ratio_vs_ezkl"] = round(figures["prove_s_haca"] / figures["prove_s_raw"], 3)
        figures["verify_ratio_vs_ezkl"] = round(figures["verify_ms_haca"] / figures["verify_ms_raw"], 3)
        figures["validator_verify_ratio_vs_ezkl"] = round(figures["verify_ms_validator"] / figures["verify_ms_raw"], 3)
        detail.append(figures)
        load = {"loadavg_1m": loadavg(), "other_cometbft_processes": foreign_devnet_processes(work)}
        print(f"  {name} round {r + 1}/{rounds}: {figures} {load}", flush=True)
        loads.append(load)
    keep = work / name / "proofs"
    keep.mkdir(parents=True, exist_ok=True)
    for i, proof in enumerate(proofs):
        (keep / f"{i}.json").write_bytes(proof)
    result: dict[str, Any] = {
        "circuit": {**settings_rows(circuit), "input_visibility": circuit.input_visibility},
        "proof": proof_sizes(haca_proof, raw_json),
        "settlement": settlement_fees(name, haca_proof, raw_json),
        "proves_per_side_per_round": proves,
        "verifies_per_side_per_round": verifies,
        "rounds_detail": detail,
    }
    for key in detail[0]:
        result[key] = spread([d[key] for d in detail])
    result["rounds_load"] = loads
    result["_proofs_dir"] = str(keep)
    return result


# --- (b) proofs verified per second on one core -----------------------------------------------------------


def one_core_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """In the child: pinned to one CPU, `verify_proof` over the given proofs, `n` calls in all."""
    os.sched_setaffinity(0, {int(spec["cpu"])})
    settings, vk = Path(spec["settings"]).read_bytes(), Path(spec["vk"]).read_bytes()
    srs = Path(spec["srs"])
    proofs = [Path(p).read_bytes() for p in spec["proofs"]]
    verify_proof(proofs[0], settings, vk, srs)  # warm: EZKL's first call sets up its thread pool
    n = int(spec["n"])
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        verify_proof(proofs[i % len(proofs)], settings, vk, srs)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"calls": n, "distinct_proofs": len(proofs), "cpu_s": round(cpu, 4), "wall_s": round(wall, 4)}


def one_core(circuit: Circuit, proofs_dir: Path, n: int) -> dict[str, Any]:
    cpu = min(os.sched_getaffinity(0))
    spec = {
        "cpu": cpu,
        "settings": str(circuit.settings_path),
        "vk": str(circuit.vk_path),
        "srs": str(srs_of(circuit)),
        "proofs": [str(p) for p in sorted(proofs_dir.glob("*.json"))],
        "n": n,
    }
    env = {**os.environ, "RAYON_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, __file__, "--one-core-worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"one-core verifier failed: {done.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    out["per_s_cpu"] = round(out["calls"] / out["cpu_s"], 2)
    out["per_s_wall"] = round(out["calls"] / out["wall_s"], 2)
    out["ms_cpu"] = round(out["cpu_s"] / out["calls"] * 1e3, 3)
    return out


# --- (c) the trust gap on a devnet ------------------------------------------------------------------------


def wait_status(fetch: Callable[[], str], leave: set[str], timeout: float, poll: float) -> tuple[str, float]:
    """Poll until `fetch()` is not in `leave`; (the status, when it was seen)."""
    deadline = time.monotonic() + timeout
    while True:
        status = fetch()
        if status not in leave:
            return status, time.perf_counter()
        if time.monotonic() > deadline:
            raise RuntimeError(f"still {status} after {timeout:.0f} s")
        time.sleep(poll)


def one_inference(client: Client, example: Any, poll: float) -> dict[str, float]:
    started = time.perf_counter()
    result = client.infer("mlp-regressor", example, mode="zkml")
    answered = time.perf_counter()
    if result.status != Status.PROVING:
        raise RuntimeError(f"a zkml answer came back {result.status}, not proving")
    rid = result.receipt_id
    status, proved = wait_status(lambda: str(client.node_receipt(rid)["status"]), {Status.PROVING}, 300, poll)
    if status in (Status.FAILED, Status.REJECTED):
        raise RuntimeError(f"node receipt {rid} ended {status}")
    status, verified = wait_status(lambda: str(client.receipt_status(rid).status), {Status.PENDING}, 300, poll)
    if status != Status.VERIFIED:
        raise RuntimeError(f"chain record of {rid} is {status}, not verified")
    return {
        "answer_ms": (answered - started) * 1e3,
        "gap_s": verified - answered,
        "prove_phase_s": proved - answered,
        "settle_phase_s": verified - proved,
    }


def bench_trust_gap(work: Path, rounds: int, n: int, poll: float) -> dict[str, Any]:
    home = work / "home"
    example = json.loads((MODELS / "manifest.json").read_text())
    example = next(m for m in example["models"] if m["name"] == "mlp-regressor")["example_input"]
    print(f"devnet (1 validator, timeout_commit 300ms, node0 zkml) in {home} …", flush=True)
    started = time.perf_counter()
    net = Devnet(home)
    try:
        up(home, validators=1, timeout_commit="300ms")
        result: dict[str, Any] = {"devnet_startup_s": round(time.perf_counter() - started, 1)}
        with Client.from_home(home, "dev1") as client:
            client.deposit(10**15)
            warm = one_inference(client, example, poll)  # the prover's first job spawns its worker
            result["warm_up"] = {k: round(v, 3) for k, v in warm.items()}
            detail = []
            for r in range(rounds):
                rows = [one_inference(client, example, poll) for _ in range(n)]
                figures = {
                    "answer_ms_p50": round(percentile([x["answer_ms"] for x in rows], 0.5), 2),
                    "answer_ms_p95": round(percentile([x["answer_ms"] for x in rows], 0.95), 2),
                    "gap_s_p50": round(percentile([x["gap_s"] for x in rows], 0.5), 3),
                    "gap_s_p95": round(percentile([x["gap_s"] for x in rows], 0.95), 3),
                    "prove_phase_s_p50": round(percentile([x["prove_phase_s"] for x in rows], 0.5), 3),
                    "settle_phase_s_p50": round(percentile([x["settle_phase_s"] for x in rows], 0.5), 3),
                    "settle_phase_s_p95": round(percentile([x["settle_phase_s"] for x in rows], 0.95), 3),
                    "other_cometbft_processes": foreign_devnet_processes(work),
                    "loadavg_1m": loadavg(),
                }
                figures["gaps_s"] = [round(x["gap_s"], 3) for x in rows]
                detail.append(figures)
                print(f"  trust gap round {r + 1}/{rounds}: {figures}", flush=True)
        result["inferences_per_round"] = n
        result["poll_interval_s"] = poll
        result["rounds_detail"] = detail
        for key in detail[0]:
            if key not in ("gaps_s", "other_cometbft_processes", "loadavg_1m"):
                result[key] = spread([d[key] for d in detail])
        return result
    finally:
        stop_devnet(net, home)


# --- (d) where this machine stops coping ------------------------------------------------------------------


def probe_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """In the child: one HACA prove and verify of the circuit."""
    circuit = load_circuit(Path(spec["circuit"]))
    assert circuit is not None
    srs = Path(spec["srs"])
    started = time.perf_counter()
    proof = prove(circuit, spec["inputs"], srs)
    prove_s = time.perf_counter() - started
    started = time.perf_counter()
    verify_proof(proof.proof, circuit.settings_path.read_bytes(), circuit.vk_path.read_bytes(), srs)
    verify_ms = (time.perf_counter() - started) * 1e3
    Path(spec["proof_out"]).write_bytes(proof.proof)
    return {"prove_s": round(prove_s, 2), "verify_ms": round(verify_ms, 1), **proof_sizes(proof.proof)}


def probe_child_rss(spec: dict[str, Any], timeout: float) -> tuple[int, dict[str, Any] | str, float]:
    """Run one probe child; (its peak RSS in KB, its answer or why none, its CPU seconds)."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--probe-worker", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            child.kill()
            _, status, usage = os.wait4(child.pid, 0)
            child.returncode = -9
            return usage.ru_maxrss, f"killed after {timeout:.0f} s", usage.ru_utime + usage.ru_stime
        time.sleep(0.2)
    child.returncode = os.waitstatus_to_exitcode(status)
    out = child.stdout.read()
    cpu = usage.ru_utime + usage.ru_stime
    if child.returncode != 0:
        return usage.ru_maxrss, f"exit {child.returncode}", cpu
    return usage.ru_maxrss, json.loads(out.strip().splitlines()[-1]), cpu


# --- the run ----------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    seconds: dict[str, float] = {}
    result: dict[str, Any] = {"rounds": args.rounds}
    with work_dir("zk") as work:
        load_before, foreign = loadavg(), foreign_devnet_processes(work)
        started = time.perf_counter()
        makers = {"tiny": tiny, "mlp-regressor": mlp_regressor, "digits-cnn": digits_cnn}
        circuits = {name: makers[name]() for name in args.sizes}
        seconds["circuits_build_or_load"] = round(time.perf_counter() - started, 1)
        sizes: dict[str, Any] = {}
        for name, (circuit, inputs) in circuits.items():
            big = name == "digits-cnn"
            print(f"prove / verify {name} (logrows {circuit.logrows}) …", flush=True)
            started = time.perf_counter()
            sizes[name] = bench_prove_verify(
                name,
                circuit,
                inputs,
                work,
                args.rounds,
                args.big_proves if big else args.proves,
                args.big_verifies if big else args.verifies,
            )
            seconds[f"prove_verify_{name}"] = round(time.perf_counter() - started, 1)
        print("verify_proof on one core …", flush=True)
        started = time.perf_counter()
        for name, (circuit, _) in circuits.items():
            n = args.one_core_calls // 4 if name == "digits-cnn" else args.one_core_calls
            proofs_dir = Path(sizes[name].pop("_proofs_dir"))
            detail = [one_core(circuit, proofs_dir, n) for _ in range(args.rounds)]
            sizes[name]["one_core"] = {
                "rounds_detail": detail,
                "zk_proofs_verified_per_s": spread([d["per_s_cpu"] for d in detail], 2),
                "zk_proofs_verified_per_s_wall": spread([d["per_s_wall"] for d in detail], 2),
                "ms_cpu_per_proof": spread([d["ms_cpu"] for d in detail], 3),
            }
            print(f"  {name}: {sizes[name]['one_core']['zk_proofs_verified_per_s']} proofs/s", flush=True)
        seconds["one_core"] = round(time.perf_counter() - started, 1)
        result["sizes"] = sizes
        result["bench_process_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        if not args.no_devnet:
            started = time.perf_counter()
            result["trust_gap"] = bench_trust_gap(work / "devnet", args.rounds, args.inferences, args.poll)
            seconds["trust_gap"] = round(time.perf_counter() - started, 1)
        if args.probe:
            started = time.perf_counter()
            result["logrows_probe"] = {
                "date": timestamp(),
                "rows": bench_probe(work, args.probe_timeout),
            }
            seconds["logrows_probe"] = round(time.perf_counter() - started, 1)
    if "logrows_probe" not in result and args.output.exists():
        with contextlib.suppress(ValueError, KeyError):
            previous = json.loads(args.output.read_text())["logrows_probe"]
            previous["carried_over"] = "from an earlier run with --probe (see its date)"
            result["logrows_probe"] = previous
    result["summary"] = summary(result)
    result = {"summary": result.pop("summary"), **result}
    result["seconds"] = seconds
    result["machine"] = machine(load_before, foreign, mem_total_mb=meminfo_mb("MemTotal"), ezkl=ezkl_version())
    result["date"] = timestamp()
    return result


def bench_probe(work: Path, timeout: float) -> list[dict[str, Any]]:
    """The synthetic family, smallest first; stops at the first size that fails or runs out of time."""
    rows = []
    for width in PROBE_WIDTHS:
        print(f"probe: MLP 16 → {width} → {width} → 1 …", flush=True)
        started = time.perf_counter()
        circuit, example = wide_mlp(width)
        row: dict[str, Any] = {
            "model": f"16-{width}-{width}-1 relu mlp",
            **settings_rows(circuit),
            "build_or_load_s": round(time.perf_counter() - started, 1),
            "mem_available_mb_before": meminfo_mb("MemAvailable"),
        }
        proofs = work / f"probe-{width}"
        proofs.mkdir(parents=True, exist_ok=True)
        spec = {
            "circuit": str(circuit.directory),
            "srs": str(srs_of(circuit)),
            "inputs": example,
            "proof_out": str(proofs / "proof.json"),
        }
        rss_kb, answer, cpu = probe_child_rss(spec, timeout)
        row["peak_rss_mb"] = round(rss_kb / 1024)
        row["child_cpu_s"] = round(cpu, 1)
        if isinstance(answer, str):
            row["outcome"] = answer
            rows.append(row)
            break
        row.update(answer)
        row["outcome"] = "proved and verified"
        row["one_core"] = one_core(circuit, proofs, 5)
        row["zk_proofs_verified_per_s_one_core"] = row["one_core"]["per_s_cpu"]
        rows.append(row)
        print(f"  {row}", flush=True)
    return rows


def ezkl_version() -> str:
    import ezkl

    return str(getattr(ezkl, "__version__", ""))


def summary(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "targets": {
            "ratio_vs_ezkl_max": TARGET_RATIO,
            "verified_per_s_min": TARGET_VERIFIED_PER_S,
            "settlement_tx_fee_per_inference_fee_max": TARGET_FEE_RATIO,
        }
    }
    for name, s in result["sizes"].items():
        per_s = s["one_core"]["zk_proofs_verified_per_s"]
        row: dict[str, Any] = {
            "logrows": s["circuit"]["logrows"],
            "prove_s_haca": s["prove_s_haca"],
            "prove_s_raw": s["prove_s_raw"],
            "prove_ratio_vs_ezkl": s["prove_ratio_vs_ezkl"],
            "prove_ratio_met": s["prove_ratio_vs_ezkl"]["median"] <= TARGET_RATIO,
            "verify_ms_haca": s["verify_ms_haca"],
            "verify_ms_raw": s["verify_ms_raw"],
            "verify_ms_validator": s["verify_ms_validator"],
            "verify_ratio_vs_ezkl": s["verify_ratio_vs_ezkl"],
            "verify_ratio_met": s["verify_ratio_vs_ezkl"]["median"] <= TARGET_RATIO,
            "validator_verify_ratio_vs_ezkl": s["validator_verify_ratio_vs_ezkl"],
            "proof_json_bytes": s["proof"]["json_bytes"],
            "proof_wire_bytes": s["proof"]["wire_bytes"],
            "proof_bytes": s["proof"]["proof_bytes"],
            "settlement_tx_fee": s["settlement"]["settlement_tx_fee"],
            "inference_fee": s["settlement"]["inference_fee"],
            "settlement_tx_fee_per_inference_fee": s["settlement"].get("tx_fee_per_inference_fee"),
            "zk_proofs_verified_per_s_one_core": per_s,
        }
        if name in SMALL:
            row["verified_per_s_met"] = per_s["median"] >= TARGET_VERIFIED_PER_S
        out[name] = row
    if "trust_gap" in result:
        gap = result["trust_gap"]
        out["trust_gap_s"] = {"p50": gap["gap_s_p50"], "p95": gap["gap_s_p95"]}
        out["answer_ms"] = {"p50": gap["answer_ms_p50"], "p95": gap["answer_ms_p95"]}
        out["trust_gap_prove_phase_s_p50"] = gap["prove_phase_s_p50"]
        out["trust_gap_settle_phase_s_p50"] = gap["settle_phase_s_p50"]
    if "logrows_probe" in result:
        rows = result["logrows_probe"]["rows"]
        coping = [
            r["logrows"]
            for r in rows
            if r.get("outcome") == "proved and verified"
            and r["prove_s"] <= PRACTICAL_PROVE_S
            and r["peak_rss_mb"] <= meminfo_mb("MemTotal") / 2
        ]
        out["logrows_practical_max"] = max(coping, default=None)
        out["logrows_practical_rule"] = (
            f"one proof within {PRACTICAL_PROVE_S} s and a prover peak RSS within half the machine's memory"
        )
        out["logrows_probe"] = [
            {
                k: r.get(k)
                for k in (
                    "logrows",
                    "build_s",
                    "prove_s",
                    "child_cpu_s",
                    "peak_rss_mb",
                    "pk_bytes",
                    "zk_proofs_verified_per_s_one_core",
                    "outcome",
                )
            }
            for r in rows
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every measurement (default 3)")
    parser.add_argument("--proves", type=int, default=1, help="proves per side per round, tiny and mlp (1)")
    parser.add_argument("--big-proves", type=int, default=1, help="proves per side per round, digits-cnn (1)")
    parser.add_argument("--verifies", type=int, default=20, help="verifies per verifier per round (20)")
    parser.add_argument("--big-verifies", type=int, default=5, help="verifies per verifier per round, digits (5)")
    parser.add_argument("--one-core-calls", type=int, default=60, help="one-core verifies per round (digits: /4)")
    parser.add_argument("--inferences", type=int, default=10, help="trust gap: zkml inferences per round (10)")
    parser.add_argument("--poll", type=float, default=0.05, help="trust gap: status poll interval, s (0.05)")
    parser.add_argument(
        "--sizes", type=lambda v: v.split(","), default=list(SIZES), help="circuits, comma-separated (all three)"
    )
    parser.add_argument("--no-devnet", action="store_true", help="skip the trust gap")
    parser.add_argument("--probe", action="store_true", help="also prove synthetic MLPs at logrows 15-18")
    parser.add_argument("--probe-timeout", type=float, default=600, help="probe: seconds per proof (600)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--one-core-worker", help=argparse.SUPPRESS)
    parser.add_argument("--probe-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one_core_worker:
        print(json.dumps(one_core_worker(json.loads(args.one_core_worker))))
        return 0
    if args.probe_worker:
        print(json.dumps(probe_worker(json.loads(args.probe_worker))))
        return 0
    if not args.sizes or set(args.sizes) - set(SIZES):
        parser.error(f"--sizes: some of {','.join(SIZES)}")
    counts = (args.rounds, args.proves, args.big_proves, args.verifies, args.big_verifies, args.inferences)
    if min(counts) < 1 or args.one_core_calls < 4:
        parser.error("every count must be positive (--one-core-calls at least 4)")
    exit_on_sigterm()
    started = time.perf_counter()
    result = run(args)
    result["seconds"]["total"] = round(time.perf_counter() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")

    s = result["summary"]
    print("\nfigure (min / median / max)")
    for name in result["sizes"]:
        row = s[name]
        print(f"  {name} (logrows {row['logrows']}, proof {row['proof_bytes']} B, JSON {row['proof_json_bytes']} B)")
        pm = "met" if row["prove_ratio_met"] else "NOT met"
        vm = "met" if row["verify_ratio_met"] else "NOT met"
        print(f"    prove s haca {fmt(row['prove_s_haca'])}, raw {fmt(row['prove_s_raw'])}")
        print(f"    prove_ratio_vs_ezkl {fmt(row['prove_ratio_vs_ezkl'])} (target <= {TARGET_RATIO}: {pm})")
        print(
            f"    verify ms haca {fmt(row['verify_ms_haca'])}, raw {fmt(row['verify_ms_raw'])},"
            f" ZkmlVerifier {fmt(row['verify_ms_validator'])}"
        )
        print(
            f"    verify_ratio_vs_ezkl {fmt(row['verify_ratio_vs_ezkl'])} (target <= {TARGET_RATIO}: {vm});"
            f" ZkmlVerifier / raw {fmt(row['validator_verify_ratio_vs_ezkl'])}"
        )
        met = ""
        if "verified_per_s_met" in row:
            met = f" (target >= {TARGET_VERIFIED_PER_S}: {'met' if row['verified_per_s_met'] else 'NOT met'})"
        print(f"    zk_proofs_verified_per_s, one core {fmt(row['zk_proofs_verified_per_s_one_core'])}{met}")
    if "trust_gap_s" in s:
        print(f"  trust gap s p50 {fmt(s['trust_gap_s']['p50'])}, p95 {fmt(s['trust_gap_s']['p95'])}")
        print(f"    of which proving p50 {fmt(s['trust_gap_prove_phase_s_p50'])},")
        print(f"    settling p50 {fmt(s['trust_gap_settle_phase_s_p50'])}")
        print(f"  answer ms p50 {fmt(s['answer_ms']['p50'])}, p95 {fmt(s['answer_ms']['p95'])}")
    for row in s.get("logrows_probe", []):
        print(f"  probe: {row}")
    if "logrows_probe" in s:
        print(f"  largest practical logrows here: {s['logrows_practical_max']} ({s['logrows_practical_rule']})")
    print(f"seconds: {result['seconds']}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
