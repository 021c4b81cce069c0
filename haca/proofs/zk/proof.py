"""Proving an inference with EZKL and verifying the proof: what a node runs (witness at answer
time, proof in the background) and what validators and clients run (verify against the pinned
verifying key, settings and SRS, then compare the proof's public instances with the receipt's
commitment — bytes with bytes, no floats).

Instances are EZKL's field elements as 64 hex digits (little-endian), one list per public tensor
(for a hashed input: its Poseidon hash; for a public output: the quantized values).

On the wire (a node's stored evidence, settlement txs, what validators and clients verify) a proof
travels in a compact binary form, `encode_proof` / `decode_proof`: EZKL's proof JSON is ~22 KB for
a ~3.8 KB proof (the proof bytes twice, as a list of numbers and as hex, plus pretty-printed
instances), and a settlement tx pays per byte, so a zkml receipt cost its node more in tx fees than
it earned. The encoding, all integers big-endian, nothing optional, nothing after:

    "HZK", 0x01                    magic, then format version 1
    u32 P, then P bytes            EZKL's proof transcript (1 <= P <= MAX_PROOF_BYTES)
    u16 R (1..MAX_INSTANCE_ROWS)   rows of public instances
    per row: u32 N, then N x 32    field elements as EZKL's 32 little-endian bytes, each < the
                                   BN254 scalar modulus (one encoding per value)

`ezkl_proof_json` turns it back into the JSON EZKL's verifier reads ({"instances", "proof"}).
Evidence in the earlier form, EZKL's proof JSON (starting with "{"), is still decoded: a node's
receipt queue (haca/node/receipts.py) keeps proofs made before the upgrade until they settle, and
blocks settled with JSON proofs must replay to the same verdicts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haca.proofs.reader import BoundedReader
from haca.proofs.receipt import EvidenceError
from haca.proofs.zk.circuit import Circuit

Instances = tuple[tuple[str, ...], ...]
MAX_PROOF_BYTES = 1 << 20
PROOF_MAGIC = b"HZK\x01"
MAX_INSTANCE_ROWS = 64
FELT_BYTES = 32
BN254_R = 21888242871839275222246405745257275088548364400416034343698204186575808495617  # scalar field


class ProofError(EvidenceError):
    """A proof that is malformed or does not verify against the circuit's verifying key."""


@dataclass(frozen=True)
class ZkProof:
    proof: bytes  # the wire encoding (`encode_proof`): what a node stores and settles with
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


def encode_proof(transcript: bytes, instances: Instances) -> bytes:
    """The wire form of EZKL's proof transcript and its public instances (see the module docstring)."""
    if not 1 <= len(transcript) <= MAX_PROOF_BYTES:
        raise ProofError(f"a proof transcript is 1 to {MAX_PROOF_BYTES} bytes, not {len(transcript)}")
    if not 1 <= len(instances) <= MAX_INSTANCE_ROWS:
        raise ProofError(f"a proof has 1 to {MAX_INSTANCE_ROWS} rows of instances, not {len(instances)}")
    out = [PROOF_MAGIC, len(transcript).to_bytes(4, "big"), transcript, len(instances).to_bytes(2, "big")]
    for row in instances:
        out.append(len(row).to_bytes(4, "big"))
        out.extend(_felt_bytes(felt) for felt in row)
    return b"".join(out)


def encode_ezkl_proof(proof_json: bytes) -> bytes:
    """EZKL's proof JSON (as `ezkl.prove` wrote it) in the wire form."""
    transcript, instances = _decode_json(proof_json)
    return encode_proof(transcript, instances)


def decode_proof(data: bytes) -> tuple[bytes, Instances]:
    """(EZKL's proof transcript, its public instances) from the wire form; ProofError naming what is
    wrong for anything else: a bad magic, a length past the end, a field element out of range,
    bytes left over."""
    if not data.startswith(PROOF_MAGIC):
        raise ProofError("the proof is not in HACA's binary proof encoding (magic HZK\\x01)")
    reader = BoundedReader(data, _cut_short, len(PROOF_MAGIC))
    size = reader.uint(4, "proof length")
    if not 1 <= size <= MAX_PROOF_BYTES:
        raise ProofError(f"the proof transcript length {size} is not 1 to {MAX_PROOF_BYTES}")
    transcript = reader.take(size, "proof transcript")
    rows_count = reader.uint(2, "instance row count")
    if not 1 <= rows_count <= MAX_INSTANCE_ROWS:
        raise ProofError(f"the proof has {rows_count} rows of instances; 1 to {MAX_INSTANCE_ROWS} expected")
    rows = []
    for r in range(rows_count):
        count = reader.uint(4, f"instance row {r} length")
        raw = reader.take(count * FELT_BYTES, f"instance row {r}")  # bounded by what is left, not by `count`
        felts = []
        for i in range(count):
            felt = raw[i * FELT_BYTES : (i + 1) * FELT_BYTES]
            if int.from_bytes(felt, "little") >= BN254_R:
                raise ProofError(f"instance {r}.{i} is not a field element (not below the BN254 modulus)")
            felts.append(felt.hex())
        rows.append(tuple(felts))
    if reader.offset != len(data):
        raise ProofError(f"{len(data) - reader.offset} bytes follow the proof's last instance")
    return transcript, tuple(rows)


