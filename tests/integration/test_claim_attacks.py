"""Issue 19 on a live devnet: the ways a client (or governance) got an honest node slashed,
performed against node0, with the outcome the fix promises. Afterwards node0's stake is intact,
every honest lane moved by exactly what was served, and the supply invariant holds.

1. zkml paid with (about) the shortest expiry the node accepts, claimed at once: the chain refuses
   the claim (the payment does not outlast the claim deadline, code 26); the node proves and settles.
3. a tee answer paid with an expiry one block short of the node's min_expiry: refused before any
   work (402); at the minimum it is served, but the chain refuses a claim on it (test 1).
4. governance revokes the enclave's measurement while a client holds a tee receipt the node has
   not settled yet (the node is paused right after answering: it no longer serves tee while the
   measurement is revoked) and claims it: the claim is voided at the deadline (no slash), and
   once the measurement is approved again the resumed node settles the receipt verified."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sqlite3
import time
from typing import Any

import httpx
import pytest

from haca.client.errors import QueryFailed, TxRejected
from haca.client.payment import PaymentOffer, sign_payment
from haca.devnet.processes import signal_group
from haca.types import codes
from haca.types.gov import MsgUpdateParams
from haca.types.inference import MsgClaim
from haca.types.payment import SignedPayment
from haca.types.receipt import SignedReceipt
from haca.types.tee import MsgApproveMeasurement, MsgRevokeMeasurement
from tests.integration.test_payment_attacks import IRIS_INPUT, Net
from tests.integration.test_zkml import EXAMPLE as ZK_EXAMPLE

pytestmark = pytest.mark.devnet
SHORT_DEADLINE = 20  # blocks, set by governance for the revocation test (the devnet's is 200)


@pytest.fixture(scope="module")
def net(inference_devnet) -> Net:
    return Net(inference_devnet.home, inference_devnet)


def stake_of(net: Net, address: str) -> int:
    return int(net.chain.query("/staking/stake", address.encode())["bonded"])


def offer_of(net: Net, model: str, mode: str, body: dict[str, Any]) -> tuple[PaymentOffer, dict[str, Any]]:
    """node0's 402 offer for `model` in `mode`, and that offer's raw extra (min_expiry among it)."""
    first = httpx.post(net.node_url + "/v1/infer", json=body, timeout=30)
    assert first.status_code == 402, first.text
    accepts = first.json()["accepts"]
    extra = next(a["extra"] for a in accepts if a["extra"]["model"] == model and a["extra"]["mode"] == mode)
    return PaymentOffer.from_402(first.json(), model, mode), extra


def paid(net: Net, key: str, body: dict[str, Any], offer: PaymentOffer, fee: int) -> tuple[httpx.Response, Any]:
    auth, header = sign_payment(net.key(key), offer, fee)
    answer = httpx.post(net.node_url + "/v1/infer", json=body, headers={"X-PAYMENT": header}, timeout=120)
    return answer, auth


def stored(net: Net, receipt_id: str) -> tuple[SignedReceipt, SignedPayment, str]:
    doc = httpx.get(f"{net.node_url}/v1/receipts/{receipt_id}", timeout=30).json()
    return SignedReceipt.from_json(doc["receipt"]), SignedPayment.from_json(doc["payment"]), doc["status"]


def stored_on_disk(net: Net, receipt_id: str) -> tuple[SignedReceipt, SignedPayment]:
    """A receipt and its payment from node0's receipt store, read from its file (the node may be paused)."""
    (path,) = (net.home / "node").glob("*/receipts.db")
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT receipt, payment FROM receipts WHERE id = ?", (receipt_id,)).fetchone()
    assert row is not None, f"receipt {receipt_id} is not in {path}"
    return SignedReceipt.from_json(json.loads(row[0])), SignedPayment.from_json(json.loads(row[1]))


def query_or_none(net: Net, path: str, data: bytes) -> dict[str, Any] | None:
    try:
        return dict(net.chain.query(path, data))
    except QueryFailed:
        return None


