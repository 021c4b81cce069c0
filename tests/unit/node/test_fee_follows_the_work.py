"""Issue 7, items 5-7 at the node: the fee follows the work (a row limit per request, per-row
prices), terms follow the chain height by height, and an unpaid or badly paid request is refused
before its body is parsed."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from haca.client.payment import create_api_key, sign_payment, verify_answer
from haca.node import api as node_api
from haca.node.payments import PaymentGate
from haca.runtime.onnx import OnnxModel
from haca.types.payment import decode_api_key
from haca.types.tensor import Tensor
from tests.unit.node.nodehelpers import CHAIN_ID, CLIENT, HEIGHT, NODE, OTHER, x_payment
from tests.unit.node.test_api import MAX_ROWS, PRICE, SCHEMA, assert_error, make_node, offer_of


def rows(n: int) -> list[list[float]]:
    return [[float(i), 1.0] for i in range(n)]


def test_a_request_beyond_the_row_limit_is_a_413_runs_nothing_and_does_not_use_up_the_payment(tmp_path: Path):
    # The attack: one fee for a request of 1,000 rows (issue 7, item 6).
    node = make_node(tmp_path)
    offer = offer_of(node)
    auth, header = sign_payment(CLIENT, offer, PRICE)
    big = {"model": "double", "input": rows(1000)}
    message = assert_error(node.client.post("/v1/infer", json=big, headers={"X-PAYMENT": header}), 413, "too_many_rows")
    assert "1000 rows" in message and f"at most {MAX_ROWS}" in message
    assert node.store.unsettled_count() == 0 and node.queued_before_answer == []
    ok = node.client.post("/v1/infer", json={"model": "double", "input": rows(MAX_ROWS)}, headers={"X-PAYMENT": header})
    assert ok.status_code == 200, ok.text
    assert verify_answer(ok.json(), rows(MAX_ROWS), SCHEMA, NODE.address, auth).receipt.fee == PRICE


def test_a_per_row_price_charges_every_row_and_refuses_an_authorisation_for_fewer(tmp_path: Path):
    node = make_node(tmp_path, price_unit="row")
    offer = offer_of(node)
    assert (offer.unit_price, offer.price_unit, offer.max_rows) == (PRICE, "row", MAX_ROWS)
    _, one_row = sign_payment(CLIENT, offer, PRICE)
    response = node.client.post("/v1/infer", json={"model": "double", "input": rows(3)}, headers={"X-PAYMENT": one_row})
    assert response.status_code == 402
    assert response.json()["error"] == f"this request costs {3 * PRICE} (3 rows); the authorisation allows {PRICE}"
    assert node.store.unsettled_count() == 0
    auth, three_rows = sign_payment(CLIENT, offer, offer.fee(3))
    response = node.client.post(
        "/v1/infer", json={"model": "double", "input": rows(3)}, headers={"X-PAYMENT": three_rows}
    )
    assert response.status_code == 200, response.text
    receipt = verify_answer(response.json(), rows(3), SCHEMA, NODE.address, auth).receipt
    assert receipt.fee == 3 * PRICE
    assert node.store.unsettled_charges(CLIENT.address) == (1, 3 * PRICE)


def test_an_api_key_is_charged_per_row_too(tmp_path: Path):
    node = make_node(tmp_path, price_unit="row")
    key = create_api_key(CLIENT, CHAIN_ID, NODE.address, cap=5 * PRICE, expiry=HEIGHT + 1000, nonce=1)
    headers = {"Authorization": f"Bearer {key}"}
    assert node.client.post("/v1/infer", json={"model": "double", "input": rows(4)}, headers=headers).status_code == 200
    over = node.client.post("/v1/infer", json={"model": "double", "input": rows(2)}, headers=headers)
    assert over.status_code == 402 and "cap 25 reached" in over.json()["error"]
    assert node.store.unsettled_allowance(next(iter(node.store._unsettled_allowance))) == 4 * PRICE


def test_quotes_and_receipts_follow_the_terms_in_effect_at_the_nodes_height(tmp_path: Path):
    # The owner raises the price (issue 7, item 5): the node quotes the new price from the
    # height it takes effect, and each receipt names the height whose terms it was served on.
    node = make_node(tmp_path)
    model_id = node.manifest.model_id
    auth, header = sign_payment(CLIENT, offer_of(node), PRICE)
    before = node.client.post("/v1/infer", json={"model": "double", "input": rows(1)}, headers={"X-PAYMENT": header})
    assert verify_answer(before.json(), rows(1), SCHEMA, NODE.address, auth).receipt.height_hint == HEIGHT
    node.view.current_height = HEIGHT + 1
    node.view.manifests[model_id] = dataclasses.replace(node.manifest, version=2, price=PRICE * 3)
    offer = offer_of(node)
    assert (offer.unit_price, offer.terms_height) == (3 * PRICE, HEIGHT + 1)
    _, old_price = sign_payment(CLIENT, offer, PRICE)
    refused = node.client.post(
        "/v1/infer", json={"model": "double", "input": rows(1)}, headers={"X-PAYMENT": old_price}
    )
    assert refused.status_code == 402 and refused.json()["error"] == f"max fee {PRICE} is below the price {3 * PRICE}"
    auth, header = sign_payment(CLIENT, offer, 3 * PRICE)
    after = node.client.post("/v1/infer", json={"model": "double", "input": rows(1)}, headers={"X-PAYMENT": header})
    receipt = verify_answer(after.json(), rows(1), SCHEMA, NODE.address, auth).receipt
    assert (receipt.fee, receipt.height_hint) == (3 * PRICE, HEIGHT + 1)


def test_a_node_price_above_the_models_is_what_it_quotes(tmp_path: Path):
    node = make_node(tmp_path)
    ctx: node_api.NodeContext = node.app.state.context
    ctx.price, ctx.quotes = PRICE * 2, None
    assert offer_of(node).unit_price == 2 * PRICE


# --- refused before the body is parsed (issue 7, item 7) ------------------------------------------


@pytest.fixture
def parse_calls(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """One entry per body parsed: whether it was parsed on the event loop's thread."""
    calls: list[bool] = []
    original = node_api._parse_request

    def counting(ctx: Any, raw: bytes) -> Any:
        try:
            asyncio.get_running_loop()
            calls.append(True)
        except RuntimeError:
            calls.append(False)
        return original(ctx, raw)

    monkeypatch.setattr(node_api, "_parse_request", counting)
    return calls


