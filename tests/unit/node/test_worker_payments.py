"""The attack on a node served by several workers: a client sends requests to every worker at
once, hoping each sees only its own charges and together they serve more than its escrow (or its
API key's cap) pays. Two real payment gates on one PostgreSQL store, requests racing on threads:
exactly what the escrow or cap pays is served, the rest refused with 402, and the fees of what
was served are exactly the escrow."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from haca.node.errors import PaymentRequired
from haca.node.payments import PaymentGate, Quote
from haca.node.pgstore import PostgresReceiptStore
from haca.types.payment import SpendingAllowance, encode_api_key
from haca.types.receipt import Receipt, SignedReceipt
from tests.unit.node.nodehelpers import CHAIN_ID, CLIENT, DENOM, HEIGHT, MODEL_ID, NODE, FakeView, x_payment
from tests.unit.node.nodehelpers import per_request as signed_per_request

PRICE = 100
QUOTE = Quote(MODEL_ID, "double", "vanilla", PRICE, "request", 64, HEIGHT)
QUOTES = {(MODEL_ID, "vanilla"): QUOTE}
ATTEMPTS = 48  # 4 threads per worker, 6 requests each


@pytest.fixture
def workers(pg_dsn):
    view = FakeView()
    stores = [PostgresReceiptStore(pg_dsn, NODE.address, f"w{i}") for i in range(2)]
    gates = [PaymentGate(NODE.address, CHAIN_ID, DENOM, view, s, settle_margin=5, holds=s.new_holds()) for s in stores]
    yield view, stores, gates
    for store in stores:
        store.close()


def race(gates: list[PaymentGate], stores: list[PostgresReceiptStore], headers_of) -> tuple[list[int], list[str]]:
    """Each thread takes one worker and sends its requests: check, charge, the work, the receipt
    queued, the hold released — as the node's request path does."""
    served: list[int] = []
    refused: list[str] = []
    lock, start = threading.Lock(), threading.Barrier(8)

    def client(t: int) -> None:
        gate, store = gates[t % 2], stores[t % 2]
        start.wait()
        for n in range(t * 6, t * 6 + 6):
            try:
                accepted = gate.charge(gate.check(headers_of(n), QUOTES), QUOTE, 1)
            except PaymentRequired as exc:
                with lock:
                    refused.append(str(exc))
                continue
            r = Receipt(
                CHAIN_ID, NODE.address, CLIENT.address, accepted.request_id, MODEL_ID, "vanilla",
                "0x" + "00" * 32, "0x" + "11" * 32, accepted.fee, HEIGHT, 0,
            )  # fmt: skip
            store.add(SignedReceipt(r, r.sign(NODE)), accepted.payment)
            gate.release(accepted)
            with lock:
                served.append(accepted.fee)

    threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return served, refused


def test_two_workers_serve_exactly_what_the_escrow_pays_however_the_requests_race(workers):
    view, stores, gates = workers
    pays = 10
    view.escrows[CLIENT.address] = pays * PRICE + view.settlement_fee(pays * PRICE, pays)  # exactly 10 requests

    def headers(n: int) -> dict[str, str]:
        auth = signed_per_request(n, max_fee=PRICE, expiry=HEIGHT + 100).value
        return {"x-payment": x_payment(auth)}  # type: ignore[arg-type]

    served, refused = race(gates, stores, headers)
    assert len(served) == pays and len(refused) == ATTEMPTS - pays
    assert all(message.startswith(f"escrow of {CLIENT.address} for this node is") for message in refused)
    count, fees = stores[1].unsettled_charges(CLIENT.address)
    assert (count, fees + view.settlement_fee(fees, count)) == (pays, view.escrows[CLIENT.address])
    assert all(gate.holds.idle() for gate in gates)


def test_two_workers_never_charge_an_api_key_past_its_cap(workers):
    view, stores, gates = workers
    view.escrows[CLIENT.address] = 10**9
    key = replace(SpendingAllowance(CHAIN_ID, CLIENT.address, NODE.address, 7 * PRICE, HEIGHT + 1000, 1))
    bearer = {"authorization": "Bearer " + encode_api_key(key, key.sign(CLIENT))}
    served, refused = race(gates, stores, lambda n: bearer)
    assert len(served) == 7 and len(refused) == ATTEMPTS - 7
    assert all(message.startswith(f"API key allowance cap {7 * PRICE} reached") for message in refused)
    assert stores[0].unsettled_allowance(key.id) == 7 * PRICE
