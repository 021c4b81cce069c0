"""The node in tee mode with a real enclave (`haca enclave serve`'s server, DEV platform) on a Unix
socket: the enclave runs its own copy of the model and signs what it computed; the node only
forwards the paid request and keeps what comes back. A host that alters the answer, or an enclave
that answers with another key, gets nothing kept; a tee request the enclave cannot serve now is a
503 before anything is charged."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from haca.client.payment import PaymentOffer, ReceiptInvalid, sign_payment, verify_answer
from haca.enclave.client import AsyncEnclaveClient, EnclaveClient
from haca.enclave.evidence import DevPlatform
from haca.enclave.models import ModelStore
from haca.enclave.runtime import Enclave
from haca.node.enclave import EnclaveKey
from haca.node.errors import EnclaveUnavailable
from haca.proofs.tee.dev import issue_dev_platform, make_dev_root
from haca.proofs.verifier import EnclaveStanding
from haca.types.receipt import SignedReceipt
from tests.unit.enclave.serving import serving
from tests.unit.node.nodehelpers import CHAIN_ID, CLIENT, HEIGHT, NODE
from tests.unit.node.test_api import INPUT, PRICE, SCHEMA, Node, assert_error, build_double, make_node


@dataclasses.dataclass
class RunningEnclave:
    socket: Path
    enclave: Enclave


@pytest.fixture(scope="module")
def enclave(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEnclave]:
    base = tmp_path_factory.mktemp("tee")
    make_dev_root(base / "root")
    issue_dev_platform(base / "root", base / "platform")
    models = base / "models"
    models.mkdir()
    model_id = build_double(base / "double.onnx")
    shutil.copy(base / "double.onnx", models / (model_id.removeprefix("sha256:") + ".onnx"))
    store = ModelStore(models, private_dir=base / "private")
    runtime = Enclave(DevPlatform(base / "platform", b"\x07" * 32), b"\x07" * 32, store)
    with serving(runtime, base / "e.sock"):
        with EnclaveClient(base / "e.sock") as client:
            client.load(model_id, "onnx")
        yield RunningEnclave(base / "e.sock", runtime)


def enclave_key(socket: Path, good_until: int) -> EnclaveKey:
    """The node's handle on its enclave, as if the chain had attested the key up to `good_until`."""
    sync = EnclaveClient(socket)
    sync.attest(CHAIN_ID, NODE.address, b"\x01" * 32)  # the enclave serves only a node it attested for
    key = EnclaveKey(None, NODE, sync, AsyncEnclaveClient(socket), threading.Lock())  # type: ignore[arg-type]
    key.good_until, key.attested_height = good_until, HEIGHT - 10
    return key


def tee_node(tmp_path: Path, socket: Path | None, good_until: int = HEIGHT + 50) -> tuple[Node, EnclaveKey | None]:
    key = enclave_key(socket, good_until) if socket else None
    return make_node(tmp_path, modes=("tee", "vanilla"), enclave=key), key


def pay(node: Node, mode: str) -> tuple[object, dict[str, str]]:
    offer = PaymentOffer.from_402(node.client.post("/v1/infer", json={"model": "double"}).json(), "double", mode)
    auth, header = sign_payment(CLIENT, offer, PRICE)
    return auth, {"X-PAYMENT": header}


def standing(key: str, covered: bool = True, approved: bool = True) -> EnclaveStanding:
    return EnclaveStanding(key, NODE.address, "dev", "dev:" + "00" * 32, True, covered, approved)


