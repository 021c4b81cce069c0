"""A refused tx names the item that sank it in its result data; the client reads it from there."""

from __future__ import annotations

import base64

from haca.client.chain import CHECK_TX_DATA, TX_RESULT_DATA, _result_data
from haca.client.errors import TxRejected
from haca.types.encoding import canonical_json

RECEIPT = "0x" + "ab" * 32


def test_the_refused_receipt_is_read_from_the_structured_data() -> None:
    data = canonical_json({"refused_item": {"index": 3, "receipt_id": RECEIPT}})
    assert TxRejected("rejected", 18, "item 3 (…): …", data).refused_receipt == RECEIPT


def test_a_refusal_without_data_or_with_other_data_names_no_receipt() -> None:
    assert TxRejected("rejected", 18, f"item 3 (receipt {RECEIPT}): no").refused_receipt is None  # not from the log
    assert TxRejected("rejected", 18, "", b"not json").refused_receipt is None
    assert TxRejected("rejected", 18, "", canonical_json({"other": 1})).refused_receipt is None


def test_a_tx_results_data_is_base64_and_a_checktx_results_is_hex() -> None:
    """CometBFT writes /tx's data as base64 and broadcast_tx_sync's as hex (issue 23: read as
    base64, hex gave other bytes, so no CheckTx refusal named its receipt and the settler sent
    every receipt alone, one a block, until payments expired)."""
    data = canonical_json({"refused_item": {"index": 0, "receipt_id": RECEIPT}})
    assert _result_data({"data": base64.b64encode(data).decode()}) == data
    assert _result_data({"data": data.hex().upper()}, CHECK_TX_DATA) == data
    assert _result_data({"data": data.hex().upper()}) != data  # the mistake this guards against
    for encoding in (CHECK_TX_DATA, TX_RESULT_DATA):
        assert _result_data({"data": None}, encoding) == b"" and _result_data({}, encoding) == b""
        assert _result_data({"data": "%%"}, encoding) == b""