def wait_status(net: Net, receipt_id: str, want: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = query_or_none(net, "/inference/receipt", receipt_id.encode())
        if record is not None and record["status"] == want:
            return dict(record)
        time.sleep(0.5)
    at_node = httpx.get(f"{net.node_url}/v1/receipts/{receipt_id}", timeout=30).json()
    raise AssertionError(
        f"receipt {receipt_id} not {want} within {timeout} s; at the node: {at_node.get('status')}"
        f" {at_node.get('error')}"
    )


def test_1_a_zkml_answer_paid_to_the_minimum_expiry_cannot_be_claimed_and_still_settles(net):
    client = net.key("dev3")
    with net.client("dev3") as sdk:
        sdk.deposit(10**9)
    body = {"model": "mlp-regressor", "mode": "zkml", "input": ZK_EXAMPLE}
    offer, extra = offer_of(net, "mlp-regressor", "zkml", body)
    # what the node enforces, plus a margin: its estimate moves with the height and the measured
    # block time between the 402 and the paid request; still far short of a claim's deadline
    short = dataclasses.replace(offer, expiry=int(extra["min_expiry"]) + 20)
    stake, escrow = stake_of(net, net.node), net.escrow(client.address, net.node)
    answer, _ = paid(net, "dev3", body, short, offer.fee(1))
    assert answer.status_code == 200, answer.text
    signed, payment, _ = stored(net, answer.json()["receipt"]["id"])
    with pytest.raises(TxRejected) as refused:  # claimed at once: the node would have no whole window
        net.chain.send_msgs(client, (MsgClaim(signed, payment),))
    assert refused.value.abci_code == codes.CLAIM_WINDOW_NOT_COVERED, refused.value.log
    record = wait_status(net, signed.id, "verified")
    fee = signed.receipt.fee
    assert int(record["fee"]) == fee
    assert stake_of(net, net.node) == stake
    assert net.escrow(client.address, net.node) == escrow - fee - net.settlement_fee(fee)
    net.assert_supply_holds()


def test_3_a_payment_expiring_before_the_node_could_settle_is_refused_before_any_work(net):
    with net.client("dev4") as sdk:
        sdk.deposit(10**9)
    body = {"model": "iris", "mode": "tee", "input": IRIS_INPUT}
    offer, extra = offer_of(net, "iris", "tee", body)
    too_soon = dataclasses.replace(offer, expiry=int(extra["min_expiry"]) - 1)  # one block short of the 402's
    escrow = net.escrow(net.key("dev4").address, net.node)
    answer, _ = paid(net, "dev4", body, too_soon, offer.fee(1))
    assert answer.status_code == 402, answer.text
    assert "too soon to settle" in answer.text
    assert net.escrow(net.key("dev4").address, net.node) == escrow
    net.assert_supply_holds()


def test_4_a_measurement_revoked_under_a_claim_voids_it_and_the_receipt_settles_once_approved_again(net):
    client = net.key("dev5")
    with net.client("dev5") as sdk:
        sdk.deposit(10**9)
    (approval,) = [a for a in net.chain.query("/tee/measurements")["approvals"] if a["model"] == "*"]
    mid = approval["measurement_id"]
    net.chain.send_msgs(net.key("dev0"), (MsgUpdateParams("inference", {"claim_deadline": str(SHORT_DEADLINE)}),))
    stake, escrow = stake_of(net, net.node), net.escrow(client.address, net.node)
    body = {"model": "iris", "mode": "tee", "input": IRIS_INPUT}
    offer, _ = offer_of(net, "iris", "tee", body)
    answer, _ = paid(net, "dev5", body, offer, offer.fee(1))
    node_pid = next(s.pid for s in net.handle.net.load().services if s.name == "node0")
    signal_group(node_pid, signal.SIGSTOP)  # before its settler's next pass (a second away)
    try:
        assert answer.status_code == 200, answer.text
        signed, payment = stored_on_disk(net, answer.json()["receipt"]["id"])
        net.chain.send_msgs(net.key("dev0"), (MsgRevokeMeasurement(mid, "*"),))
        assert query_or_none(net, "/inference/receipt", signed.id.encode()) is None  # not settled before
        outcome = net.chain.send_msgs(client, (MsgClaim(signed, payment),))
        deadline = int(net.chain.query("/inference/claim", signed.id.encode())["deadline"])
        while net.chain.rpc.height() <= deadline:
            time.sleep(0.3)
        assert query_or_none(net, "/inference/claim", signed.id.encode()) is None  # voided at the deadline
        assert query_or_none(net, "/inference/receipt", signed.id.encode()) is None  # not failed: no slash
        assert stake_of(net, net.node) == stake
        assert outcome.height > 0
    finally:
        net.chain.send_msgs(net.key("dev0"), (MsgApproveMeasurement(mid, "*"),))
        signal_group(node_pid, signal.SIGCONT)
    record = wait_status(net, signed.id, "verified")  # the resumed node settles it now
    fee = signed.receipt.fee
    assert int(record["fee"]) == fee and stake_of(net, net.node) == stake
    assert net.escrow(client.address, net.node) == escrow - fee - net.settlement_fee(fee)
    net.assert_supply_holds()