def test_a_tee_answer_is_computed_and_signed_in_the_enclave_and_passes_the_clients_check(tmp_path, enclave):
    node, key = tee_node(tmp_path, enclave.socket)
    assert key is not None and key.address == enclave.enclave.address != NODE.address
    auth, headers = pay(node, "tee")
    response = node.client.post("/v1/infer", json={"model": "double", "mode": "tee", "input": INPUT}, headers=headers)
    assert response.status_code == 200, response.text
    signed = SignedReceipt.from_json(response.json()["receipt"])
    assert signed.receipt.mode == "tee" and signed.receipt.node == NODE.address
    assert signed.receipt.signer(signed.signature) == key.address
    assert enclave.enclave.produced(signed.receipt.digest)  # the enclave built this receipt itself
    lookup = {key.address: standing(key.address)}.get
    verify_answer(response.json(), INPUT, SCHEMA, NODE.address, auth, lookup)  # type: ignore[arg-type]
    stored = node.store.get(signed.id)
    assert stored is not None and stored.item.receipt.signature == signed.signature


def test_a_host_that_alters_the_enclaves_output_gets_an_answer_no_client_accepts(tmp_path, enclave):
    node, key = tee_node(tmp_path, enclave.socket)
    assert key is not None
    auth, headers = pay(node, "tee")
    answer = node.client.post(
        "/v1/infer", json={"model": "double", "mode": "tee", "input": INPUT}, headers=headers
    ).json()
    lookup = {key.address: standing(key.address)}.get
    answer["output"]["y"]["data"][0][0] += 1.0  # the host changes the output after the enclave answered
    with pytest.raises(ReceiptInvalid, match="output"):
        verify_answer(answer, INPUT, SCHEMA, NODE.address, auth, lookup)  # type: ignore[arg-type]
    # …and re-hashing it into the receipt breaks the enclave's signature: no attested key signed that
    signed = SignedReceipt.from_json(answer["receipt"])
    forged = dataclasses.replace(signed.receipt, output_hash="0x" + "00" * 32)
    assert forged.signer(signed.signature) != key.address


def test_vanilla_receipts_of_the_same_node_are_still_signed_by_its_account_key(tmp_path, enclave):
    node, _ = tee_node(tmp_path, enclave.socket)
    _, headers = pay(node, "vanilla")
    response = node.client.post("/v1/infer", json={"model": "double", "input": INPUT}, headers=headers)
    signed = SignedReceipt.from_json(response.json()["receipt"])
    assert signed.receipt.signer(signed.signature) == NODE.address


def test_a_tee_request_past_the_keys_coverage_is_a_503_before_anything_is_charged(tmp_path, enclave):
    node, _ = tee_node(tmp_path, enclave.socket, good_until=HEIGHT - 1)
    _, headers = pay(node, "tee")
    response = node.client.post("/v1/infer", json={"model": "double", "mode": "tee", "input": INPUT}, headers=headers)
    message = assert_error(response, 503, "enclave_unavailable")
    assert f"covers blocks up to {HEIGHT - 1}" in message
    assert node.store.unsettled_count() == 0
    assert node.store.unsettled_charges(CLIENT.address) == (0, 0)


def test_a_tee_request_at_a_height_before_the_keys_coverage_resumed_is_a_503(tmp_path, enclave):
    """Found by the chaos campaign: after a lapse the chain covers the key again only from its
    re-attestation; a receipt for a height in the lapse would never settle (the node loses the fee)."""
    node, key = tee_node(tmp_path, enclave.socket)
    assert key is not None
    key.covered_from = HEIGHT + 1  # re-attested after the quoted height
    _, headers = pay(node, "tee")
    response = node.client.post("/v1/infer", json={"model": "double", "mode": "tee", "input": INPUT}, headers=headers)
    message = assert_error(response, 503, "enclave_unavailable")
    assert f"covers blocks from {HEIGHT + 1}" in message
    assert node.store.unsettled_count() == 0


class ApprovalsChain:
    """The two reads the heartbeat makes of the measurement's approvals."""

    def __init__(self, approvals: list[dict[str, str]]) -> None:
        self.approvals = approvals

    def query(self, path: str, data: bytes = b"") -> dict:
        if path == "/tee/enclave":
            return {"enclave": {"key": data.decode(), "measurement_id": "dev:" + "07" * 32}}
        assert path == "/tee/measurements"
        return {"approvals": self.approvals}


