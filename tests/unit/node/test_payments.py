"""PaymentGate: who pays for a request. A per-request X-PAYMENT authorisation or a bearer API key
(a signed spending allowance) is checked from the headers alone, before the body is read, and is
accepted only when the chain would settle it; once the work is known the fee for its rows is
charged and held against the escrow (and the allowance's cap). Every refusal is a 402 (the API
layer adds the x402 payment requirements), a replayed request id is a 409."""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import haca.node.payments as payments
from haca.client.payment import PaymentOffer, sign_payment
from haca.node.chainview import DEFAULT_BLOCK_SECONDS
from haca.node.errors import PaymentRequired, RequestConflict
from haca.node.payments import (
    DEFAULT_PROOF_SECONDS,
    EXPIRY_PROVING_SAFETY,
    LLM_SECONDS,
    AcceptedPayment,
    PaymentGate,
    PendingPayment,
    Quote,
)
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
MAX_ROWS = 64
RESOURCE = "http://testserver/v1/infer"
QUOTE = Quote(MODEL_ID, "double", "vanilla", PRICE, "request", MAX_ROWS, HEIGHT)
QUOTES = {(MODEL_ID, "vanilla"): QUOTE}
ROW_PRICE = 7
ROW_QUOTE = Quote(MODEL_ID, "double", "vanilla", ROW_PRICE, "row", MAX_ROWS, HEIGHT)
ROW_QUOTES = {(MODEL_ID, "vanilla"): ROW_QUOTE}
OFFER = PaymentOffer(
    CHAIN_ID, NODE.address, PRICE, "request", MAX_ROWS, MODEL_ID, "double", "vanilla", HEIGHT + 100, HEIGHT
)
ROOMY_ESCROW = 10**9


def need(fees: int, count: int) -> int:
    """Escrow that pays `count` fees totalling `fees`, each with the fake view's settlement fee."""
    return fees + FakeView().settlement_fee(fees, count)


def short(available: int, unsettled: int, client: str = CLIENT.address) -> str:
    """The refusal when a client's escrow does not cover a fee."""
    return (
        f"escrow of {client} for this node is {available} (less withdrawals), with {unsettled} unsettled:"
        f" deposit more with `haca deposit --node {NODE.address}`"
    )


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
    return PaymentGate(NODE.address, CHAIN_ID, DENOM, view, store, settle_margin=MARGIN)


def authorization(**changes: Any) -> PaymentAuthorization:
    auth = PaymentAuthorization(
        CHAIN_ID, CLIENT.address, NODE.address, request_id(7), MODEL_ID, "vanilla", PRICE, HEIGHT + 100
    )
    return replace(auth, **changes)


def refused(gate: PaymentGate, headers: dict[str, str], quotes: dict[tuple[str, str], Quote] = QUOTES) -> str:
    """The message of the 402 `check` answers; the x402 requirements are the API layer's to add."""
    with pytest.raises(PaymentRequired) as info:
        gate.check(headers, quotes)
    exc = info.value
    assert exc.status == 402
    assert exc.requirements == {}
    assert_x402(gate.requirements(quotes.values(), str(exc), RESOURCE), str(exc), list(quotes.values()))
    return str(exc)


def refused_charge(gate: PaymentGate, pending: PendingPayment, quote: Quote, rows: int) -> str:
    with pytest.raises(PaymentRequired) as info:
        gate.charge(pending, quote, rows)
    assert info.value.status == 402 and info.value.requirements == {}
    return str(info.value)


def accept(
    gate: PaymentGate,
    headers: dict[str, str],
    quote: Quote = QUOTE,
    rows: int = 1,
    quotes: dict[tuple[str, str], Quote] | None = None,
) -> AcceptedPayment:
    pending = gate.check(headers, quotes if quotes is not None else {(quote.model_id, quote.mode): quote})
    return gate.charge(pending, quote, rows)


def least_expiry(quote: Quote) -> int:
    """The earliest expiry the gate takes for `quote` on an idle node (the fake view measures no
    block time, so the default is used): the settle margin, plus the blocks of one unmeasured
    proof (zkml, twice: its time may stretch under load) or of the generation time an LLM request
    may take."""
    blocks = MARGIN
    if quote.mode == "zkml":
        blocks += math.ceil(EXPIRY_PROVING_SAFETY * DEFAULT_PROOF_SECONDS / DEFAULT_BLOCK_SECONDS)
    elif quote.price_unit == "token":
        blocks += math.ceil(LLM_SECONDS / DEFAULT_BLOCK_SECONDS)
    return HEIGHT + blocks