def ezkl_proof_json(evidence: bytes) -> bytes:
    """What EZKL's verifier reads for this evidence: the proof JSON rebuilt from the wire form (only
    the fields `ezkl.verify` uses), or earlier evidence that is EZKL's JSON already, as it is."""
    if evidence.startswith(PROOF_MAGIC):
        transcript, instances = decode_proof(evidence)
        return json.dumps({"instances": [list(row) for row in instances], "proof": list(transcript)}).encode()
    _decode_json(evidence)
    return evidence


def proof_instances(proof: bytes) -> Instances:
    """The public instances a proof claims (not yet verified), from the wire form or, for evidence
    made before it, EZKL's proof JSON."""
    if proof.startswith(PROOF_MAGIC):
        return decode_proof(proof)[1]
    return _decode_json(proof)[1]


MAX_JSON_DEPTH = 16  # EZKL's proof JSON nests a few levels; deeper input is hostile


def _check_nesting(text: bytes) -> None:
    """Refuse JSON nested deeper than MAX_JSON_DEPTH before parsing it: deep enough nesting makes
    the C JSON scanner overflow its thread's stack (a segfault, not an exception)."""
    depth = 0
    for match in _BRACKETS.finditer(text):
        depth += 1 if match.group() in (b"[", b"{") else -1
        if depth > MAX_JSON_DEPTH:
            raise ProofError(f"the proof JSON nests deeper than {MAX_JSON_DEPTH} levels")


_BRACKETS = re.compile(rb"[\[\]{}]")


def _decode_json(proof: bytes) -> tuple[bytes, Instances]:
    if len(proof) > MAX_PROOF_BYTES:
        raise ProofError(f"the proof is {len(proof)} bytes; at most {MAX_PROOF_BYTES}")
    _check_nesting(proof)
    try:
        doc = json.loads(proof)
    # ValueError: a JSONDecodeError, a UnicodeDecodeError, or an integer of more than 4300 digits
    except (ValueError, RecursionError) as exc:  # (deep nesting: RecursionError)
        raise ProofError(f"the proof is neither HACA's binary proof encoding nor EZKL proof JSON: {exc!r}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("proof"), (str, list)):
        raise ProofError("the proof is not EZKL proof JSON (no proof field)")
    instances = parse_instances(doc.get("instances"))
    transcript = doc["proof"]
    try:
        raw = bytes.fromhex(transcript.removeprefix("0x")) if isinstance(transcript, str) else bytes(transcript)
    except (ValueError, TypeError):
        raise ProofError("the proof field is neither hex nor a list of bytes") from None
    return raw, instances


def _felt_bytes(felt: str) -> bytes:
    raw = bytes.fromhex(felt)
    if len(raw) != FELT_BYTES or int.from_bytes(raw, "little") >= BN254_R:
        raise ProofError(f"instance {felt!r} is not a field element")
    return raw


def _cut_short(what: str, needed: int, left: int) -> ProofError:
    return ProofError(f"the proof is cut short: {what} needs {needed} bytes, {left} left")


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
    transcript, instances = _decode_json(raw)
    return ZkProof(encode_proof(transcript, instances), instances)


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
    ProofError with the reason otherwise. Deterministic: validators and clients run exactly this.
    `proof` is the wire form (or, made before it, EZKL's proof JSON)."""
    import ezkl

    instances = proof_instances(proof)
    settings_path, vk_path = _artefact_file(settings, ".json"), _artefact_file(vk, ".key")
    with tempfile.NamedTemporaryFile(prefix="haca-proof-", suffix=".json") as proof_file:
        proof_file.write(ezkl_proof_json(proof))
        proof_file.flush()
        try:
            ok = ezkl.verify(proof_file.name, str(settings_path), str(vk_path), str(srs_path), False)
        except (RuntimeError, ValueError) as exc:
            raise ProofError(f"the proof does not verify: {exc}") from exc
    if not ok:
        raise ProofError("the proof does not verify against the circuit's verifying key")
    return instances
