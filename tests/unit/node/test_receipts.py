"""The node's durable receipt queue: duplicates refused, unsettled totals exact across marks and reopen."""

import pytest

from haca.crypto.keys import PrivateKey
from haca.node.receipts import DuplicateRequest, ReceiptStore
from haca.types.payment import PaymentAuthorization, SignedPayment, SpendingAllowance
from haca.types.receipt import Receipt, SignedReceipt

NODE, CLIENT = PrivateKey.from_seed("node"), PrivateKey.from_seed("client")
MODEL = "sha256:" + "ab" * 32


def receipt(n: int, fee: int) -> SignedReceipt:
    r = Receipt(
        "c",
        NODE.address,
        CLIENT.address,
        "0x" + f"{n:064x}",
        MODEL,
        "vanilla",
        "0x" + "00" * 32,
        "0x" + "11" * 32,
        fee,
        1,
        0,
    )
    return SignedReceipt(r, r.sign(NODE))


def per_request(n: int) -> SignedPayment:
    auth = PaymentAuthorization("c", CLIENT.address, NODE.address, "0x" + f"{n:064x}", MODEL, "vanilla", 10**6, 99)
    return SignedPayment("request", auth, auth.sign(CLIENT))


def test_duplicate_request_is_refused(tmp_path):
    store = ReceiptStore(tmp_path / "r.db")
    store.add(receipt(1, 10), per_request(1))
    with pytest.raises(DuplicateRequest):
        store.add(receipt(1, 11), per_request(1))
    assert store.has_request(CLIENT.address, "0x" + f"{1:064x}")


def test_unsettled_totals_follow_marks_and_survive_reopen(tmp_path):
    store = ReceiptStore(tmp_path / "r.db")
    allowance = SpendingAllowance("c", CLIENT.address, NODE.address, 1000, 99, 7)
    allowance_payment = SignedPayment("allowance", allowance, allowance.sign(CLIENT))
    receipts = [receipt(i, 10 * (i + 1)) for i in range(4)]
    for i, signed in enumerate(receipts):
        store.add(signed, allowance_payment if i % 2 else per_request(i))
    assert store.unsettled_charges(CLIENT.address) == (4, 10 + 20 + 30 + 40)
    assert store.unsettled_allowance(allowance.id) == 20 + 40
    store.mark([receipts[1].id], "submitted", tx_hash="AB")
    assert store.unsettled_charges(CLIENT.address) == (4, 100)
    store.mark([receipts[1].id, receipts[0].id], "settled", height=5)
    assert store.unsettled_charges(CLIENT.address) == (2, 70) and store.unsettled_allowance(allowance.id) == 40
    store.mark([receipts[2].id], "rejected", error="bad")
    store.close()
    reopened = ReceiptStore(tmp_path / "r.db")
    assert reopened.unsettled_charges(CLIENT.address) == (1, 40)
    assert [r.item.receipt.id for r in reopened.unsettled(10)] == [receipts[3].id]
    assert reopened.get(receipts[2].id).error == "bad" and reopened.get(receipts[0].id).height == 5
    reopened.mark([receipts[2].id], "pending")  # a rejected receipt retried counts again
    assert reopened.unsettled_charges(CLIENT.address) == (2, 70)


def test_a_proof_queued_as_ezkl_json_is_read_back_in_the_binary_form_the_chain_takes(tmp_path):
    """A node's queue may hold proofs stored before the binary encoding; the chain takes only that
    encoding (it runs no JSON parser on evidence), so the store hands them out converted."""
    from haca.proofs.zk.proof import encode_proof, ezkl_proof_json

    binary = encode_proof(bytes(range(40)), (("01" + "00" * 31, "02" + "00" * 31),))
    store = ReceiptStore(tmp_path / "r.db")
    store.add(receipt(1, 10), per_request(1), evidence=ezkl_proof_json(binary))
    stored = store.get(receipt(1, 10).id)
    assert stored is not None and stored.item.evidence == binary
    (pending,) = store.unsettled(10)
    assert pending.item.evidence == binary