def assert_x402(requirements: dict[str, Any], error: str, quotes: list[Quote]) -> None:
    assert requirements["x402Version"] == 1
    assert requirements["error"] == error
    assert len(requirements["accepts"]) == len(quotes)
    for accept_, quote in zip(requirements["accepts"], quotes, strict=True):
        assert accept_["scheme"] == "haca-escrow"
        assert accept_["network"] == CHAIN_ID
        assert accept_["asset"] == DENOM
        assert accept_["maxAmountRequired"] == str(quote.max_amount)
        assert accept_["payTo"] == NODE.address
        assert accept_["resource"] == RESOURCE
        extra = accept_["extra"]
        assert (extra["model_id"], extra["model"], extra["mode"]) == (quote.model_id, quote.model_name, quote.mode)
        assert (extra["price"], extra["price_unit"], extra["max_rows"]) == (
            str(quote.unit_price),
            quote.price_unit,
            quote.max_rows,
        )
        assert (extra["terms_height"], extra["height"]) == (quote.height, HEIGHT)
        # a zkml answer settles only once proved: its authorisation is suggested to last longer
        lasts = 1000 if quote.mode == "zkml" else 100
        assert extra["min_expiry"] == least_expiry(quote) and extra["suggested_expiry"] == HEIGHT + lasts
        offer = PaymentOffer.from_402(requirements, quote.model_name, quote.mode)  # what a client needs is there
        assert offer == PaymentOffer(
            CHAIN_ID,
            NODE.address,
            quote.unit_price,
            quote.price_unit,
            quote.max_rows,
            quote.model_id,
            quote.model_name,
            quote.mode,
            HEIGHT + lasts,
            quote.height,
        )


# --- quotes and requirements -------------------------------------------------------------------


def test_a_quote_prices_a_request_or_each_row_and_its_max_amount_is_for_max_rows():
    assert (QUOTE.fee(1), QUOTE.fee(10), QUOTE.max_amount) == (PRICE, PRICE, PRICE)
    assert (ROW_QUOTE.fee(1), ROW_QUOTE.fee(10), ROW_QUOTE.max_amount) == (ROW_PRICE, 10 * ROW_PRICE, 448)


