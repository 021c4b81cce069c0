"""The node's prover with real EZKL in spawned worker processes: a zkml receipt waits in `proving`
(the settler does not take it), its proof lands as evidence that verifies and carries the
committed instances, jobs survive a restart, and a job that keeps failing ends `failed` with the
reason after its retries."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from haca.node.prover import Prover
from haca.node.receipts import ProofJob, ReceiptStore
from haca.proofs.zk.proof import instances_commitment, verify_proof, witness_instances
from haca.types.modes import Status
from haca.types.receipt import Receipt, SignedReceipt
from tests.unit.node.nodehelpers import CHAIN_ID, CLIENT, HEIGHT, NODE, per_request
from tests.zkhelpers import INPUT, srs_of, tiny_circuit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def circuit():  # type: ignore[no-untyped-def]
    return tiny_circuit(1)


def zk_receipt(n: int, circuit) -> SignedReceipt:  # type: ignore[no-untyped-def]
    instances = witness_instances(circuit, INPUT)
    r = Receipt(
        CHAIN_ID, NODE.address, CLIENT.address, "0x" + f"{n:064x}", "sha256:" + "ab" * 32, "zkml",
        "0x" + "00" * 32, "0x" + "11" * 32, 10, HEIGHT, 0, instances_commitment(instances),
    )  # fmt: skip
    return SignedReceipt(r, r.sign(NODE))


def queue(store: ReceiptStore, n: int, circuit) -> str:  # type: ignore[no-untyped-def]
    signed = zk_receipt(n, circuit)
    store.add(signed, per_request(n), proof_job=ProofJob(signed.id, "sha256:" + "ab" * 32, INPUT, 0))
    return signed.id


def test_a_zkml_receipt_waits_proving_then_its_proof_is_its_evidence(tmp_path, circuit):
    store = ReceiptStore(tmp_path / "receipts.db")
    rid = queue(store, 1, circuit)
    assert store.get(rid).status == Status.PROVING  # type: ignore[union-attr]
    assert store.unsettled(10) == []  # the settler never sends a receipt without its proof
    assert store.unsettled_count() == 1  # but it still holds the client's escrow at the gate
    woken: list[int] = []
    prover = Prover(store, {"sha256:" + "ab" * 32: circuit}, srs_of, on_proof=lambda: woken.append(1))
    try:
        prover.drain(timeout=300)
    finally:
        prover.stop()
    stored = store.get(rid)
    assert stored is not None and stored.status == Status.PENDING and woken == [1]
    proof = stored.item.evidence
    instances = verify_proof(proof, circuit.settings_path.read_bytes(), circuit.vk_path.read_bytes(), srs_of(circuit))
    assert instances_commitment(instances) == stored.item.receipt.receipt.instances_hash
    assert [s.item.receipt.id for s in store.unsettled(10)] == [rid]


def test_proof_jobs_survive_a_restart(tmp_path, circuit):
    store = ReceiptStore(tmp_path / "receipts.db")
    rid = queue(store, 2, circuit)
    store.close()
    again = ReceiptStore(tmp_path / "receipts.db")
    (job,) = again.proof_jobs()
    assert (job.receipt_id, job.inputs, job.attempts) == (rid, INPUT, 0)
    assert again.unsettled_count() == 1


def test_a_job_without_a_circuit_fails_at_once_with_the_reason(tmp_path, circuit):
    store = ReceiptStore(tmp_path / "receipts.db")
    rid = queue(store, 3, circuit)
    prover = Prover(store, {}, srs_of)
    try:
        prover.run_once()
    finally:
        prover.stop()
    stored = store.get(rid)
    assert stored is not None and stored.status == Status.FAILED
    assert "no circuit for model" in (stored.error or "")
    assert store.unsettled_count() == 0  # a receipt that will never settle frees the escrow


def test_a_job_that_keeps_failing_is_retried_then_ends_failed(tmp_path, circuit):
    broken_dir = tmp_path / "broken"
    shutil.copytree(circuit.directory, broken_dir, ignore=shutil.ignore_patterns("pk.key", "proof-*"))
    broken = dataclasses.replace(circuit, directory=broken_dir)  # its proving key is gone
    store = ReceiptStore(tmp_path / "receipts.db")
    rid = queue(store, 4, circuit)
    prover = Prover(store, {"sha256:" + "ab" * 32: broken}, srs_of, max_attempts=2)
    try:
        prover.drain(timeout=300)
    finally:
        prover.stop()
    stored = store.get(rid)
    assert stored is not None and stored.status == Status.FAILED
    assert "ezkl could not prove" in (stored.error or "")
    assert prover.failed_total == 1 and prover.proved_total == 0
