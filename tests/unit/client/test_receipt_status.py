"""`Client.receipt_status`: the chain's answers parsed once into a ReceiptStatus — the receipt's own
settlement record, its request's mark in a batch, or pending — and a malformed answer refused."""

from __future__ import annotations

from typing import Any

import pytest

from haca.client.errors import QueryFailed
from haca.client.sdk import Client
from haca.crypto.keys import PrivateKey
from haca.types.batch import BatchMark
from haca.types.modes import Status
from haca.types.receipt import Receipt
from haca.types.settlement import EnclaveSigner, SettlementRecord

KEY = PrivateKey.from_seed("status client")
NODE = PrivateKey.from_seed("status node").address
RECEIPT = Receipt(
    "haca-test", NODE, KEY.address, "0x" + "12" * 32, "sha256:" + "1" * 64, "tee",
    "0x" + "34" * 32, "0x" + "56" * 32, 40, 7, 1_700_000_000,
)  # fmt: skip
RID = "0x" + "ab" * 32


class Answers:
    """A chain answering queries from a dict of path -> JSON (a missing path is a failed query)."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers

    def query(self, path: str, data: bytes = b"") -> Any:
        if path not in self.answers:
            raise QueryFailed(f"{path}: not found")
        return self.answers[path]

    def close(self) -> None:
        pass


def status(answers: dict[str, Any], receipt: Receipt | None = RECEIPT) -> Any:
    client = Client("http://node.test", KEY, Answers(answers))  # type: ignore[arg-type]
    try:
        return client.receipt_status(RID, receipt)
    finally:
        client.close()


def test_a_receipt_settled_alone_has_its_record() -> None:
    record = SettlementRecord(
        RID, Status.VERIFIED, 12, NODE, KEY.address, RECEIPT.request_id, RECEIPT.model_id, "tee", 40, 2,
        "allowance", EnclaveSigner("0x" + "77" * 20, "dev", True),
    )  # fmt: skip
    found = status({"/inference/receipt": record.to_json()})
    assert (found.status, found.height, found.fee, found.record, found.batch) == (Status.VERIFIED, 12, 40, record, None)
    assert found.to_json() == record.to_json()


def test_a_receipt_settled_in_a_batch_has_its_requests_mark_and_the_receipts_fee() -> None:
    mark = BatchMark("0x" + "cd" * 32, 15, 3, RID, "verified")
    found = status({"/inference/request": mark.to_json()})
    assert (found.status, found.height, found.fee, found.batch, found.record) == (Status.VERIFIED, 15, 40, mark, None)
    assert found.to_json() == {**mark.to_json(), "node": NODE, "client": KEY.address, "fee": "40"}


def test_a_mark_for_another_receipt_of_the_request_leaves_this_one_pending() -> None:
    mark = BatchMark("0x" + "cd" * 32, 15, 3, "0x" + "ef" * 32, "settled")
    found = status({"/inference/request": mark.to_json()})
    assert (found.status, found.height, found.to_json()) == (
        Status.PENDING,
        0,
        {"receipt_id": RID, "status": "pending"},
    )


def test_a_malformed_record_is_a_query_failure_not_a_status() -> None:
    with pytest.raises(QueryFailed, match="the chain's settlement record is malformed: fee"):
        status({"/inference/receipt": {**status_record(), "fee": "-3"}})


def status_record() -> dict[str, Any]:
    return SettlementRecord(
        RID, Status.SETTLED, 12, NODE, KEY.address, RECEIPT.request_id, RECEIPT.model_id, "vanilla", 40, 2, "request"
    ).to_json()