@pytest.mark.parametrize("approved_again", ["*", "double"])
def test_a_tee_request_while_the_measurement_is_revoked_is_a_503_and_served_again_once_approved(
    tmp_path, enclave, approved_again
):
    """The chaos campaign's revoke-measurement: a node that served while revoked signed receipts
    that settled once governance approved again, charging clients whose SDK had refused the answer."""
    mid = "dev:" + "07" * 32
    chain = ApprovalsChain([{"model": "double", "measurement_id": "dev:" + "08" * 32}])  # another's only
    node, key = tee_node(tmp_path / "revoked", enclave.socket)
    assert key is not None
    key.chain = chain  # type: ignore[assignment]
    key.read_approvals(HEIGHT)
    _, headers = pay(node, "tee")
    response = node.client.post("/v1/infer", json={"model": "double", "mode": "tee", "input": INPUT}, headers=headers)
    message = assert_error(response, 503, "enclave_unavailable")
    assert f"measurement {mid} is not approved for model 'double'" in message
    assert node.store.unsettled_count() == 0 and node.store.unsettled_charges(CLIENT.address) == (0, 0)
    # approved again, for every model or for this one: read at the next block, served
    node, key = tee_node(tmp_path / "approved", enclave.socket)
    assert key is not None
    key.chain = chain  # type: ignore[assignment]
    chain.approvals = [{"model": approved_again, "measurement_id": mid}]
    key.read_approvals(HEIGHT + 1)
    _, headers = pay(node, "tee")
    response = node.client.post("/v1/infer", json={"model": "double", "mode": "tee", "input": INPUT}, headers=headers)
    assert response.status_code == 200, response.text


def test_a_node_without_an_enclave_refuses_tee_with_a_503(tmp_path):
    node, _ = tee_node(tmp_path, None)
    _, headers = pay(node, "tee")
    response = node.client.post("/v1/infer", json={"model": "double", "mode": "tee", "input": INPUT}, headers=headers)
    assert "no enclave" in assert_error(response, 503, "enclave_unavailable")
    assert node.store.unsettled_count() == 0


def test_a_receipt_signed_by_another_key_than_the_registered_one_is_not_kept(tmp_path, enclave):
    """The enclave restarted (a new key, not yet registered): its receipt would never settle, so the
    node keeps nothing and answers 503."""
    node, key = tee_node(tmp_path, enclave.socket)
    assert key is not None
    key.address = "0x" + "12" * 20  # what the node registered before the enclave came back with a new key
    _, headers = pay(node, "tee")
    response = node.client.post("/v1/infer", json={"model": "double", "mode": "tee", "input": INPUT}, headers=headers)
    assert "not the registered enclave key" in assert_error(response, 503, "enclave_unavailable")
    assert node.store.unsettled_count() == 0


def test_an_input_the_enclave_refuses_is_a_422_and_nothing_is_kept(tmp_path, enclave):
    node, _ = tee_node(tmp_path, enclave.socket)
    _, headers = pay(node, "tee")
    response = node.client.post(
        "/v1/infer", json={"model": "double", "mode": "tee", "input": [[1.0, 2.0, 3.0]]}, headers=headers
    )
    assert_error(response, 422, "invalid_input")
    assert node.store.unsettled_count() == 0


def test_the_node_refuses_a_receipt_for_another_request(enclave):
    key = enclave_key(enclave.socket, HEIGHT + 50)
    runtime = enclave.enclave
    model_id = runtime.models.loaded[0]
    terms = tee_terms_for(request_id="0x" + "01" * 32)
    _, signed = runtime.infer(model_id, INPUT, terms)
    with pytest.raises(EnclaveUnavailable, match="request_id"):
        key.check(signed, model_id, dataclasses.replace(terms, request_id="0x" + "02" * 32))


def tee_terms_for(request_id: str):  # type: ignore[no-untyped-def]
    from haca.enclave.runtime import Terms

    return Terms(CHAIN_ID, NODE.address, CLIENT.address, request_id, HEIGHT, PRICE, "request", 8, 0, PRICE)
