"""Proving an inference with EZKL and verifying the proof: what a node runs (witness at answer
time, proof in the background) and what validators and clients run (verify against the pinned
verifying key, settings and SRS, then compare the proof's public instances with the receipt's
commitment — bytes with bytes, no floats).

Instances are EZKL's field elements as 64 hex digits (little-endian), one list per public tensor
(for a hashed input: its Poseidon hash; for a public output: the quantized values).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haca.proofs.receipt import EvidenceError
from haca.proofs.zk.circuit import Circuit

Instances = tuple[tuple[str, ...], ...]
MAX_PROOF_BYTES = 1 << 20


class ProofError(EvidenceError):
    """A proof that is malformed or does not verify against the circuit's verifying key."""


@dataclass(frozen=True)
class ZkProof:
    proof: bytes  # EZKL's proof JSON, as it wrote it
    instances: Instances


def parse_instances(value: Any) -> Instances:
    if not isinstance(value, list) or not value:
        raise ProofError("the proof has no public instances")
    rows = []
    for row in value:
        if not isinstance(row, list):
            raise ProofError("the proof's instances are not lists of field elements")
        for felt in row:
            if not isinstance(felt, str) or len(felt) != 64:
                raise ProofError("an instance is not a field element of 64 hex digits")
            try:
                bytes.fromhex(felt)
            except ValueError:
                raise ProofError("an instance is not hex") from None
        rows.append(tuple(felt.lower() for felt in row))
    return tuple(rows)


def proof_instances(proof: bytes) -> Instances:
    """The public instances a proof claims (not yet verified)."""
    if len(proof) > MAX_PROOF_BYTES:
        raise ProofError(f"the proof is {len(proof)} bytes; at most {MAX_PROOF_BYTES}")
    try:
        doc = json.loads(proof)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProofError(f"the proof is not EZKL proof JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("proof"), (str, list)):
        raise ProofError("the proof is not EZKL proof JSON (no proof field)")
    return parse_instances(doc.get("instances"))


def instances_commitment(instances: Instances) -> str:
    """What a zkml receipt commits to: sha256 over the instances, row by row, length-framed."""
    digest = hashlib.sha256()
    for row in instances:
        digest.update(len(row).to_bytes(4, "big"))
        for felt in row:
            digest.update(bytes.fromhex(felt))
    return "0x" + digest.hexdigest()


def _input_file(directory: Path, inputs: Sequence[Sequence[float]]) -> Path:
    path = directory / "input.json"
    path.write_text(json.dumps({"input_data": [list(map(float, values)) for values in inputs]}))
    return path


def witness_instances(circuit: Circuit, inputs: Sequence[Sequence[float]]) -> Instances:
    """The public instances a proof of `inputs` will have, from the witness alone (milliseconds):
    what the node commits to in the receipt before the proof exists."""
    import ezkl

    with tempfile.TemporaryDirectory(prefix="haca-witness-") as tmp:
        out = Path(tmp) / "witness.json"
        try:
            ezkl.gen_witness(str(_input_file(Path(tmp), inputs)), str(circuit.compiled_path), str(out), None, None)
        except RuntimeError as exc:
            raise ProofError(f"ezkl could not compute the witness: {exc}") from exc
        doc = json.loads(out.read_text())
    return _witness_public(doc, circuit)


def _witness_public(doc: dict[str, Any], circuit: Circuit) -> Instances:
    rows: list[list[str]] = []
    if circuit.input_visibility == "hashed":
        rows.append(list((doc.get("processed_inputs") or {}).get("poseidon_hash") or []))
    elif circuit.input_visibility == "public":
        rows.extend(doc.get("inputs") or [])
    if circuit.output_visibility == "hashed":
        rows.append(list((doc.get("processed_outputs") or {}).get("poseidon_hash") or []))
    elif circuit.output_visibility == "public":
        rows.extend(doc.get("outputs") or [])
    return parse_instances([[felt for row in rows for felt in row]])  # EZKL's proofs carry one row


def prove(circuit: Circuit, inputs: Sequence[Sequence[float]], srs_path: Path) -> ZkProof:
    """A proof that the circuit maps `inputs` to its outputs (seconds to minutes: run it in a worker)."""
    import ezkl

    with tempfile.TemporaryDirectory(prefix="haca-prove-") as tmp:
        witness, proof = Path(tmp) / "witness.json", Path(tmp) / "proof.json"
        try:
            ezkl.gen_witness(str(_input_file(Path(tmp), inputs)), str(circuit.compiled_path), str(witness), None, None)
            ezkl.prove(str(witness), str(circuit.compiled_path), str(circuit.pk_path), str(proof), str(srs_path))
        except RuntimeError as exc:
            raise ProofError(f"ezkl could not prove: {exc}") from exc
        raw = proof.read_bytes()
    return ZkProof(raw, proof_instances(raw))


_artefacts: Path | None = None  # this process's content-addressed copies of settings and keys


def _artefact_file(data: bytes, suffix: str) -> Path:
    """EZKL reads files: each settings/vk is written once per process, named by its sha256, and
    reused by every later verification against it (a validator verifies many proofs per key)."""
    global _artefacts
    if _artefacts is None or not _artefacts.exists():
        _artefacts = Path(tempfile.mkdtemp(prefix="haca-zk-artefacts-"))
    path = _artefacts / (hashlib.sha256(data).hexdigest() + suffix)
    if not path.exists():
        partial = path.with_name(path.name + f".{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(path)
    return path


def verify_proof(proof: bytes, settings: bytes, vk: bytes, srs_path: Path) -> Instances:
    """The proof's public instances if it verifies against this verifying key and settings;
    ProofError with the reason otherwise. Deterministic: validators and clients run exactly this."""
    import ezkl

    instances = proof_instances(proof)
    settings_path, vk_path = _artefact_file(settings, ".json"), _artefact_file(vk, ".key")
    with tempfile.NamedTemporaryFile(prefix="haca-proof-", suffix=".json") as proof_file:
        proof_file.write(proof)
        proof_file.flush()
        try:
            ok = ezkl.verify(proof_file.name, str(settings_path), str(vk_path), str(srs_path), False)
        except (RuntimeError, ValueError) as exc:
            raise ProofError(f"the proof does not verify: {exc}") from exc
    if not ok:
        raise ProofError("the proof does not verify against the circuit's verifying key")
    return instances
