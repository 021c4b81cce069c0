"""The node in tee mode, with a real DEV attester on a Unix socket: tee receipts are signed inside
the enclave (never by the node's account key), the client's check accepts them only against an
attested key, and a tee request the enclave cannot sign now is a 503 before anything is charged."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from haca.attester.client import AsyncAttesterClient, AttesterClient
from haca.attester.enclave import DevEnclave
from haca.attester.server import AttesterServer
from haca.client.payment import PaymentOffer, ReceiptInvalid, sign_payment, verify_answer
from haca.node.enclave import EnclaveKey
from haca.node.errors import EnclaveUnavailable
from haca.proofs.tee.dev import issue_dev_platform, make_dev_root
from haca.proofs.verifier import EnclaveStanding
from haca.types.receipt import Receipt, SignedReceipt
from tests.unit.node.nodehelpers import CHAIN_ID, CLIENT, HEIGHT, NODE
from tests.unit.node.test_api import INPUT, PRICE, SCHEMA, Node, assert_error, make_node


@pytest.fixture(scope="module")
def attester(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("tee")
    make_dev_root(base / "root")
    issue_dev_platform(base / "root", base / "platform")
    server = AttesterServer(DevEnclave(base / "platform"), base / "e.sock")
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(5)
    yield base / "e.sock"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def enclave_key(socket: Path, good_until: int) -> EnclaveKey:
    """The node's handle on its enclave, as if the chain had attested the key up to `good_until`."""
    sync = AttesterClient(socket)
    sync.attest(CHAIN_ID, NODE.address, b"\x01" * 32)  # the enclave signs only for a chain it attested for
    key = EnclaveKey(None, NODE, sync, AsyncAttesterClient(socket), threading.Lock())  # type: ignore[arg-type]
    key.good_until, key.attested_height = good_until, HEIGHT - 10
    return key


def tee_node(tmp_path: Path, socket: Path | None, good_until: int = HEIGHT + 50) -> tuple[Node, EnclaveKey | None]:
    enclave = enclave_key(socket, good_until) if socket else None
    return make_node(tmp_path, modes=("tee", "vanilla"), enclave=enclave), enclave


def pay(node: Node, mode: str) -> tuple[object, dict[str, str]]:
    offer = PaymentOffer.from_402(node.client.post("/v1/infer", json={"model": "double"}).json(), "double", mode)
    auth, header = sign_payment(CLIENT, offer, PRICE)
    return auth, {"X-PAYMENT": header}


def standing(key: str, covered: bool = True, approved: bool = True) -> EnclaveStanding:
    return EnclaveStanding(key, NODE.address, "dev", "dev:" + "00" * 32, True, covered, approved)


def test_a_tee_receipt_is_signed_by_the_enclave_key_and_passes_the_clients_check(tmp_path, attester):
    node, enclave = tee_node(tmp_path, attester)
    assert enclave is not None and enclave.address != NODE.address
    auth, headers = pay(node, "tee")
    response = node.client.post("/v1/infer", json={"model": "double", "mode": "tee", "input": INPUT}, headers=headers)
    assert response.status_code == 200, response.text
    signed = SignedReceipt.from_json(response.json()["receipt"])
    assert signed.receipt.mode == "tee" and signed.receipt.node == NODE.address
    assert signed.receipt.signer(signed.signature) == enclave.address
    lookup = {enclave.address: standing(enclave.address)}.get
    verify_answer(response.json(), INPUT, SCHEMA, NODE.address, auth, lookup)  # type: ignore[arg-type]
    with pytest.raises(ReceiptInvalid, match="not an enclave key attested for node"):
        verify_answer(response.json(), INPUT, SCHEMA, NODE.address, auth, lambda key: None)  # type: ignore[arg-type]
    stored = node.store.get(signed.id)
    assert stored is not None and stored.item.receipt.signature == signed.signature


def test_vanilla_receipts_of_the_same_node_are_still_signed_by_its_account_key(tmp_path, attester):
    node, _ = tee_node(tmp_path, attester)
    _, headers = pay(node, "vanilla")
    response = node.client.post("/v1/infer", json={"model": "double", "input": INPUT}, headers=headers)
    signed = SignedReceipt.from_json(response.json()["receipt"])
    assert signed.receipt.signer(signed.signature) == NODE.address


def test_a_tee_request_past_the_keys_coverage_is_a_503_before_anything_is_charged(tmp_path, attester):
    node, _ = tee_node(tmp_path, attester, good_until=HEIGHT - 1)
    _, headers = pay(node, "tee")
    response = node.client.post("/v1/infer", json={"model": "double", "mode": "tee", "input": INPUT}, headers=headers)
    message = assert_error(response, 503, "enclave_unavailable")
    assert f"covers blocks up to {HEIGHT - 1}" in message
    assert node.store.unsettled_count() == 0
    assert node.store.unsettled_charges(CLIENT.address) == (0, 0)


def test_a_node_without_an_enclave_refuses_tee_with_a_503(tmp_path):
    node, _ = tee_node(tmp_path, None)
    _, headers = pay(node, "tee")
    response = node.client.post("/v1/infer", json={"model": "double", "mode": "tee", "input": INPUT}, headers=headers)
    assert "no enclave" in assert_error(response, 503, "enclave_unavailable")
    assert node.store.unsettled_count() == 0


def test_concurrent_tee_signatures_are_coalesced_into_few_round_trips(attester):
    enclave = enclave_key(attester, HEIGHT + 50)
    receipts = [tee_receipt(n) for n in range(40)]
    calls: list[int] = []
    batch_of_many, one = enclave.signer.sign_receipts, enclave.signer.sign_receipt

    async def counted_many(batch):  # type: ignore[no-untyped-def]
        calls.append(len(batch))
        return await batch_of_many(batch)

    async def counted_one(receipt):  # type: ignore[no-untyped-def]
        calls.append(1)
        return await one(receipt)

    enclave.signer.sign_receipts, enclave.signer.sign_receipt = counted_many, counted_one  # type: ignore[method-assign]

    async def sign_all() -> list[bytes]:
        return await asyncio.gather(*(enclave.sign(r) for r in receipts))

    signatures = asyncio.run(sign_all())
    assert [r.signer(s) for r, s in zip(receipts, signatures, strict=True)] == [enclave.address] * 40
    assert sum(calls) == 40 and len(calls) <= 3  # the first alone, then the rest together


def test_a_batch_refuses_only_the_receipt_the_enclave_will_not_sign(attester):
    enclave = enclave_key(attester, HEIGHT + 50)
    good, vanilla = tee_receipt(1), dataclasses.replace(tee_receipt(2), mode="vanilla")

    async def both() -> list[bytes | BaseException]:
        signing = (enclave.sign(good), enclave.sign(good), enclave.sign(vanilla))
        return await asyncio.gather(*signing, return_exceptions=True)

    first, second, refused = asyncio.run(both())
    assert isinstance(first, bytes) and isinstance(second, bytes)
    assert isinstance(refused, EnclaveUnavailable) and "tee" in str(refused)


def tee_receipt(n: int) -> Receipt:
    return Receipt(
        CHAIN_ID,
        NODE.address,
        CLIENT.address,
        "0x" + f"{n:064x}",
        "sha256:" + "ab" * 32,
        "tee",
        "0x" + "00" * 32,
        "0x" + "11" * 32,
        10,
        HEIGHT,
        0,
    )
