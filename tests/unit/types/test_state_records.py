"""The inference and tee modules' records (SettlementRecord, ClaimRecord, EnclaveRecord): stored as
the dicts they replaced, field for field, and a malformed one refused naming the field."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from haca.types.batch import BatchMark, BatchRecord, RejectedItem
from haca.types.inference import EscrowAnswer, EscrowLane, Withdrawal
from haca.types.modes import Status
from haca.types.settlement import (
    ClaimPenalty,
    ClaimRecord,
    EnclaveSigner,
    SettlementRecord,
    request_settlement,
)
from haca.types.tee import EnclaveRecord

A, B, C = "0x" + "aa" * 20, "0x" + "bb" * 20, "0x" + "cc" * 20
RID, REQ, MODEL = "0x" + "11" * 32, "0x" + "22" * 32, "sha256:" + "3" * 64
SETTLED = SettlementRecord(RID, Status.SETTLED, 9, A, B, REQ, MODEL, "vanilla", 100, 3, "allowance")
CLAIM = ClaimRecord(B, A, REQ, MODEL, "iris", "tee", 100, 103, C, "request", "", 7, 50, 60, 9, 59)
ENCLAVE = EnclaveRecord(
    C, A, "dev", "dev:" + "4" * 64, True, False, "UpToDate",
    ({"format": "dev-gpu", "chip": "GH100", "board": "b", "driver_version": "1", "vbios_version": "2", "dev": True},),
    3, 9, 29,
)  # fmt: skip


def test_a_settlement_record_is_written_as_the_settle_handler_wrote_its_dict() -> None:
    tee = dataclasses.replace(SETTLED, status=Status.VERIFIED, mode="tee", enclave=EnclaveSigner(C, "dev", True))
    assert tee.to_json() == {
        **SETTLED.to_json(),
        "status": "verified",
        "mode": "tee",
        "enclave_key": C,
        "attestation": "dev",
        "dev": True,
    }
    assert SETTLED.to_json()["fee"] == "100" and SETTLED.to_json()["height"] == 9
    for record in (SETTLED, tee):
        assert SettlementRecord.from_json(record.to_json()) == record


def test_an_expired_claims_record_carries_its_penalty() -> None:
    failed = dataclasses.replace(
        SETTLED, status=Status.FAILED, fee=0, settlement_fee=0, payment="claim",
        penalty=ClaimPenalty("claim_expired: no valid evidence", 40, 20, 103),
    )  # fmt: skip
    doc = failed.to_json()
    assert (doc["slashed"], doc["compensation"], doc["refunded"]) == ("40", "20", "103")
    assert SettlementRecord.from_json(doc) == failed


def test_a_requests_answer_is_a_record_or_a_batch_mark() -> None:
    mark = BatchMark("0x" + "55" * 32, 12, 4, RID, "settled")
    assert request_settlement(mark.to_json()) == mark
    assert request_settlement(SETTLED.to_json()) == SETTLED


def test_claim_and_enclave_records_round_trip() -> None:
    assert ClaimRecord.from_json(CLAIM.to_json()) == CLAIM
    assert CLAIM.to_json()["held"] == "103" and CLAIM.to_json()["deadline"] == 59
    assert EnclaveRecord.from_json(ENCLAVE.to_json()) == ENCLAVE
    lapsed = dataclasses.replace(ENCLAVE, lapsed=True)
    assert lapsed.to_json() == {**ENCLAVE.to_json(), "lapsed": True} and "lapsed" not in ENCLAVE.to_json()
    assert EnclaveRecord.from_json(lapsed.to_json()) == lapsed


@pytest.mark.parametrize(
    ("parse", "doc", "message"),
    [
        (SettlementRecord.from_json, {**SETTLED.to_json(), "status": "done"}, "status: expected one of"),
        (SettlementRecord.from_json, {**SETTLED.to_json(), "payment": "cash"}, "payment: expected one of"),
        (SettlementRecord.from_json, {**SETTLED.to_json(), "height": "9"}, "height: expected a block height"),
        (
            SettlementRecord.from_json,
            {**SETTLED.to_json(), "dev": True},
            r"missing fields \['attestation', 'enclave_key'\]",
        ),
        (ClaimRecord.from_json, {**CLAIM.to_json(), "fee": 1.5}, "fee: expected an unsigned"),
        (ClaimRecord.from_json, {**CLAIM.to_json(), "allowance_id": "0x12"}, "allowance_id: expected 0x"),
        (EnclaveRecord.from_json, {**ENCLAVE.to_json(), "measurement_id": "dev:xyz"}, "measurement_id: expected"),
        (EnclaveRecord.from_json, {**ENCLAVE.to_json(), "lapsed": "yes"}, "lapsed: expected true or false"),
        (EnclaveRecord.from_json, {**ENCLAVE.to_json(), "gpus": [{"chip": "GH100"}]}, r"gpus\[0\]: missing fields"),
    ],
)
def test_a_malformed_record_is_refused_naming_the_field(parse: Any, doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(doc)


def test_an_escrow_answer_round_trips_and_its_total_is_the_sum_of_its_lanes() -> None:
    lanes = (EscrowLane(A, 500, 200, 300, (Withdrawal(40, 200),)), EscrowLane(C, 70, 0, 70, ()))
    answer = EscrowAnswer(B, 570, lanes)
    doc = answer.to_json()
    assert doc["lanes"][0] == {
        "node": A,
        "escrow": "500",
        "withdrawing": "200",
        "available": "300",
        "withdrawals": [{"release_height": 40, "amount": "200"}],
    }
    assert EscrowAnswer.from_json(doc) == answer
    with pytest.raises(ValueError, match="escrow: not the sum of its lanes"):
        EscrowAnswer.from_json({**doc, "escrow": "571"})


def test_a_batch_record_round_trips_and_its_items_add_up() -> None:
    record = BatchRecord(
        "0x" + "66" * 32, A, "tee", "0x" + "77" * 32, 3, C, 12, 2, (RejectedItem(1, 16, "payment expired"),),
        200, 6, "dev", True,
    )  # fmt: skip
    doc = record.to_json()
    assert (doc["attestation"], doc["dev"], doc["fees"], doc["rejected"]) == (
        "dev",
        True,
        "200",
        [{"index": 1, "code": 16, "log": "payment expired"}],
    )
    assert BatchRecord.from_json(doc) == record
    vanilla = dataclasses.replace(record, mode="vanilla", signer=A, attestation=None, dev=None)
    assert "attestation" not in vanilla.to_json() and BatchRecord.from_json(vanilla.to_json()) == vanilla
    with pytest.raises(ValueError, match="do not add up to the batch's count"):
        BatchRecord.from_json({**doc, "settled": 3})
