"""Tiny EZKL circuits for the zkml tests, built once per machine under build/test-circuits/ (their
ONNX bytes are deterministic, so the circuit cache hits across runs and pytest workers; a file
lock keeps two workers from building one at the same time), and proofs cached beside them."""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from haca.chain.home import source_root
from haca.proofs.zk.circuit import Circuit, build_circuit
from haca.proofs.zk.proof import ZkProof, proof_instances, prove
from haca.proofs.zk.srs import make_dev_srs, srs_file

ROOT = source_root() / "build" / "test-circuits"
SRS_DIR = source_root() / "build" / "srs"  # a dev SRS per logrows, made once per machine
INPUT = [[0.5, -1.25, 2.0, 0.75]]
OTHER_INPUT = [[1.0, 1.0, -1.0, 0.0]]


@contextmanager
def _locked(name: str) -> Iterator[None]:
    ROOT.mkdir(parents=True, exist_ok=True)
    with open(ROOT / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def tiny_model(path: Path, seed: int) -> Path:
    """x[batch, 4] @ W + b → y[batch, 3], weights drawn from `seed` (same seed, same bytes)."""
    rng = np.random.default_rng(seed)
    weights, bias = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="haca-tests")
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def tiny_circuit(seed: int) -> Circuit:
    with _locked(f"tiny-{seed}"):
        model = tiny_model(ROOT / f"tiny-{seed}.onnx", seed)
        return build_circuit(model, INPUT, ROOT / f"tiny-{seed}", lambda logrows: make_dev_srs(SRS_DIR, logrows))


def srs_of(circuit: Circuit) -> Path:
    return srs_file(SRS_DIR, circuit.logrows)


def cached_proof(circuit: Circuit, inputs: Sequence[Sequence[float]]) -> ZkProof:
    """A proof of `inputs` (proving takes seconds: one is kept per circuit and input)."""
    tag = hashlib.sha256(json.dumps([circuit.vk_hash, inputs]).encode()).hexdigest()[:16]
    path = circuit.directory / f"proof-{tag}.json"
    with _locked(f"proof-{tag}"):
        if path.exists():
            raw = path.read_bytes()
            return ZkProof(raw, proof_instances(raw))
        proof = prove(circuit, inputs, srs_of(circuit))
        path.write_bytes(proof.proof)
        return proof
