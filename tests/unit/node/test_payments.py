"""PaymentGate: who pays for a request. A per-request X-PAYMENT authorisation or a bearer API key
(a signed spending allowance) is accepted only when the chain would settle it; every refusal is a
402 carrying x402 payment requirements, a replayed request id is a 409."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from haca.client.payment import PaymentOffer, sign_payment
from haca.node.errors import PaymentRequired, RequestConflict
from haca.node.payments import PaymentGate, Quote
from haca.node.receipts import ReceiptStore
from haca.types.payment import PaymentAuthorization, SpendingAllowance, encode_api_key
from tests.unit.node.nodehelpers import (
    CHAIN_ID,
    CLIENT,
    DENOM,
    HEIGHT,
    MODEL_ID,
    NODE,
    OTHER,
    FakeView,
    allowance_payment,
    per_request,
    request_id,
    signed_receipt,
    x_payment,
)

PRICE = 100
MARGIN = 5
QUOTE = Quote(MODEL_ID, "double", "vanilla", PRICE, "http://testserver/v1/infer")
OFFER = PaymentOffer(CHAIN_ID, NODE.address, PRICE, MODEL_ID, "double", "vanilla", HEIGHT + 100)
ROOMY_ESCROW = 10**9


def need(fees: int, count: int) -> int:
    """Escrow that pays `count` fees totalling `fees`, each with the fake view's settlement fee."""
    return fees + FakeView().settlement_fee(fees, count)


@pytest.fixture
def store(tmp_path: Path) -> ReceiptStore:
    return ReceiptStore(tmp_path / "receipts.db")


@pytest.fixture
def view() -> FakeView:
    v = FakeView()
    v.escrows[CLIENT.address] = ROOMY_ESCROW
    v.escrows[OTHER.address] = ROOMY_ESCROW
    return v


@pytest.fixture
def gate(view: FakeView, store: ReceiptStore) -> PaymentGate:
    return PaymentGate(NODE.address, CHAIN_ID, DENOM, view, store, settle_margin=MARGIN)  # type: ignore[arg-type]


def authorization(**changes: object) -> PaymentAuthorization:
    auth = PaymentAuthorization(
        CHAIN_ID, CLIENT.address, NODE.address, request_id(7), MODEL_ID, "vanilla", PRICE, HEIGHT + 100
    )
    return replace(auth, **changes)


def refused(gate: PaymentGate, headers: dict[str, str]) -> PaymentRequired:
    with pytest.raises(PaymentRequired) as info:
        gate.authorize(headers, QUOTE)
    exc = info.value
    assert exc.status == 402
    assert_x402(exc.requirements, str(exc))
    return exc


def assert_x402(requirements: dict, error: str) -> None:
    assert requirements["x402Version"] == 1
    assert requirements["error"] == error
    accept = requirements["accepts"][0]
    assert accept["scheme"] == "haca-escrow"
    assert accept["network"] == CHAIN_ID
    assert accept["asset"] == DENOM
    assert accept["maxAmountRequired"] == str(PRICE)
    assert accept["payTo"] == NODE.address
    assert accept["resource"] == QUOTE.resource
    extra = accept["extra"]
    assert (extra["model_id"], extra["model"], extra["mode"]) == (MODEL_ID, "double", "vanilla")
    assert extra["min_expiry"] == HEIGHT + MARGIN and extra["suggested_expiry"] > extra["min_expiry"]
    assert PaymentOffer.from_402(requirements).fee == PRICE  # what a client needs to pay is there


# --- X-PAYMENT ---------------------------------------------------------------------------------


def test_a_signed_payment_from_sign_payment_is_accepted_with_its_client_and_request_id(gate):
    auth, header = sign_payment(CLIENT, OFFER, max_fee=150)
    accepted = gate.authorize({"x-payment": header}, QUOTE)
    assert (accepted.client, accepted.request_id) == (CLIENT.address, auth.request_id)
    assert accepted.payment.kind == "request" and accepted.payment.value == auth
    assert accepted.payment.signer() == CLIENT.address


def test_no_payment_is_a_402_with_the_x402_requirements(gate):
    exc = refused(gate, {})
    assert str(exc) == "payment required"
    exc = refused(gate, {"authorization": "Bearer sk-not-a-haca-key"})
    assert str(exc) == "payment required"


def _b64(value: object) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.b64encode(raw).decode()


def _signed_doc(auth_json: object, signature: str) -> str:
    payload = {"authorization": auth_json, "signature": signature}
    return _b64({"x402Version": 1, "scheme": "haca-escrow", "network": CHAIN_ID, "payload": payload})