def big_body(n_rows: int = 30_000) -> bytes:
    return ('{"model": "double", "input": [' + ",".join(["[1.5, -2.25]"] * n_rows) + "]}").encode()


def test_an_unpaid_request_with_a_large_body_is_a_402_and_its_body_is_never_parsed(tmp_path: Path, parse_calls):
    node = make_node(tmp_path)
    raw = big_body()
    assert len(raw) > 300_000
    response = node.client.post("/v1/infer", content=raw)
    assert response.status_code == 402 and response.json()["error"] == "payment required"
    assert parse_calls == []


@pytest.mark.parametrize("bad", ["signed_by_another", "for_another_node", "malformed"])
def test_a_badly_paid_request_is_a_402_and_its_body_is_never_parsed(tmp_path: Path, parse_calls, bad: str):
    node = make_node(tmp_path)
    offer = offer_of(node)
    if bad == "signed_by_another":
        auth, _ = sign_payment(CLIENT, offer, PRICE)
        header = x_payment(auth, signer=OTHER)
    elif bad == "for_another_node":
        _, header = sign_payment(CLIENT, replace(offer, node=OTHER.address), PRICE)
    else:
        header = "not base64 at all"
    response = node.client.post("/v1/infer", content=b"{not even json", headers={"X-PAYMENT": header})
    assert response.status_code == 402, response.text
    assert parse_calls == []


def test_a_revoked_or_exhausted_api_key_is_refused_before_the_body_is_parsed(tmp_path: Path, parse_calls):
    node = make_node(tmp_path)
    key = create_api_key(CLIENT, CHAIN_ID, NODE.address, cap=PRICE, expiry=HEIGHT + 1000, nonce=1)
    headers = {"Authorization": f"Bearer {key}"}
    assert node.client.post("/v1/infer", json={"model": "double", "input": rows(1)}, headers=headers).status_code == 200
    assert len(parse_calls) == 1
    exhausted = node.client.post("/v1/infer", content=b"{not json", headers=headers)
    assert exhausted.status_code == 402 and "cap 5 reached" in exhausted.json()["error"]
    other = create_api_key(CLIENT, CHAIN_ID, NODE.address, cap=100 * PRICE, expiry=HEIGHT + 1000, nonce=2)
    node.view.revoked[decode_api_key(other).value.id] = HEIGHT + 20  # announced, not yet in effect
    revoked = node.client.post("/v1/infer", content=b"{not json", headers={"Authorization": f"Bearer {other}"})
    assert revoked.status_code == 402
    assert revoked.json()["error"] == f"API key allowance was revoked on chain (effective at height {HEIGHT + 20})"
    assert len(parse_calls) == 1


