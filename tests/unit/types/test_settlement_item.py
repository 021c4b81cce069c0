"""A settlement item's evidence travels as base64 (a zkml proof is most of a settlement tx, and its
tx fee is per byte), in its one canonical spelling; 0x-hex from txs made before still decodes."""

from __future__ import annotations

import base64

import pytest

from haca.types.inference import SettlementItem
from tests.unit.node.nodehelpers import per_request, signed_receipt

EVIDENCE = b"HZK\x01" + bytes(range(256)) * 4


def item(evidence: bytes = EVIDENCE) -> SettlementItem:
    return SettlementItem(signed_receipt(1), per_request(1), evidence)


def test_evidence_round_trips_as_base64_shorter_than_hex():
    doc = item().to_json()
    assert doc["evidence"] == base64.b64encode(EVIDENCE).decode()
    assert SettlementItem.from_json(doc) == item()
    assert len(doc["evidence"]) < len("0x" + EVIDENCE.hex()) * 0.7


def test_hex_evidence_from_before_still_decodes_and_no_evidence_is_empty():
    doc = {**item().to_json(), "evidence": "0x" + EVIDENCE.hex()}
    assert SettlementItem.from_json(doc).evidence == EVIDENCE
    assert SettlementItem.from_json(item(b"").to_json()).evidence == b""


@pytest.mark.parametrize(
    ("value", "reason"),
    [("not base64!", "bad base64"), (base64.b64encode(EVIDENCE).decode().rstrip("="), "bad base64"), (7, "base64")],
    ids=["garbage", "unpadded", "not-text"],
)
def test_malformed_evidence_is_refused_naming_the_field(value, reason):
    with pytest.raises(ValueError, match=f"evidence: .*{reason}"):
        SettlementItem.from_json({**item().to_json(), "evidence": value})


def test_a_second_spelling_of_the_same_bytes_is_refused():
    canonical = base64.b64encode(b"\xff").decode()  # "/w=="
    other = canonical[:1] + "x=="  # decodes to the same byte with non-zero padding bits
    assert base64.b64decode(other) == b"\xff"
    with pytest.raises(ValueError, match="canonical"):
        SettlementItem.from_json({**item().to_json(), "evidence": other})