class Untouchable:
    """A store or chain view that fails the test when used at all."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"touched {name}")


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer sk-not-a-haca-key"}, {"x-payment": ""}])
def test_no_payment_is_a_402_from_the_headers_alone_without_touching_the_store_or_chain(headers):
    gate = PaymentGate(NODE.address, CHAIN_ID, DENOM, Untouchable(), Untouchable())  # type: ignore[arg-type]
    with pytest.raises(PaymentRequired) as info:
        gate.check(headers, QUOTES)
    assert (str(info.value), info.value.status, info.value.requirements) == ("payment required", 402, {})


def test_no_payment_is_a_402_with_the_x402_requirements(gate):
    assert refused(gate, {}) == "payment required"
    assert refused(gate, {"authorization": "Bearer sk-not-a-haca-key"}) == "payment required"


def test_the_requirements_list_one_accept_per_quote_with_its_max_amount(gate):
    zk = Quote(MODEL_ID, "double", "zkml", 900, "request", 8, HEIGHT - 10)
    body = gate.requirements([ROW_QUOTE, zk], "payment required", RESOURCE)
    assert_x402(body, "payment required", [ROW_QUOTE, zk])
    assert [a["maxAmountRequired"] for a in body["accepts"]] == [str(ROW_PRICE * MAX_ROWS), "900"]
    assert [a["description"] for a in body["accepts"]] == [
        f"inference on double (vanilla): {ROW_PRICE} per row",
        "inference on double (zkml): 900 per request",
    ]
    assert PaymentOffer.from_402(body, MODEL_ID, "zkml").fee(5) == 900
    assert PaymentOffer.from_402(body, "double", "vanilla").fee(5) == 5 * ROW_PRICE


# --- X-PAYMENT ---------------------------------------------------------------------------------


def test_a_signed_payment_from_sign_payment_is_accepted_with_its_client_and_request_id(gate):
    auth, header = sign_payment(CLIENT, OFFER, fee=150)
    pending = gate.check({"x-payment": header}, QUOTES)
    assert (pending.client, pending.request_id, pending.authorization) == (CLIENT.address, auth.request_id, auth)
    accepted = gate.charge(pending, QUOTE, 1)
    assert (accepted.client, accepted.request_id, accepted.fee) == (CLIENT.address, auth.request_id, PRICE)
    assert accepted.payment.kind == "request" and accepted.payment.value == auth
    assert accepted.payment.signer() == CLIENT.address
    assert (accepted.allowance_id, accepted.allowance_held) == ("", 0)


def test_a_per_row_payment_signed_for_its_rows_is_charged_for_exactly_those_rows(gate):
    offer = PaymentOffer.from_402(gate.requirements([ROW_QUOTE], "payment required", RESOURCE), "double", "vanilla")
    auth, header = sign_payment(CLIENT, offer, offer.fee(5))
    assert auth.max_fee == 5 * ROW_PRICE
    accepted = accept(gate, {"x-payment": header}, ROW_QUOTE, rows=5)
    assert (accepted.fee, accepted.reserved) == (5 * ROW_PRICE, need(5 * ROW_PRICE, 1))


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
    "wrong_version": x_payment(authorization(), x402Version=2),
    "wrong_scheme": x_payment(authorization(), scheme="exact"),
    "wrong_network": x_payment(authorization(), network="other-chain"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_x_payment_is_a_402(gate, case):
    assert refused(gate, {"x-payment": MALFORMED[case]}).startswith("invalid X-PAYMENT: ")


def test_an_authorisation_changed_after_signing_is_a_402(gate):
    auth = authorization()
    doc = json.loads(base64.b64decode(x_payment(auth)))
    doc["payload"]["authorization"]["max_fee"] = str(10**9)
    assert "not by its client" in refused(gate, {"x-payment": _b64(doc)})


def test_an_authorisation_signed_by_someone_other_than_its_client_is_a_402(gate):
    message = refused(gate, {"x-payment": x_payment(authorization(), signer=OTHER)})
    assert message == f"authorisation signed by {OTHER.address}, not by its client {CLIENT.address}"


OTHER_MODEL = "sha256:" + "cd" * 32
WRONG_AUTHORISATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "another_node": ({"node": OTHER.address}, f"payment is for node {OTHER.address}, this node is {NODE.address}"),
    "another_chain": (
        {"chain_id": "other-chain"},
        f"payment is for chain 'other-chain', this node settles on {CHAIN_ID!r}",
    ),
    "another_model": ({"model_id": OTHER_MODEL}, f"this node does not serve {OTHER_MODEL} in mode 'vanilla'"),
    "another_mode": ({"mode": "zkml"}, f"this node does not serve {MODEL_ID} in mode 'zkml'"),
    "max_fee_below_price": ({"max_fee": PRICE - 1}, f"max fee {PRICE - 1} is below the price {PRICE}"),
    "expires_too_soon": (
        {"expiry": HEIGHT + MARGIN - 1},
        f"payment expires at height {HEIGHT + MARGIN - 1}, too soon to settle (now {HEIGHT})",
    ),
}


@pytest.mark.parametrize("case", list(WRONG_AUTHORISATIONS))
def test_an_authorisation_the_chain_would_not_settle_here_is_a_402(gate, case):
    changes, message = WRONG_AUTHORISATIONS[case]
    assert refused(gate, {"x-payment": x_payment(authorization(**changes), network=CHAIN_ID)}) == message


def test_an_authorised_model_and_mode_that_is_not_quoted_is_refused_at_check(gate):
    """Only the quotes in effect are served: an authorisation for a model or mode among none
    of them is refused before the body is read, even when the model is quoted in another mode."""
    zk_only = {(MODEL_ID, "zkml"): replace(QUOTE, mode="zkml")}
    message = refused(gate, {"x-payment": x_payment(authorization())}, zk_only)
    assert message == f"this node does not serve {MODEL_ID} in mode 'vanilla'"
    assert refused(gate, {"x-payment": x_payment(authorization())}, {}) == message


def test_an_authorisation_for_another_model_or_mode_than_the_request_is_refused_at_charge(gate):
    zk = replace(QUOTE, mode="zkml")
    pending = gate.check({"x-payment": x_payment(authorization())}, {**QUOTES, (MODEL_ID, "zkml"): zk})
    assert refused_charge(gate, pending, zk, 1) == "authorisation is for another model or mode than the request's"
    assert gate.charge(pending, QUOTE, 1).fee == PRICE  # nothing was held by the refusal


def test_the_earliest_accepted_expiry_leaves_the_settle_margin(gate):
    auth = authorization(expiry=HEIGHT + MARGIN)
    assert accept(gate, {"x-payment": x_payment(auth)}).request_id == auth.request_id


def test_a_max_fee_for_one_row_does_not_pay_for_more_rows_and_the_refusal_holds_nothing(gate, view):
    fee = 3 * ROW_PRICE
    view.escrows[CLIENT.address] = need(fee, 1)
    pending = gate.check({"x-payment": x_payment(authorization(max_fee=fee))}, ROW_QUOTES)
    message = refused_charge(gate, pending, ROW_QUOTE, 4)
    assert message == f"this request costs {4 * ROW_PRICE} (4 rows); the authorisation allows {fee}"
    accepted = gate.charge(pending, ROW_QUOTE, 3)  # the whole escrow is still there for it
    assert (accepted.fee, accepted.reserved) == (fee, need(fee, 1))
    # ... and now it is held: not a unit more is left for this client
    other = authorization(request_id=request_id(8), max_fee=ROW_PRICE)
    assert refused(gate, {"x-payment": x_payment(other)}, ROW_QUOTES) == short(need(fee, 1), need(fee, 1))


def test_a_charge_holds_exactly_the_fee_and_its_settlement_fee_until_released(gate, view):
    cost = need(PRICE, 1)
    assert cost == PRICE + view.settlement_fee(PRICE) == 104
    view.escrows[CLIENT.address] = 2 * cost - 1
    first = accept(gate, {"x-payment": x_payment(authorization(request_id=request_id(1)))})
    assert (first.fee, first.reserved) == (PRICE, cost)
    second = {"x-payment": x_payment(authorization(request_id=request_id(2)))}
    assert refused(gate, second) == short(2 * cost - 1, cost)
    gate.release(first)
    assert accept(gate, second).reserved == cost
    view.escrows[CLIENT.address] = 2 * cost  # exactly two in flight fit
    assert accept(gate, {"x-payment": x_payment(authorization(request_id=request_id(3)))}).reserved == cost


def test_two_requests_checked_together_cannot_both_be_charged_past_the_escrow(gate, view):
    view.escrows[CLIENT.address] = need(PRICE, 1)
    a = gate.check({"x-payment": x_payment(authorization(request_id=request_id(1)))}, QUOTES)
    b = gate.check({"x-payment": x_payment(authorization(request_id=request_id(2)))}, QUOTES)  # nothing held yet
    first = gate.charge(a, QUOTE, 1)
    assert refused_charge(gate, b, QUOTE, 1) == short(need(PRICE, 1), need(PRICE, 1))
    gate.release(first)
    assert gate.charge(b, QUOTE, 1).reserved == need(PRICE, 1)


def test_escrow_must_cover_unsettled_receipts_this_fee_and_all_settlement_fees(gate, view, store):
    for n in (1, 2):
        store.add(signed_receipt(n, fee=PRICE), per_request(n))
    needed = need(2 * PRICE, 2) + need(PRICE, 1)
    view.escrows[CLIENT.address] = needed - 1
    assert refused(gate, {"x-payment": x_payment(authorization())}) == short(needed - 1, need(2 * PRICE, 2))
    view.escrows[CLIENT.address] = needed
    assert accept(gate, {"x-payment": x_payment(authorization())}).client == CLIENT.address


def test_a_client_withdrawing_its_whole_escrow_is_refused_at_check(gate, view):
    view.escrows[CLIENT.address] = 0  # the escrow less its pending withdrawals
    assert refused(gate, {"x-payment": x_payment(authorization())}) == short(0, 0)
    assert refused(gate, bearer(allowance())) == short(0, 0)


def test_settled_and_rejected_receipts_no_longer_hold_escrow(gate, view, store):
    receipts = [signed_receipt(n, fee=PRICE) for n in (1, 2)]
    for n, r in zip((1, 2), receipts, strict=True):
        store.add(r, per_request(n))
    view.escrows[CLIENT.address] = need(PRICE, 1)
    assert refused(gate, {"x-payment": x_payment(authorization())}) == short(need(PRICE, 1), need(2 * PRICE, 2))
    store.mark([receipts[0].id], "settled", height=HEIGHT)
    store.mark([receipts[1].id], "rejected", error="expired")
    assert accept(gate, {"x-payment": x_payment(authorization())}).client == CLIENT.address


def test_another_clients_unsettled_receipts_do_not_count_against_this_client(gate, view, store):
    store.add(signed_receipt(1, fee=10**6, client=OTHER), per_request(1, client=OTHER))
    view.escrows[CLIENT.address] = need(PRICE, 1)
    assert accept(gate, {"x-payment": x_payment(authorization())}).client == CLIENT.address


def test_a_request_id_already_served_is_a_409(gate, store):
    auth = authorization(request_id=request_id(3))
    store.add(signed_receipt(3, fee=PRICE), per_request(3))
    with pytest.raises(RequestConflict) as info:
        gate.check({"x-payment": x_payment(auth)}, QUOTES)
    assert info.value.status == 409 and str(info.value) == f"request id {request_id(3)} was already served"
    other_client = authorization(client=OTHER.address, request_id=request_id(3))  # ids are per client
    assert accept(gate, {"x-payment": x_payment(other_client, signer=OTHER)}).client == OTHER.address


# --- bearer API keys ---------------------------------------------------------------------------


def allowance(**changes: Any) -> SpendingAllowance:
    return replace(SpendingAllowance(CHAIN_ID, CLIENT.address, NODE.address, 10_000, HEIGHT + 1000, 1), **changes)


def bearer(value: SpendingAllowance, signer=CLIENT) -> dict[str, str]:
    return {"authorization": "Bearer " + encode_api_key(value, value.sign(signer))}


def test_an_api_key_is_accepted_with_a_fresh_random_request_id_each_time(gate):
    key = bearer(allowance())
    first, second = gate.check(key, QUOTES), gate.check(key, QUOTES)
    assert first.client == second.client == CLIENT.address
    assert first.payment.kind == "allowance" and first.payment.value == allowance()
    assert first.authorization is None
    assert re.fullmatch(r"0x[0-9a-f]{64}", first.request_id) and first.request_id != second.request_id
    accepted = gate.charge(first, QUOTE, 1)
    assert (accepted.request_id, accepted.fee, accepted.reserved) == (first.request_id, PRICE, need(PRICE, 1))
    assert (accepted.allowance_id, accepted.allowance_held) == (allowance().id, PRICE)


def test_the_bearer_scheme_is_case_insensitive(gate):
    token = bearer(allowance())["authorization"].split()[1]
    assert gate.check({"authorization": "bearer " + token}, QUOTES).client == CLIENT.address


@pytest.mark.parametrize("effective", [HEIGHT, HEIGHT + 50], ids=["in_effect", "announced_not_yet_effective"])
def test_a_revoked_api_key_is_refused_at_check_as_soon_as_the_revocation_is_announced(gate, view, effective):
    view.revoked[allowance().id] = effective
    message = refused(gate, bearer(allowance()))
    assert message == f"API key allowance was revoked on chain (effective at height {effective})"


WRONG_ALLOWANCES: dict[str, tuple[dict[str, Any], str]] = {
    "expired": (
        {"expiry": HEIGHT + MARGIN - 1},
        f"payment expires at height {HEIGHT + MARGIN - 1}, too soon to settle (now {HEIGHT})",
    ),
    "another_node": ({"node": OTHER.address}, f"payment is for node {OTHER.address}, this node is {NODE.address}"),
    "another_chain": (
        {"chain_id": "other-chain"},
        f"payment is for chain 'other-chain', this node settles on {CHAIN_ID!r}",
    ),
}


@pytest.mark.parametrize("case", list(WRONG_ALLOWANCES))
def test_an_api_key_the_chain_would_not_settle_here_is_a_402(gate, case):
    changes, message = WRONG_ALLOWANCES[case]
    assert refused(gate, bearer(allowance(**changes))) == message


def test_an_api_key_not_signed_by_its_client_is_a_402(gate):
    assert refused(gate, bearer(allowance(), signer=OTHER)) == "API key allowance is not signed by its client"


def test_an_api_key_cap_counts_spent_on_chain_unsettled_here_and_this_fee(gate, view, store):
    spent, unsettled = 50, 30
    view.spent[allowance(cap=spent + unsettled + PRICE - 1).id] = spent
    view.spent[allowance(cap=spent + unsettled + PRICE).id] = spent
    for cap in (spent + unsettled + PRICE - 1, spent + unsettled + PRICE):
        store.add(signed_receipt(cap, fee=unsettled), allowance_payment(allowance(cap=cap)))
    message = refused(gate, bearer(allowance(cap=spent + unsettled + PRICE - 1)))
    cap = spent + unsettled + PRICE - 1
    assert message == f"API key allowance cap {cap} reached ({spent} settled, {unsettled} pending)"
    assert accept(gate, bearer(allowance(cap=spent + unsettled + PRICE))).fee == PRICE


def test_an_api_key_whose_cap_is_used_up_is_refused_at_check_before_the_body(gate, view, store):
    spent, unsettled = 60, 40
    key = allowance(cap=spent + unsettled)
    view.spent[key.id] = spent
    store.add(signed_receipt(1, fee=unsettled), allowance_payment(key))
    assert refused(gate, bearer(key), ROW_QUOTES) == f"API key allowance cap {key.cap} reached (60 settled, 40 pending)"


def test_an_api_key_checks_the_cheapest_quote_first_and_the_rows_fee_at_charge(gate, view):
    key = allowance(cap=10 * ROW_PRICE)
    view.spent[key.id] = 4 * ROW_PRICE
    quotes = {**ROW_QUOTES, (MODEL_ID, "zkml"): replace(QUOTE, mode="zkml", unit_price=10**6)}
    pending = gate.check(bearer(key), quotes)  # the cheapest quote (one row at ROW_PRICE) fits in the cap
    message = refused_charge(gate, pending, ROW_QUOTE, 7)
    assert message == f"API key allowance cap {key.cap} reached ({4 * ROW_PRICE} settled, 0 pending, 49 asked)"
    assert gate.charge(pending, ROW_QUOTE, 6).fee == 6 * ROW_PRICE  # the refusal held nothing: exactly the cap


def test_an_api_key_charge_holds_its_cap_until_released(gate):
    key = allowance(cap=2 * PRICE - 1)
    first = accept(gate, bearer(key))
    assert (first.allowance_id, first.allowance_held) == (key.id, PRICE)
    assert refused(gate, bearer(key)) == f"API key allowance cap {key.cap} reached (0 settled, {PRICE} pending)"
    pending = gate.check(bearer(allowance(cap=2 * PRICE)), QUOTES)  # another allowance has its own cap
    gate.release(first)
    second = accept(gate, bearer(key))
    assert second.allowance_held == PRICE
    assert gate.charge(pending, QUOTE, 1).fee == PRICE


def test_an_api_key_still_needs_the_escrow_to_cover_the_fee(gate, view):
    view.escrows[CLIENT.address] = need(PRICE, 1) - 1
    assert refused(gate, bearer(allowance())) == short(need(PRICE, 1) - 1, 0)
    view.escrows[CLIENT.address] = need(PRICE, 1)
    pending = gate.check(bearer(allowance()), QUOTES)
    assert refused_charge(gate, pending, ROW_QUOTE, 15) == short(need(PRICE, 1), 0)  # 105 costs 109
    assert gate.charge(pending, ROW_QUOTE, 14).reserved == need(14 * ROW_PRICE, 1) == 101  # 98 costs 101


def test_an_api_key_signer_is_recovered_once_per_allowance_and_signature(gate, monkeypatch):
    calls: list[SpendingAllowance] = []
    recover = SpendingAllowance.signer

    def counting(self: SpendingAllowance, signature: bytes) -> str:
        calls.append(self)
        return recover(self, signature)

    monkeypatch.setattr(SpendingAllowance, "signer", counting)
    key = bearer(allowance())
    assert gate.check(key, QUOTES).client == CLIENT.address
    assert gate.check(key, QUOTES).client == CLIENT.address
    assert len(calls) == 1
    # the same allowance under another signature is recovered, and refused, on its own
    assert refused(gate, bearer(allowance(), signer=OTHER)) == "API key allowance is not signed by its client"
    assert len(calls) == 2
    assert refused(gate, bearer(allowance(), signer=OTHER)) == "API key allowance is not signed by its client"
    assert gate.check(key, QUOTES).client == CLIENT.address
    assert len(calls) == 2


def test_the_signer_cache_is_bounded(gate, monkeypatch):
    calls: list[SpendingAllowance] = []
    recover = SpendingAllowance.signer

    def counting(self: SpendingAllowance, signature: bytes) -> str:
        calls.append(self)
        return recover(self, signature)

    monkeypatch.setattr(SpendingAllowance, "signer", counting)
    monkeypatch.setattr(payments, "SIGNER_CACHE_SIZE", 1)
    first, second = bearer(allowance(nonce=1)), bearer(allowance(nonce=2))
    for headers in (first, first, second, first):
        gate.check(headers, QUOTES)
    assert [a.nonce for a in calls] == [1, 2, 1]


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
    assert refused(gate, MALFORMED_KEYS[case]).startswith("invalid API key: ")


class StaleView(FakeView):
    """A view whose cached escrow read predates the client's deposit: only a fresh read sees it."""

    def available_escrow(self, client: str, fresh: bool = False, at_least: int = 0) -> int:
        return self.escrows.get(client, 0) if fresh else 0


