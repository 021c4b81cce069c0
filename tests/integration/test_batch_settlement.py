"""Issue 11 on a live 4-validator devnet: a node started with `--settle-batches` serves 1,000 tee
inferences paid by one allowance, and its settler sends them as ONE MsgSettleBatch whose root its
enclave (an enclave process of its own, DEV platform) signs; the chain checks every item and stores the root.
A client then proves from the chain alone that its receipt is in that batch (`haca receipt show ID
--prove`), and a tampered receipt fails the proof. Escrow, allowance spend and supply are exact."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from haca.client.batch import prove_batched_receipt
from haca.client.config import ClientConfig
from haca.client.errors import ProofInvalid
from haca.devnet.processes import free_ports, signal_group, spawn, wait_group_gone
from haca.devnet.services import enclave_command, wait_http, wait_socket
from haca.types.encoding import canonical_json
from haca.types.inference import MsgDeposit
from haca.types.payment import SpendingAllowance, encode_api_key
from haca.types.receipt import SignedReceipt
from tests.integration.helpers import assert_validators_agree
from tests.integration.test_tee import Net

pytestmark = [pytest.mark.devnet, pytest.mark.slow]
RECEIPTS = 1000
IRIS_INPUT = [[5.1, 3.5, 1.4, 0.2]]


@pytest.fixture(scope="module")
def net(inference_devnet) -> Net:
    return Net(inference_devnet)


@pytest.fixture(scope="module")
def batching_node(net: Net, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """dev5 as a tee node for iris with its own enclave (DEV platform), settling in batches of up to
    1,000 (a long idle time and age, so the 1,000 receipts go as one full batch)."""
    work = tmp_path_factory.mktemp("batching-node")
    socket = work / "enclave.sock"
    platform = Path(net.home) / "devnet" / "enclave0"
    hub = str(ClientConfig.load(Path(net.home)).extra["hub"])
    enclave_pid = spawn(enclave_command(socket, platform, work / "data" / "models", hub), work / "enclave.log")
    wait_socket(socket, enclave_pid, "enclave", work / "enclave.log")
    (port,) = free_ports(1)
    args = ["--home", str(net.home), "--key", "dev5", "--port", str(port), "--models", "iris"]
    args += ["--modes", "tee,vanilla", "--enclave", str(socket), "--data-dir", str(work / "data")]
    args += ["--settle-batches", "--batch-max", str(RECEIPTS), "--batch-idle", "30", "--batch-max-age", "600"]
    node_pid = spawn([sys.executable, "-m", "haca.node.main", *args], work / "node.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", node_pid, "batching node", work / "node.log", timeout=180)
    yield {"url": url, "node": net.key("dev5").address, "log": work / "node.log"}
    for pid in (node_pid, enclave_pid):  # spawn starts each in its own session: its group id is its pid
        signal_group(pid, signal.SIGTERM)
        wait_group_gone(pid, time.monotonic() + 10)


def haca(net: Net, *args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "haca.cli.main", *args, "--home", str(net.home), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads(done.stdout))


def test_a_thousand_tee_receipts_settle_in_one_batch_and_a_client_proves_its_own(net, batching_node, tmp_path):
    node, client = batching_node["node"], net.key("dev6")
    net.send("dev6", MsgDeposit(node, 10**12))
    escrow_before = net.escrow(client.address, node)
    allowance = SpendingAllowance(net.chain_id, client.address, node, cap=10**11, expiry=10**6, nonce=1)
    headers = {"Authorization": f"Bearer {encode_api_key(allowance, allowance.sign(client))}"}
    body = {"model": "iris", "mode": "tee", "input": IRIS_INPUT}

    def serve(_: int) -> dict[str, Any]:
        response = httpx.post(f"{batching_node['url']}/v1/infer", json=body, headers=headers, timeout=60)
        assert response.status_code == 200, response.text
        return dict(response.json()["receipt"])

    with ThreadPoolExecutor(4) as pool:
        receipts = [SignedReceipt.from_json(r) for r in pool.map(serve, range(RECEIPTS))]
    assert {r.receipt.mode for r in receipts} == {"tee"}
    fees = sum(r.receipt.fee for r in receipts)

    last = receipts[-1].receipt
    deadline = time.monotonic() + 120
    while True:  # the 1,000th receipt fills the batch: the settler sends it at once
        try:
            mark = net.chain.query("/inference/request", f"{last.client}/{last.request_id}".encode())
            break
        except Exception:
            assert time.monotonic() < deadline, batching_node["log"].read_text()[-3000:]
            time.sleep(0.5)
    batch = net.chain.query("/inference/batch", str(mark["batch"]).encode())
    assert (batch["count"], batch["settled"], batch["rejected"]) == (RECEIPTS, RECEIPTS, [])
    assert batch["mode"] == "tee" and batch["node"] == node and batch["dev"] is True
    enclaves = net.chain.query("/tee/node_enclaves", node.encode())["enclaves"]
    assert batch["signer"] in {e["key"] for e in enclaves} and batch["signer"] != node
    for signed in receipts[::97]:  # every receipt sits in that one batch, at its own index
        got = net.chain.query("/inference/request", f"{client.address}/{signed.receipt.request_id}".encode())
        assert got["batch"] == mark["batch"] and got["receipt_id"] == signed.id and got["status"] == "verified"

    settlement_fees = sum(net.settlement_fee(r.receipt.fee) for r in receipts)
    assert int(batch["fees"]) == fees and int(batch["settlement_fees"]) == settlement_fees
    assert net.escrow(client.address, node) == escrow_before - fees - settlement_fees
    spent = net.chain.query("/inference/allowance", canonical_json(allowance.to_json()))["spent"]
    assert int(spent) == fees
    net.assert_supply_holds()
    assert_validators_agree(net.handle, int(batch["height"]))  # each executed the batch alike

    # The client proves receipt 500 from the chain alone, with the CLI ...
    mine = receipts[500]
    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(mine.to_json()))
    shown = haca(net, "receipt", "show", mine.id, "--prove", "--receipt", str(path), "--node", batching_node["url"])
    assert shown["status"] == "verified" and shown["batch"] == mark["batch"]
    assert shown["proof"]["verified"] is True and shown["proof"]["root"] == batch["root"]
    assert shown["proof"]["settled"] == f"item {shown['index']} of {RECEIPTS} in batch {mark['batch']}"
    assert len(shown["proof"]["path"]) == 10
    # ... and with the SDK; a receipt with another output is not the one the chain settled.
    inclusion = prove_batched_receipt(net.chain, mine.receipt)
    assert inclusion.proof.receipt_id == mine.id and inclusion.batch.root == batch["root"]
    forged = dataclasses.replace(mine.receipt, output_hash="0x" + "ab" * 32)
    with pytest.raises(ProofInvalid, match="settled with receipt"):
        prove_batched_receipt(net.chain, forged)

    # The node's own view agrees.
    stored = httpx.get(f"{batching_node['url']}/v1/receipts/{mine.id}").json()
    assert stored["status"] == "verified"