def test_a_large_paid_body_is_parsed_off_the_event_loop(tmp_path: Path, parse_calls):
    node = make_node(tmp_path)
    key = create_api_key(CLIENT, CHAIN_ID, NODE.address, cap=100 * PRICE, expiry=HEIGHT + 1000, nonce=1)
    headers = {"Authorization": f"Bearer {key}"}
    small = node.client.post("/v1/infer", json={"model": "double", "input": rows(1)}, headers=headers)
    large = node.client.post("/v1/infer", content=big_body(MAX_ROWS) + b" " * 20_000, headers=headers)
    assert (small.status_code, large.status_code) == (200, 200)
    assert parse_calls == [True, False]  # the large body went to a worker thread


class CountingModel(OnnxModel):
    """Counts runs and holds each until `release` is set (once both requests were checked)."""

    runs: list[int] = []
    release = threading.Event()

    def run(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        self.runs.append(1)
        assert self.release.wait(10), "the second request never reached the payment gate"
        return super().run(inputs)


def test_one_x_payment_sent_twice_at_once_runs_the_model_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    node = make_node(tmp_path, CountingModel)
    _, header = sign_payment(CLIENT, offer_of(node), PRICE)
    release, checks, original = threading.Event(), [], PaymentGate.check

    def counting(self: PaymentGate, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        finally:
            checks.append(1)
            if len(checks) == 2:
                release.set()

    monkeypatch.setattr(PaymentGate, "check", counting)
    monkeypatch.setattr(CountingModel, "release", release)
    monkeypatch.setattr(CountingModel, "runs", [])

    async def both() -> list[int]:
        transport = httpx.ASGITransport(app=node.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            requests = [
                client.post("/v1/infer", json={"model": "double", "input": rows(1)}, headers={"X-PAYMENT": header})
                for _ in range(2)
            ]
            answers = await asyncio.gather(*requests)
        return sorted(a.status_code for a in answers)

    assert asyncio.run(both()) == [200, 409]
    assert CountingModel.runs == [1]
    assert node.store.unsettled_charges(CLIENT.address) == (1, PRICE)


def test_a_request_with_no_rows_is_a_422_and_charges_nothing(tmp_path: Path):
    node = make_node(tmp_path, price_unit="row")
    _, header = sign_payment(CLIENT, offer_of(node), PRICE)
    empty = {"model": "double", "input": {"x": {"dtype": "float32", "shape": [0, 2], "data": []}}}
    response = node.client.post("/v1/infer", json=empty, headers={"X-PAYMENT": header})
    assert assert_error(response, 422, "invalid_input") == "the input has no rows"
    assert node.store.unsettled_count() == 0


def test_expiry_and_revocation_are_checked_again_once_the_body_is_in(tmp_path: Path):
    # A body sent slowly must not outlive its payment: charge() re-checks what check() saw.
    node = make_node(tmp_path)
    gate: PaymentGate = node.app.state.context.gate
    quotes = node_api.current_quotes(node.app.state.context)
    offer = offer_of(node)
    _, header = sign_payment(CLIENT, replace(offer, expiry=HEIGHT + gate.settle_margin), PRICE)
    pending = gate.check({"x-payment": header}, quotes)
    node.view.current_height = HEIGHT + 1  # the body took a block
    with pytest.raises(node_api.PaymentRequired, match="too soon to settle"):
        gate.charge(pending, quotes[(offer.model_id, "vanilla")], 1)
    key = create_api_key(CLIENT, CHAIN_ID, NODE.address, cap=100 * PRICE, expiry=HEIGHT + 1000, nonce=5)
    pending = gate.check({"authorization": f"Bearer {key}"}, quotes)
    node.view.revoked[decode_api_key(key).value.id] = HEIGHT + 30  # announced while the body was arriving
    with pytest.raises(node_api.PaymentRequired, match="revoked on chain"):
        gate.charge(pending, quotes[(offer.model_id, "vanilla")], 1)
    assert gate.holds.idle()
