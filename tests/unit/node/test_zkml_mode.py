"""The node in zkml mode with a real EZKL circuit: it answers at once with the circuit's outputs and
the public instances its proof will carry (status `proving`), queues the proof job with the
receipt, and the client's check accepts the answer only if the instances commit to its own input
and stand for exactly the output it got."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from haca.client.payment import PaymentOffer, ReceiptInvalid, sign_payment, verify_answer
from haca.node.api import create_app
from haca.node.context import NodeContext, ServedModel
from haca.node.payments import PaymentGate, ProvingLoad
from haca.node.receipts import ReceiptStore
from haca.proofs.receipt import EvidenceError
from haca.proofs.zk.instances import check_answer_instances, dequantized_outputs
from haca.proofs.zk.proof import instances_commitment, witness_instances
from haca.proofs.zk.srs import file_sha256
from haca.runtime.onnx import OnnxModel
from haca.types.modes import Status
from haca.types.receipt import SignedReceipt
from haca.types.registry import CircuitRecord, ModelManifest
from tests.unit.node.nodehelpers import CHAIN_ID, CLIENT, DENOM, NODE, FakeView
from tests.unit.node.nodehelpers import manifest as chain_manifest
from tests.zkhelpers import INPUT, OTHER_INPUT, ROOT, tiny_circuit

pytestmark = pytest.mark.slow
PRICE = 7
SCHEMA = {"x": {"dtype": "float32", "shape": [-1, 4]}}
OUT_SCHEMA = {"y": {"dtype": "float32", "shape": [-1, 3]}}


@pytest.fixture(scope="module")
def circuit():  # type: ignore[no-untyped-def]
    return tiny_circuit(1)


def facts(circuit) -> CircuitRecord:  # type: ignore[no-untyped-def]
    """The manifest's circuit record, as the chain derives it from the stored settings."""
    return CircuitRecord(
        circuit.settings_hash,
        circuit.vk_hash,
        circuit.logrows,
        circuit.input_visibility,
        circuit.output_visibility,
        tuple(circuit.input_scales),
        tuple(circuit.output_scales),
        circuit.srs_hash,
    )


@dataclasses.dataclass
class ZkNode:
    client: TestClient
    store: ReceiptStore
    manifest: ModelManifest
    jobs: list[int]


@pytest.fixture
def zknode(tmp_path: Path, circuit) -> Iterator[ZkNode]:  # type: ignore[no-untyped-def]
    model_path = ROOT / "tiny-1.onnx"  # the published model (free batch); the circuit fixes it to 1
    model_id = file_sha256(model_path)
    manifest = chain_manifest(
        name="tiny", model_id=model_id, price=PRICE, max_rows=4, modes=("vanilla", "zkml"),
        input_schema=SCHEMA, output_schema=OUT_SCHEMA, circuit=facts(circuit),
    )  # fmt: skip
    served = ServedModel(manifest, OnnxModel(model_path), circuit)
    store = ReceiptStore(tmp_path / "receipts.db")
    view = FakeView()
    view.escrows[CLIENT.address] = 10**6
    view.manifests[model_id] = manifest
    gate = PaymentGate(NODE.address, CHAIN_ID, DENOM, view, store)  # type: ignore[arg-type]
    ctx = NodeContext(NODE, CHAIN_ID, {"tiny": served, model_id: served}, ("vanilla", "zkml"), gate, store)
    jobs: list[int] = []
    ctx.on_proof_job = lambda: jobs.append(1)
    yield ZkNode(TestClient(create_app(ctx)), store, manifest, jobs)
    store.close()


def ask(node: ZkNode, input: Any = INPUT) -> tuple[Any, Any]:  # type: ignore[no-untyped-def]
    offer = PaymentOffer.from_402(node.client.post("/v1/infer", json={"model": "tiny"}).json(), "tiny", "zkml")
    auth, header = sign_payment(CLIENT, offer, PRICE)
    body = {"model": "tiny", "mode": "zkml", "input": input}
    return auth, node.client.post("/v1/infer", json=body, headers={"X-PAYMENT": header})


def test_a_zkml_answer_comes_at_once_with_its_instances_and_queues_the_proof(zknode, circuit):
    auth, response = ask(zknode)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == Status.PROVING
    signed = verify_answer(answer, INPUT, SCHEMA, NODE.address, auth, circuit=zknode.manifest.circuit)
    instances = witness_instances(circuit, INPUT)
    assert [tuple(row) for row in answer["zk"]["instances"]] == list(instances)
    assert signed.receipt.instances_hash == instances_commitment(instances)
    stored = zknode.store.get(signed.id)
    assert stored is not None and stored.status == Status.PROVING
    (job,) = zknode.store.proof_jobs()
    assert job.receipt_id == signed.id and job.inputs == INPUT and zknode.jobs == [1]
    # The output is what the circuit computes (dequantized), close to the float model's.
    y = np.asarray(answer["output"]["y"]["data"], dtype=np.float32)
    assert y.shape == (1, 3)