def test_a_deposit_newer_than_the_cached_escrow_read_pays(store):
    view = StaleView()
    view.escrows[CLIENT.address] = need(PRICE, 1)
    gate = PaymentGate(NODE.address, CHAIN_ID, DENOM, view, store, settle_margin=MARGIN)
    assert accept(gate, {"x-payment": x_payment(authorization())}).reserved == need(PRICE, 1)
    # and a fresh read that still does not cover it is refused with what it shows
    view.escrows[CLIENT.address] = need(PRICE, 1) - 1
    other = {"x-payment": x_payment(authorization(request_id=request_id(2)))}
    assert refused(gate, other) == short(need(PRICE, 1) - 1, need(PRICE, 1))


class LaggingView(FakeView):
    """A view over an RPC one block behind the client: the deposit (in block HEIGHT) is seen only
    by a read of that height's state or later, which is what `at_least` asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[int] = []

    def available_escrow(self, client: str, fresh: bool = False, at_least: int = 0) -> int:
        self.reads.append(at_least)
        return self.escrows.get(client, 0) if at_least >= HEIGHT else 0


def test_a_client_naming_its_deposit_block_is_served_by_a_node_reading_a_validator_a_block_behind(store):
    view = LaggingView()
    view.escrows[CLIENT.address] = need(PRICE, 1)
    gate = PaymentGate(NODE.address, CHAIN_ID, DENOM, view, store, settle_margin=MARGIN)
    without = {"x-payment": x_payment(authorization(request_id=request_id(1)))}
    assert refused(gate, without) == short(0, 0)  # the old 402: the deposit not yet seen
    with_height = {"x-payment": x_payment(authorization(request_id=request_id(2))), "x-haca-min-height": str(HEIGHT)}
    assert accept(gate, with_height).reserved == need(PRICE, 1)
    assert view.reads[-1] == HEIGHT


@pytest.mark.parametrize("value", ["12a", "-1", "", "1" * 20, "١٢"])
def test_a_malformed_min_height_is_a_402(gate, value):
    headers = {"x-payment": x_payment(authorization()), "x-haca-min-height": value}
    assert refused(gate, headers) == f"invalid X-HACA-Min-Height: {value[:40]!r} is not a block height"


def test_an_api_keys_maximum_per_request_bounds_each_charge_and_what_an_llm_may_hold(gate):
    """An agent's key: cap 10,000, at most 2 rows' price per request. Three rows are refused
    (402, the hold dropped), two are charged, and a request of unknown cost holds at most the
    maximum, so the generation stops there."""
    limited = allowance(max_per_request=2 * ROW_PRICE)
    pending = gate.check(bearer(limited), ROW_QUOTES)
    assert refused_charge(gate, pending, ROW_QUOTE, 3) == (
        f"API key allowance: fee {3 * ROW_PRICE} exceeds the allowance's maximum per request {2 * ROW_PRICE}"
    )
    assert gate.charge(gate.check(bearer(limited), ROW_QUOTES), ROW_QUOTE, 2).fee == 2 * ROW_PRICE
    worst = 10 * ROW_PRICE
    assert gate.charge_up_to(gate.check(bearer(limited), ROW_QUOTES), ROW_QUOTE, worst).fee == 2 * ROW_PRICE


def test_an_api_key_whose_maximum_per_request_is_below_every_price_is_refused_before_the_body(gate):
    assert refused(gate, bearer(allowance(max_per_request=PRICE - 1))) == (
        f"API key allowance: no request here costs so little (fee {PRICE} exceeds the allowance's"
        f" maximum per request {PRICE - 1})"
    )