MALFORMED = {
    "not_base64": "%%% not base64 %%%",
    "base64_not_json": _b64(b"\xff\xfe not json"),
    "json_not_object": _b64([1, 2, 3]),
    "missing_payload": _b64({"x402Version": 1, "scheme": "haca-escrow", "network": CHAIN_ID}),
    "payload_not_object": _b64({"x402Version": 1, "scheme": "haca-escrow", "network": CHAIN_ID, "payload": "x"}),
    "authorization_missing_fields": _signed_doc({"client": CLIENT.address}, "0x" + "00" * 65),
    "authorization_bad_field": _signed_doc({**authorization().to_json(), "max_fee": "-5"}, "0x" + "00" * 65),
    "signature_not_hex": _signed_doc(authorization().to_json(), "0xzz"),
    "signature_too_short": _signed_doc(authorization().to_json(), "0x" + "11" * 64),
    "signature_unrecoverable": _signed_doc(authorization().to_json(), "0x" + "00" * 64 + "1b"),
    "wrong_scheme": x_payment(authorization(), scheme="exact"),
    "wrong_network": x_payment(authorization(), network="other-chain"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_x_payment_is_a_402(gate, case):
    exc = refused(gate, {"x-payment": MALFORMED[case]})
    assert str(exc).startswith("invalid X-PAYMENT")


def test_an_authorisation_changed_after_signing_is_a_402(gate):
    auth = authorization()
    doc = json.loads(base64.b64decode(x_payment(auth)))
    doc["payload"]["authorization"]["max_fee"] = str(10**9)
    exc = refused(gate, {"x-payment": _b64(doc)})
    assert "not by its client" in str(exc)


def test_an_authorisation_signed_by_someone_other_than_its_client_is_a_402(gate):
    exc = refused(gate, {"x-payment": x_payment(authorization(), signer=OTHER)})
    assert f"signed by {OTHER.address}, not by its client {CLIENT.address}" in str(exc)


WRONG_AUTHORISATIONS = {
    "another_node": ({"node": OTHER.address}, f"payment is for node {OTHER.address}"),
    "another_chain": ({"chain_id": "other-chain"}, "payment is for chain 'other-chain'"),
    "another_model": ({"model_id": "sha256:" + "cd" * 32}, "another model or mode"),
    "another_mode": ({"mode": "zkml"}, "another model or mode"),
    "max_fee_below_price": ({"max_fee": PRICE - 1}, f"max fee {PRICE - 1} is below the price {PRICE}"),
    "expires_too_soon": ({"expiry": HEIGHT + MARGIN - 1}, f"expires at height {HEIGHT + MARGIN - 1}, too soon"),
}


@pytest.mark.parametrize("case", list(WRONG_AUTHORISATIONS))
def test_an_authorisation_the_chain_would_not_settle_here_is_a_402(gate, case):
    changes, message = WRONG_AUTHORISATIONS[case]
    exc = refused(gate, {"x-payment": x_payment(authorization(**changes), network=CHAIN_ID)})
    assert message in str(exc)


def test_the_earliest_accepted_expiry_leaves_the_settle_margin(gate):
    auth = authorization(expiry=HEIGHT + MARGIN)
    assert gate.authorize({"x-payment": x_payment(auth)}, QUOTE).request_id == auth.request_id


def test_escrow_must_cover_unsettled_receipts_this_fee_and_all_settlement_fees(gate, view, store):
    for n in (1, 2):
        store.add(signed_receipt(n, fee=PRICE), per_request(n))
    needed = need(2 * PRICE, 2) + need(PRICE, 1)
    view.escrows[CLIENT.address] = needed - 1
    exc = refused(gate, {"x-payment": x_payment(authorization())})
    assert f"escrow of {CLIENT.address} is {needed - 1}" in str(exc)
    view.escrows[CLIENT.address] = needed
    assert gate.authorize({"x-payment": x_payment(authorization())}, QUOTE).client == CLIENT.address


def test_settled_and_rejected_receipts_no_longer_hold_escrow(gate, view, store):
    receipts = [signed_receipt(n, fee=PRICE) for n in (1, 2)]
    for n, r in zip((1, 2), receipts, strict=True):
        store.add(r, per_request(n))
    view.escrows[CLIENT.address] = need(PRICE, 1)
    refused(gate, {"x-payment": x_payment(authorization())})
    store.mark([receipts[0].id], "settled", height=HEIGHT)
    store.mark([receipts[1].id], "rejected", error="expired")
    assert gate.authorize({"x-payment": x_payment(authorization())}, QUOTE).client == CLIENT.address


def test_another_clients_unsettled_receipts_do_not_count_against_this_client(gate, view, store):
    store.add(signed_receipt(1, fee=10**6, client=OTHER), per_request(1, client=OTHER))
    view.escrows[CLIENT.address] = need(PRICE, 1)
    assert gate.authorize({"x-payment": x_payment(authorization())}, QUOTE).client == CLIENT.address


def test_a_request_id_already_served_is_a_409(gate, store):
    auth = authorization(request_id=request_id(3))
    store.add(signed_receipt(3, fee=PRICE), per_request(3))
    with pytest.raises(RequestConflict) as info:
        gate.authorize({"x-payment": x_payment(auth)}, QUOTE)
    assert info.value.status == 409 and request_id(3) in str(info.value)
    other_client = authorization(client=OTHER.address, request_id=request_id(3))  # ids are per client
    assert gate.authorize({"x-payment": x_payment(other_client, signer=OTHER)}, QUOTE).client == OTHER.address


# --- bearer API keys ---------------------------------------------------------------------------


def allowance(**changes: object) -> SpendingAllowance:
    return replace(SpendingAllowance(CHAIN_ID, CLIENT.address, NODE.address, 10_000, HEIGHT + 1000, 1), **changes)


def bearer(value: SpendingAllowance, signer=CLIENT) -> dict[str, str]:
    return {"authorization": "Bearer " + encode_api_key(value, value.sign(signer))}


def test_an_api_key_is_accepted_with_a_fresh_random_request_id_each_time(gate):
    key = bearer(allowance())
    first, second = gate.authorize(key, QUOTE), gate.authorize(key, QUOTE)
    assert first.client == second.client == CLIENT.address
    assert first.payment.kind == "allowance" and first.payment.value == allowance()
    assert re.fullmatch(r"0x[0-9a-f]{64}", first.request_id) and first.request_id != second.request_id


def test_the_bearer_scheme_is_case_insensitive(gate):
    token = bearer(allowance())["authorization"].split()[1]
    assert gate.authorize({"authorization": "bearer " + token}, QUOTE).client == CLIENT.address


def test_a_revoked_api_key_is_a_402(gate, view):
    view.revoked.add(allowance().id)
    assert "revoked" in str(refused(gate, bearer(allowance())))


WRONG_ALLOWANCES = {
    "expired": ({"expiry": HEIGHT + MARGIN - 1}, "too soon to settle"),
    "another_node": ({"node": OTHER.address}, f"payment is for node {OTHER.address}"),
    "another_chain": ({"chain_id": "other-chain"}, "payment is for chain 'other-chain'"),
}


@pytest.mark.parametrize("case", list(WRONG_ALLOWANCES))
def test_an_api_key_the_chain_would_not_settle_here_is_a_402(gate, case):
    changes, message = WRONG_ALLOWANCES[case]
    assert message in str(refused(gate, bearer(allowance(**changes))))


def test_an_api_key_not_signed_by_its_client_is_a_402(gate):
    assert "not signed by its client" in str(refused(gate, bearer(allowance(), signer=OTHER)))


def test_an_api_key_cap_counts_spent_on_chain_unsettled_here_and_this_fee(gate, view, store):
    spent, unsettled = 50, 30
    view.spent[allowance(cap=spent + unsettled + PRICE - 1).id] = spent
    view.spent[allowance(cap=spent + unsettled + PRICE).id] = spent
    for cap in (spent + unsettled + PRICE - 1, spent + unsettled + PRICE):
        store.add(signed_receipt(cap, fee=unsettled), allowance_payment(allowance(cap=cap)))
    exc = refused(gate, bearer(allowance(cap=spent + unsettled + PRICE - 1)))
    assert f"cap {spent + unsettled + PRICE - 1} reached ({spent} settled, {unsettled} pending)" in str(exc)
    assert gate.authorize(bearer(allowance(cap=spent + unsettled + PRICE)), QUOTE).client == CLIENT.address


def test_an_api_key_still_needs_the_escrow_to_cover_the_fee(gate, view):
    view.escrows[CLIENT.address] = need(PRICE, 1) - 1
    assert "deposit more" in str(refused(gate, bearer(allowance())))


def _api_key_with(doc: object) -> dict[str, str]:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return {"authorization": "Bearer haca_" + base64.urlsafe_b64encode(raw).decode().rstrip("=")}


MALFORMED_KEYS = {
    "not_base64": {"authorization": "Bearer haca_%%%%"},
    "not_json": _api_key_with(b"\x00\x01 nope"),
    "not_object": _api_key_with(["allowance"]),
    "missing_signature": _api_key_with({"allowance": allowance().to_json()}),
    "bad_allowance": _api_key_with({"allowance": {"cap": "1"}, "signature": "0x" + "00" * 65}),
    "negative_cap": _api_key_with(
        {"allowance": {**allowance().to_json(), "cap": "-1"}, "signature": "0x" + allowance().sign(CLIENT).hex()}
    ),
    "signature_not_hex": _api_key_with({"allowance": allowance().to_json(), "signature": "0xqq"}),
    "signature_unrecoverable": _api_key_with({"allowance": allowance().to_json(), "signature": "0x" + "00" * 65}),
}


@pytest.mark.parametrize("case", list(MALFORMED_KEYS))
def test_a_malformed_api_key_is_a_402(gate, case):
    assert str(refused(gate, MALFORMED_KEYS[case])).startswith("invalid API key")
