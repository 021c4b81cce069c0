"""The node's durable receipt queue: duplicates refused, unsettled totals exact across marks and reopen."""

import sqlite3

import pytest

from haca.crypto.keys import PrivateKey
from haca.node.receipts import OUTPUT_RETENTION_BLOCKS, DuplicateRequest, ReceiptStore
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


def test_a_write_that_fails_midway_rolls_back_and_the_next_one_goes_through(tmp_path):
    """A failure inside the transaction (here an output that is not JSON) must not leave the
    shared connection inside it: every later write would fail and settling would stop."""
    store = ReceiptStore(tmp_path / "r.db")
    with pytest.raises(TypeError):
        store.add(receipt(1, 10), per_request(1), output={"output": object()})
    assert not store.has_request(CLIENT.address, "0x" + f"{1:064x}") and store.unsettled_count() == 0
    store.add(receipt(2, 10), per_request(2), output={"text": "ok"})
    store.mark([receipt(2, 10).id], "settled", height=3)
    assert store.count("settled") == 1


def test_an_output_is_kept_until_the_payment_expires_but_never_past_the_retention_bound(tmp_path):
    store = ReceiptStore(tmp_path / "r.db")
    allowance = SpendingAllowance("c", CLIENT.address, NODE.address, 1000, 2**64 - 1, 7)  # "never" expires
    store.add(receipt(1, 10), SignedPayment("allowance", allowance, allowance.sign(CLIENT)), output={"text": "a"})
    store.add(receipt(2, 10), per_request(2), output={"text": "b"})  # expiry 99
    kept = store.output(CLIENT.address, "0x" + f"{1:064x}")
    assert kept is not None and kept.expiry == 1 + OUTPUT_RETENTION_BLOCKS  # the receipt's height hint + the bound
    assert store.drop_outputs(100) == 1 and store.output(CLIENT.address, "0x" + f"{2:064x}") is None
    assert store.drop_outputs(2 + OUTPUT_RETENTION_BLOCKS) == 1


def test_a_receipt_that_no_longer_parses_is_marked_failed_not_left_to_stop_the_settler(tmp_path):
    """A receipt queued before an upgrade changed a signed type (e.g. the allowance's) can never
    settle: it is marked failed with the reason, and the others settle."""
    store = ReceiptStore(tmp_path / "r.db")
    store.add(receipt(1, 10), per_request(1))
    store.add(receipt(2, 10), per_request(2))
    with sqlite3.connect(tmp_path / "r.db") as db:
        db.execute('UPDATE receipts SET payment = \'{"kind": "allowance"}\' WHERE id = ?', (receipt(1, 10).id,))
    assert [s.item.receipt.id for s in store.unsettled(10)] == [receipt(2, 10).id]
    assert store.count("failed") == 1 and store.unsettled_charges(CLIENT.address) == (1, 10)
