"""Issue 9 on a live 4-validator devnet: a zkml inference on `mlp-regressor` answers in
milliseconds (`proving`), the node's prover makes the EZKL proof, the chain verifies it and the
receipt turns `verified` with the node paid and the settlement fee burned; the proof verifies with
plain `ezkl.verify` on the files the chain publishes (interop)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from haca.client.sdk import Client
from haca.client.zk import proof_from_chain
from haca.devnet.layout import dev_srs_dir, example_models_dir
from haca.proofs.zk.proof import ezkl_proof_json
from haca.proofs.zk.srs import file_sha256, srs_file
from tests.integration.helpers import assert_devnet_supply_holds, settlement_fee

pytestmark = pytest.mark.devnet
MODELS = {m["name"]: m for m in json.loads((example_models_dir() / "manifest.json").read_text())["models"]}
EXAMPLE = MODELS["mlp-regressor"]["example_input"]


def test_a_zkml_inference_answers_at_once_then_turns_verified_and_pays_the_node(inference_devnet, tmp_path: Path):
    chain = inference_devnet.client
    manifest = chain.query("/registry/model", b"mlp-regressor")
    assert "zkml" in manifest["modes"] and manifest["circuit"]["logrows"] <= 17
    with Client.from_home(inference_devnet.home, "dev4") as client:
        node = client.node_address()
        client.deposit(10**9, node)
        escrow_before = int(chain.query("/inference/escrow", f"{client.key.address}/{node}".encode())["escrow"])
        started = time.monotonic()
        result = client.infer("mlp-regressor", EXAMPLE, mode="zkml")
        answered = time.monotonic() - started
        assert result.status == "proving" and answered < 5  # the answer does not wait for the proof
        record = client.wait_settled(result.receipt_id, timeout=180)
        stored = client.node_receipt(result.receipt_id)
        verification = client.verify_receipt(result.receipt_id)  # proof, key, settings, SRS: all checked here
    assert verification.verified, verification.reason
    # The proof is on chain too, in the settlement tx: a client can check it after the node is gone.
    assert proof_from_chain(inference_devnet.client, result.receipt_id) == bytes.fromhex(stored["evidence"][2:])
    assert verification.claims["vk_hash"] == manifest["circuit"]["vk_hash"]
    assert record.record is not None and (record.status, record.record.mode) == ("verified", "zkml")
    fee = record.record.fee
    escrow_after = int(chain.query("/inference/escrow", f"{client.key.address}/{node}".encode())["escrow"])
    assert escrow_after == escrow_before - fee - settlement_fee(chain, fee)
    assert_devnet_supply_holds(inference_devnet)

    # Interop: the node's proof, the chain's settings and verifying key, the genesis SRS.
    import ezkl

    proof = tmp_path / "proof.json"
    proof.write_bytes(ezkl_proof_json(bytes.fromhex(stored["evidence"][2:])))  # the wire form, as EZKL JSON
    for name, digest in (
        ("settings.json", manifest["circuit"]["settings_hash"]),
        ("vk.key", manifest["circuit"]["vk_hash"]),
    ):
        blob = chain.query("/registry/blob", digest.encode())
        (tmp_path / name).write_bytes(bytes.fromhex(blob["data"][2:]))
    srs = srs_file(dev_srs_dir(), manifest["circuit"]["logrows"])
    assert file_sha256(srs) == chain.query("/registry/srs")["srs"][str(manifest["circuit"]["logrows"])]
    assert ezkl.verify(str(proof), str(tmp_path / "settings.json"), str(tmp_path / "vk.key"), str(srs), False) is True


def test_haca_verify_checks_a_zkml_receipt_locally(inference_devnet):
    import subprocess
    import sys

    with Client.from_home(inference_devnet.home, "dev4") as client:
        result = client.infer("mlp-regressor", EXAMPLE, mode="zkml")
        client.wait_settled(result.receipt_id, timeout=180)
    haca = [sys.executable, "-m", "haca.cli.main", "verify", result.receipt_id, "--home", str(inference_devnet.home)]
    done = subprocess.run(haca, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verified" in done.stdout and "mode zkml  chain status verified" in done.stdout


def test_model_create_with_zkml_publishes_the_circuit_and_a_node_can_fetch_and_prove_with_it(
    inference_devnet, tmp_path
):
    import subprocess
    import sys

    from haca.hub.client import HubClient
    from haca.node.service import fetch_circuit
    from haca.proofs.zk.proof import prove, verify_proof
    from tests.zkhelpers import INPUT, tiny_model

    model = tiny_model(tmp_path / "tiny.onnx", 3)
    home = str(inference_devnet.home)
    args = ["model", "create", "--name", "tiny-zk", "--file", str(model), "--modes", "vanilla,zkml", "--price", "500"]
    args += ["--calibration", json.dumps(INPUT), "--from", "dev5", "--home", home, "--json"]
    done = subprocess.run([sys.executable, "-m", "haca.cli.main", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    chain = inference_devnet.client
    manifest = chain.query("/registry/model", b"tiny-zk")
    pinned = manifest["circuit"]
    assert manifest["modes"] == ["vanilla", "zkml"] and set(pinned) >= {"compiled_hash", "pk_hash", "vk_hash"}

    hub = HubClient(inference_devnet.config.extra["hub"])
    srs = srs_file(dev_srs_dir(), pinned["logrows"])
    circuit = fetch_circuit(hub, pinned, tmp_path / "fetched", manifest["model_id"], srs)
    assert (circuit.vk_hash, circuit.settings_hash) == (pinned["vk_hash"], pinned["settings_hash"])
    proof = prove(circuit, INPUT, srs)
    settings = bytes.fromhex(chain.query("/registry/blob", pinned["settings_hash"].encode())["data"][2:])
    vk = bytes.fromhex(chain.query("/registry/blob", pinned["vk_hash"].encode())["data"][2:])
    assert verify_proof(proof.proof, settings, vk, srs) == proof.instances