def test_the_client_refuses_instances_that_are_not_the_receipts(zknode, circuit):
    auth, response = ask(zknode)
    answer = response.json()
    other = witness_instances(circuit, OTHER_INPUT)
    answer["zk"]["instances"] = [list(row) for row in other]
    with pytest.raises(ReceiptInvalid, match="not the ones the receipt commits to"):
        verify_answer(answer, INPUT, SCHEMA, NODE.address, auth, circuit=zknode.manifest.circuit)
    with pytest.raises(ReceiptInvalid, match="against the model's circuit"):
        verify_answer(response.json(), INPUT, SCHEMA, NODE.address, auth)


def test_instances_of_another_input_or_another_output_are_refused(circuit):
    record = facts(circuit)
    instances = witness_instances(circuit, INPUT)
    outputs = dequantized_outputs(instances, record, [3])
    check_answer_instances(instances, record, INPUT, outputs)  # the honest answer passes
    with pytest.raises(EvidenceError, match="another input"):
        check_answer_instances(instances, record, OTHER_INPUT, outputs)
    with pytest.raises(EvidenceError, match="not what the instances dequantize to"):
        check_answer_instances(instances, record, INPUT, [outputs[0] + np.float32(0.5)])


def test_more_than_one_row_is_refused_before_anything_is_run(zknode):
    _, response = ask(zknode, INPUT * 2)
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_many_rows"
    assert zknode.store.unsettled_count() == 0


def test_a_receipt_of_a_zkml_answer_is_signed_by_the_node(zknode):
    _, response = ask(zknode)
    signed = SignedReceipt.from_json(response.json()["receipt"])
    assert signed.receipt.mode == "zkml" and signed.receipt.signer(signed.signature) == NODE.address


# --- issue 19: work the node could not settle in time is refused before it is done -------------


def zk_offer(node: ZkNode) -> tuple[PaymentOffer, dict[str, Any]]:
    required = node.client.post("/v1/infer", json={"model": "tiny"}).json()
    (accept,) = [a for a in required["accepts"] if a["extra"]["mode"] == "zkml"]
    return PaymentOffer.from_402(required, "tiny", "zkml"), accept["extra"]


def test_a_zkml_payment_expiring_before_its_proof_can_settle_is_a_402_stating_the_min_expiry(zknode):
    offer, extra = zk_offer(zknode)
    least = extra["min_expiry"]
    assert least > extra["height"] + 5  # the settle margin alone does not leave time to prove
    _, header = sign_payment(CLIENT, dataclasses.replace(offer, expiry=least - 1), PRICE)
    body = {"model": "tiny", "mode": "zkml", "input": INPUT}
    response = zknode.client.post("/v1/infer", json=body, headers={"X-PAYMENT": header})
    assert response.status_code == 402
    assert f"needs an expiry of at least {least}" in response.json()["error"]
    assert zknode.store.unsettled_count() == 0
    _, header = sign_payment(CLIENT, dataclasses.replace(offer, expiry=least), PRICE)  # exactly the 402's
    assert zknode.client.post("/v1/infer", json=body, headers={"X-PAYMENT": header}).status_code == 200


def test_a_zkml_request_behind_too_long_a_proving_backlog_is_a_503_before_any_work(zknode, monkeypatch):
    offer, _ = zk_offer(zknode)
    _, header = sign_payment(CLIENT, offer, PRICE)
    gate = zknode.client.app.state.context.gate  # type: ignore[attr-defined]
    gate.proving = ProvingLoad(lambda: 5, workers=1, proof_seconds=13.0)  # 6 x 13 s > 50 blocks of 0.5 s
    gate.proving.observe(13.0)

    def no_work(*args: Any) -> Any:
        raise AssertionError("the model ran")

    monkeypatch.setattr(OnnxModel, "run", no_work)
    body = {"model": "tiny", "mode": "zkml", "input": INPUT}
    response = zknode.client.post("/v1/infer", json=body, headers={"X-PAYMENT": header})
    assert response.status_code == 503 and response.json()["error"]["code"] == "overloaded"
    assert int(response.headers["retry-after"]) >= 1
    assert zknode.store.unsettled_count() == 0 and zknode.jobs == [] and gate.holds.idle()


def test_a_zkml_input_far_outside_the_calibrated_range_is_a_json_422(zknode):
    offer, _ = zk_offer(zknode)
    _, header = sign_payment(CLIENT, offer, PRICE)
    body = {"model": "tiny", "mode": "zkml", "input": [[1e6, 0.0, 0.0, 0.0]]}
    response = zknode.client.post("/v1/infer", json=body, headers={"X-PAYMENT": header})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_input"
    assert zknode.store.unsettled_count() == 0 and zknode.jobs == []
