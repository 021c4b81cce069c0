"""EZKL through haca.proofs.zk on two tiny circuits (MatMul + Add, logrows 15): the witness gives,
in milliseconds, the instances the proof will carry; a proof verifies against its own verifying
key and settings and against nothing else; tampering with any part fails; plain `ezkl.verify`
accepts the same files (interop)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from haca.proofs.zk.circuit import Circuit, build_circuit
from haca.proofs.zk.proof import (
    PROOF_MAGIC,
    ProofError,
    ZkProof,
    decode_proof,
    encode_ezkl_proof,
    encode_proof,
    ezkl_proof_json,
    instances_commitment,
    proof_instances,
    verify_proof,
    witness_instances,
)
from haca.proofs.zk.srs import SrsError, file_sha256, pinned_srs
from tests.zkhelpers import INPUT, OTHER_INPUT, ROOT, SRS_DIR, cached_proof, srs_of, tiny_circuit

pytestmark = pytest.mark.slow


@dataclass
class Setup:
    circuit: Circuit
    other: Circuit
    srs: Path
    proof: ZkProof


@pytest.fixture(scope="module")
def zk() -> Setup:
    circuit, other = tiny_circuit(1), tiny_circuit(2)
    proof = cached_proof(circuit, INPUT)
    if not proof.proof.startswith(PROOF_MAGIC):  # a proof cached on disk before the binary encoding
        proof = ZkProof(encode_ezkl_proof(proof.proof), proof.instances)
    return Setup(circuit, other, srs_of(circuit), proof)


def test_a_proof_verifies_and_carries_the_instances_the_witness_gave_at_answer_time(zk):
    assert zk.circuit.logrows <= 17
    instances = verify_proof(
        zk.proof.proof, zk.circuit.settings_path.read_bytes(), zk.circuit.vk_path.read_bytes(), zk.srs
    )
    assert instances == zk.proof.instances == witness_instances(zk.circuit, INPUT)
    assert len(instances) == 1 and len(instances[0]) == 1 + 3  # the input's Poseidon hash, then 3 outputs
    assert instances_commitment(instances) != instances_commitment(witness_instances(zk.circuit, OTHER_INPUT))
    assert instances_commitment(instances).startswith("0x") and len(instances_commitment(instances)) == 66


def test_plain_ezkl_verify_accepts_the_same_files(zk, tmp_path):
    import ezkl

    (tmp_path / "proof.json").write_bytes(ezkl_proof_json(zk.proof.proof))
    args = (str(zk.circuit.settings_path), str(zk.circuit.vk_path), str(zk.srs), False)
    assert ezkl.verify(str(tmp_path / "proof.json"), *args) is True


def test_the_binary_proof_round_trips_and_verifies_like_the_json_it_came_from(zk):
    """The wire form is a fraction of EZKL's JSON, decodes to the same transcript and instances,
    and verifies to the same instances as the JSON (which stored evidence may still hold)."""
    transcript, instances = decode_proof(zk.proof.proof)
    assert encode_proof(transcript, instances) == zk.proof.proof and instances == zk.proof.instances
    legacy = ezkl_proof_json(zk.proof.proof)
    assert encode_ezkl_proof(legacy) == zk.proof.proof and len(zk.proof.proof) < len(legacy)
    settings, vk = zk.circuit.settings_path.read_bytes(), zk.circuit.vk_path.read_bytes()
    assert verify_proof(legacy, settings, vk, zk.srs) == verify_proof(zk.proof.proof, settings, vk, zk.srs)


def _tampered(proof: bytes, change) -> bytes:  # type: ignore[no-untyped-def]
    transcript, instances = decode_proof(proof)
    rows = [list(row) for row in instances]
    transcript = change(bytearray(transcript), rows)
    return encode_proof(bytes(transcript), tuple(tuple(row) for row in rows))


def _flip_proof_byte(transcript: bytearray, rows: list[list[str]]) -> bytearray:
    transcript[40] ^= 1
    return transcript


def _change_output(transcript: bytearray, rows: list[list[str]]) -> bytearray:
    felt = rows[0][1]
    rows[0][1] = ("1" if felt[0] != "1" else "2") + felt[1:]
    return transcript


@pytest.mark.parametrize(
    "change", [_flip_proof_byte, _change_output], ids=["flipped_proof_byte", "tampered_output_instance"]
)
def test_a_tampered_proof_does_not_verify(zk, change):
    bad = _tampered(zk.proof.proof, change)
    with pytest.raises(ProofError, match="does not verify"):
        verify_proof(bad, zk.circuit.settings_path.read_bytes(), zk.circuit.vk_path.read_bytes(), zk.srs)


def test_a_proof_under_another_models_key_or_settings_does_not_verify(zk):
    settings, vk = zk.circuit.settings_path.read_bytes(), zk.circuit.vk_path.read_bytes()
    with pytest.raises(ProofError, match="does not verify"):
        verify_proof(zk.proof.proof, settings, zk.other.vk_path.read_bytes(), zk.srs)
    # Settings that change the circuit's shape fail here. Scales are not bound by the proof at all:
    # that is why a manifest pins the settings' hash and verifiers use only the pinned bytes.
    other_settings = json.loads(zk.other.settings_path.read_bytes())
    other_settings["run_args"]["logrows"] += 1
    with pytest.raises(ProofError, match="does not verify"):
        verify_proof(zk.proof.proof, json.dumps(other_settings).encode(), vk, zk.srs)


@pytest.mark.parametrize(
    "proof, reason",
    [
        (b"", "neither HACA's binary proof encoding nor EZKL proof JSON"),
        (b"garbage", "neither HACA's binary proof encoding nor EZKL proof JSON"),
        (b'{"instances": [["00"]], "proof": "00"}', "64 hex digits"),
        (b'{"proof": "00"}', "no public instances"),
    ],
    ids=["empty", "garbage", "short_instance", "no_instances"],
)
def test_a_garbage_or_truncated_proof_is_refused_with_a_reason(zk, proof, reason):
    with pytest.raises(ProofError, match=reason):
        verify_proof(proof, zk.circuit.settings_path.read_bytes(), zk.circuit.vk_path.read_bytes(), zk.srs)


def test_a_truncated_proof_does_not_verify(zk):
    transcript, instances = decode_proof(zk.proof.proof)
    half = encode_proof(transcript[: len(transcript) // 2], instances)  # well-formed, but half a proof
    with pytest.raises(ProofError, match="does not verify"):
        verify_proof(half, zk.circuit.settings_path.read_bytes(), zk.circuit.vk_path.read_bytes(), zk.srs)


def test_a_built_circuit_is_reused_and_names_its_artefacts_by_hash(zk, tmp_path):
    again = build_circuit(ROOT / "tiny-1.onnx", INPUT, zk.circuit.directory, lambda lr: zk.srs)
    assert again == zk.circuit
    assert zk.circuit.vk_hash == file_sha256(zk.circuit.vk_path) != zk.other.vk_hash
    assert zk.circuit.srs_hash == file_sha256(zk.srs)
    assert proof_instances(zk.proof.proof) == zk.proof.instances


def test_an_srs_that_is_not_the_pinned_one_is_refused(zk, tmp_path):
    assert pinned_srs(SRS_DIR, zk.circuit.logrows, zk.circuit.srs_hash) == zk.srs
    with pytest.raises(SrsError, match="genesis pins"):
        pinned_srs(SRS_DIR, zk.circuit.logrows, "sha256:" + "00" * 32)
    with pytest.raises(SrsError, match="no SRS for logrows"):
        pinned_srs(tmp_path, zk.circuit.logrows, zk.circuit.srs_hash)
