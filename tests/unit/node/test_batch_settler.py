"""The settler's batch path: the flush policy (a full batch goes at once; otherwise after `idle`
seconds without a new receipt, or once the oldest has waited `max_age`), chunks within a batch's
limits, and recognising a receipt the chain settled in a batch (whose record is only a pointer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from haca.crypto.keys import PrivateKey
from haca.node.receipts import ReceiptStore, StoredReceipt
from haca.node.settler import FlushPolicy, Settler, batch_chunks
from haca.types.batch import MAX_BATCH_ALLOWANCES, MAX_BATCH_ITEMS, BatchMark
from haca.types.inference import SettlementItem
from haca.types.modes import Status
from haca.types.payment import SpendingAllowance
from tests.unit.node.nodehelpers import CHAIN_ID, NODE, allowance_payment, signed_receipt

POLICY = FlushPolicy(max_receipts=100, idle=0.5, max_age=5.0)


def test_a_full_batch_is_due_at_once():
    assert POLICY.due(100, now=10.0, last_queued=10.0, first_queued=10.0)
    assert not POLICY.due(99, now=10.0, last_queued=10.0, first_queued=10.0)


def test_a_pause_in_traffic_flushes_what_waits():
    assert not POLICY.due(3, now=10.4, last_queued=10.0, first_queued=9.0)
    assert POLICY.due(3, now=10.5, last_queued=10.0, first_queued=9.0)


def test_steady_traffic_flushes_at_the_max_age():
    # a receipt every 0.1 s never leaves the node idle for 0.5 s
    assert not POLICY.due(40, now=14.9, last_queued=14.85, first_queued=10.0)
    assert POLICY.due(40, now=15.0, last_queued=14.95, first_queued=10.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_receipts": 0}, {"max_receipts": MAX_BATCH_ITEMS + 1}, {"idle": 0}, {"max_age": -1}],
)
def test_a_policy_outside_its_bounds_is_refused(kwargs):
    with pytest.raises(ValueError):
        FlushPolicy(**kwargs)


def stored(n: int, client: PrivateKey) -> StoredReceipt:
    allowance = SpendingAllowance(CHAIN_ID, client.address, NODE.address, 10**9, 10**6, n)
    item = SettlementItem(signed_receipt(n, client=client), allowance_payment(allowance, client))
    return StoredReceipt(item, Status.PENDING, None, None, None)


def test_chunks_stay_within_the_batch_limit_on_distinct_allowances():
    clients = [PrivateKey.from_seed(f"batch client {i}") for i in range(MAX_BATCH_ALLOWANCES + 10)]
    receipts = [stored(i, c) for i, c in enumerate(clients)]
    chunks = batch_chunks(receipts, 1000)
    assert [len(c) for c in chunks] == [MAX_BATCH_ALLOWANCES, 10]
    assert [len(c) for c in batch_chunks(receipts[:5], 2)] == [2, 2, 1]


class PointerView:
    """A chain view whose request record is a batch item's: a pointer with no client field."""

    def __init__(self, mark: BatchMark) -> None:
        self.mark = mark
        self.forgotten: list[str] = []

    def request_record(self, client: str, request_id: str) -> BatchMark | None:
        return self.mark

    def forget(self, client: str, allowance_id: str | None = None, height: int = 0) -> None:
        self.forgotten.append(client)


def test_a_receipt_the_chain_settled_in_a_batch_is_recognised_from_its_pointer(tmp_path: Path):
    client = PrivateKey.from_seed("batch client pointer")
    receipt = stored(1, client)
    store = ReceiptStore(tmp_path / "receipts.db")
    store.add(receipt.item.receipt, receipt.item.payment)
    view = PointerView(BatchMark("0x" + "ab" * 32, 42, 7, receipt.item.receipt.id, "verified"))
    settler = Settler(store, None, view, NODE)  # type: ignore[arg-type]
    assert settler._settled_on_chain(receipt)
    found = store.get(receipt.item.receipt.id)
    assert found is not None and (found.status, found.height) == (Status.VERIFIED, 42)
    assert view.forgotten == [client.address]
