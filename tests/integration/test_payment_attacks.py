"""Issue 7 on a live devnet: each hole found by attacking the money path, performed again, with the
outcome the fix promises (the client is not overcharged, the node that answered is paid, the
request is refused cheaply) and every honest balance, escrow and the supply checked afterwards.

Item 9 (RPC failover) is in test_rpc_failover.py; item 10 (hub uploads) is at the end here.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from haca.client.errors import TxRejected
from haca.client.payment import PaymentRequiredError, ReceiptInvalid
from haca.client.sdk import Client
from haca.crypto.keys import PrivateKey
from haca.devnet.layout import example_models_dir
from haca.devnet.processes import free_ports, process_alive, spawn
from haca.devnet.services import EXAMPLE_PRICES, EXAMPLE_TERMS, node_command, wait_http
from haca.node.service import ensure_stake
from haca.runtime.onnx import OnnxModel
from haca.types import codes
from haca.types.inference import MsgRevokeAllowance, MsgSettle, SettlementItem
from haca.types.payment import PaymentAuthorization, SignedPayment
from haca.types.receipt import Receipt, SignedReceipt
from haca.types.registry import MsgRegisterModel, MsgRegisterNode
from haca.types.tensor import parse_input, schema_from_json, tensors_hash, tensors_to_json
from tests.integration.helpers import assert_devnet_supply_holds, settlement_fee, wait_height

pytestmark = pytest.mark.devnet
MODELS = {m["name"]: m for m in json.loads((example_models_dir() / "manifest.json").read_text())["models"]}
IRIS_INPUT = MODELS["iris"]["example_input"]


@dataclass
class Net:
    home: Path
    handle: Any

    @property
    def chain(self) -> Any:
        return self.handle.client

    @property
    def node(self) -> str:
        return str(self.handle.config.extra["nodes"][0]["address"])

    @property
    def node_url(self) -> str:
        return str(self.handle.config.extra["nodes"][0]["url"])

    def key(self, name: str) -> PrivateKey:
        return self.handle.keys.get(name).key

    def client(self, key: str, node_url: str | None = None) -> Client:
        return Client.from_home(self.home, key, node_url)

    def params(self) -> dict[str, Any]:
        return dict(self.chain.query("/inference/params"))

    def settlement_fee(self, fee: int) -> int:
        return settlement_fee(self.chain, fee)

    def escrow(self, client: str, node: str) -> int:
        return int(self.chain.query("/inference/escrow", f"{client}/{node}".encode())["escrow"])

    def assert_supply_holds(self) -> None:
        assert_devnet_supply_holds(self.handle)


@pytest.fixture(scope="module")
def net(inference_devnet) -> Net:
    return Net(inference_devnet.home, inference_devnet)


def settle_all(client: Client, receipt_ids: list[str], timeout: float = 90.0) -> list[dict[str, Any]]:
    return [client.wait_settled(rid, timeout) for rid in receipt_ids]


def settlement_tx_fees(net: Net, client: Client, receipt_ids: list[str]) -> int:
    """What the node paid in tx fees for the settlement txs that carried these receipts."""
    hashes = {client.node_receipt(rid)["tx_hash"] for rid in receipt_ids}
    return sum(tx_fee_of(net, h) for h in hashes)


def fees_paid_by(net: Net, signer: str, after: int, through: int) -> int:
    """The tx fees `signer` paid in blocks after..through (tx_search over the indexed signer)."""
    query = f"tx.signer='{signer}' AND tx.height>{after} AND tx.height<={through}"
    txs = net.chain.rpc.call("tx_search", query=query, per_page="100")["txs"]
    return sum(
        int(a["value"])
        for t in txs
        for e in t["tx_result"]["events"]
        if e["type"] == "tx"
        for a in e["attributes"]
        if a["key"] == "fee"
    )


def tx_fee_of(net: Net, tx_hash: str) -> int:
    events = net.chain.rpc.tx(tx_hash)["tx_result"]["events"]
    return int(next(a["value"] for e in events if e["type"] == "tx" for a in e["attributes"] if a["key"] == "fee"))


# --- 1. a node cannot take more than it quoted -----------------------------------------------------


class OverchargingNode:
    """A node that quotes the on-chain price in its 402, answers honestly, and signs a receipt
    for nearly the client's whole escrow (the attack of issue 7, item 1)."""

    def __init__(self, net: Net, key: PrivateKey, quote: int, charge: int) -> None:
        self.net, self.key, self.quote, self.charge = net, key, quote, charge
        self.model = OnnxModel(example_models_dir() / MODELS["iris"]["file"], ["CPUExecutionProvider"])
        self.manifest = net.chain.query("/registry/model", b"iris")
        self.paid: list[tuple[SignedReceipt, SignedPayment]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        height = self.net.chain.rpc.height()
        header = request.headers.get("x-payment")
        if not header:
            extra = {
                "model_id": self.manifest["model_id"],
                "model": "iris",
                "mode": "vanilla",
                "price": str(self.quote),
                "price_unit": "request",
                "max_rows": 16,
                "terms_height": height,
                "suggested_expiry": height + 100,
            }
            accept = {"scheme": "haca-escrow", "network": self.net.handle.config.chain_id, "payTo": self.key.address}
            return httpx.Response(402, json={"x402Version": 1, "accepts": [{**accept, "extra": extra}]})
        payload = json.loads(base64.b64decode(header))["payload"]
        auth = PaymentAuthorization.from_json(payload["authorization"])
        inputs = self.model.prepare(json.loads(request.content)["input"])
        outputs = self.model.run(inputs)
        receipt = Receipt(
            auth.chain_id,
            self.key.address,
            auth.client,
            auth.request_id,
            auth.model_id,
            "vanilla",
            tensors_hash(inputs),
            tensors_hash(outputs),
            self.charge,
            height,
            int(time.time()),
        )
        signed = SignedReceipt(receipt, receipt.sign(self.key))
        self.paid.append((signed, SignedPayment("request", auth, bytes.fromhex(payload["signature"][2:]))))
        answer = {"output": tensors_to_json(outputs), "receipt": signed.to_json(), "status": "pending"}
        return httpx.Response(200, json=answer)


def test_1_a_node_that_signs_a_receipt_above_its_quote_is_refused_by_the_client_and_the_chain(net):
    price = EXAMPLE_PRICES["iris"]
    thief = net.key("dev2")
    ensure_stake(net.chain, thief, ("vanilla",))  # a node must bond the mode's minimum stake to register
    net.chain.send_msgs(thief, (MsgRegisterNode("http://thief.invalid", ("vanilla",), ("iris",), 0),))
    with net.client("dev3", "http://thief.invalid") as client:
        client.deposit(1_000_000, thief.address)
        escrow = net.escrow(client.key.address, thief.address)
        node = OverchargingNode(net, thief, quote=price, charge=escrow * 100 // 105)
        client.http = httpx.Client(transport=httpx.MockTransport(node.handle))
        with pytest.raises(ReceiptInvalid, match=f"receipt charges {node.charge}; the client signed for {price}"):
            client.infer("iris", IRIS_INPUT)
        ((signed, payment),) = node.paid
        assert payment.value.max_fee == price  # the client signed the quoted fee, not an open-ended max
        balances = (net.chain.balance(client.key.address), net.chain.balance(thief.address))
        burned = net.chain.supply()["burned"]
        with pytest.raises(TxRejected) as refused:
            net.chain.send_msgs(thief, (MsgSettle((SettlementItem(signed, payment),)),))
        assert refused.value.abci_code == codes.FEE_ABOVE_LIMIT
        assert net.escrow(client.key.address, thief.address) == escrow
        assert net.chain.balance(client.key.address) == balances[0]
        assert net.chain.balance(thief.address) == balances[1]  # refused in CheckTx: not even a tx fee moved
        assert net.chain.supply()["burned"] == burned

        # Without --max-fee the client accepts at most the model's price on chain: re-registering the
        # node at a higher price (which takes effect at once) does not raise that bound.
        net.chain.send_msgs(thief, (MsgRegisterNode("http://thief.invalid", ("vanilla",), ("iris",), 10 * price),))
        greedy = OverchargingNode(net, thief, quote=10 * price, charge=10 * price)
        client.http = httpx.Client(transport=httpx.MockTransport(greedy.handle))
        with pytest.raises(PaymentRequiredError, match="more than the model's price on chain"):
            client.infer("iris", IRIS_INPUT)
        assert greedy.paid == []  # nothing was signed or sent
        with pytest.raises(PaymentRequiredError, match="more than the max fee"):
            client.infer("iris", IRIS_INPUT, max_fee=10 * price - 1)
        assert greedy.paid == []
    net.assert_supply_holds()


# --- 2. revoking an allowance does not void what the node already served ---------------------------


def test_2_receipts_served_before_a_revocation_all_settle_and_later_requests_are_refused(net):
    price = EXAMPLE_PRICES["iris"]
    with net.client("dev4") as client:
        client.deposit(10**9)
        node_before, escrow_before = net.chain.balance(net.node), client.escrow()
        api_key = client.create_api_key(net.node, cap=100 * price, expires_in=10_000, nonce=77)
        headers = {"Authorization": f"Bearer {api_key}"}
        answers = [
            httpx.post(f"{net.node_url}/v1/infer", json={"model": "iris", "input": IRIS_INPUT}, headers=headers)
            for _ in range(10)
        ]
        assert [a.status_code for a in answers] == [200] * 10
        outcome = client.chain.send_msgs(client.key, (MsgRevokeAllowance(net.node, 77),))  # the attack, at once
        refused = httpx.post(f"{net.node_url}/v1/infer", json={"model": "iris", "input": IRIS_INPUT}, headers=headers)
        deadline = time.monotonic() + 5
        while refused.status_code == 200 and time.monotonic() < deadline:  # the node's cache lags up to 1 s
            answers.append(refused)
            refused = httpx.post(
                f"{net.node_url}/v1/infer", json={"model": "iris", "input": IRIS_INPUT}, headers=headers
            )
        assert refused.status_code == 402 and "revoked" in refused.json()["error"]
        records = settle_all(client, [a.json()["receipt"]["id"] for a in answers])
        assert [r.status for r in records] == ["settled"] * len(answers)
        assert max(r.height for r in records) < outcome.height + int(net.params()["revoke_delay"])
        charged = len(answers) * (price + net.settlement_fee(price))
        assert client.escrow() == escrow_before - charged
        fees = settlement_tx_fees(net, client, [a.json()["receipt"]["id"] for a in answers])
        assert net.chain.balance(net.node) == node_before + len(answers) * price - fees
    net.assert_supply_holds()


# --- 3. a withdrawal cannot take back what the node served against ---------------------------------


def test_3_requests_raced_against_a_withdrawal_are_refused_or_paid(net):
    price = EXAMPLE_PRICES["iris"]
    with net.client("dev5") as client:
        deposit = 20 * (price + net.settlement_fee(price))
        client.deposit(deposit)
        balance_before, node_before = net.chain.balance(client.key.address), net.chain.balance(net.node)
        start_height = net.chain.rpc.height()
        first = client.infer("iris", IRIS_INPUT)
        for _ in range(3):  # everything in escrow, while its receipt may still be unsettled
            try:
                outcome = client.withdraw(net.escrow(client.key.address, net.node))
                break
            except TxRejected:  # the receipt settled between the read and the withdrawal: read again
                continue
        else:
            pytest.fail("the escrow could not be withdrawn")
        release = outcome.height + int(net.params()["withdraw_delay"])
        served, refused = [first.receipt_id], 0
        while net.chain.rpc.height() < release:
            try:
                served.append(client.infer("iris", IRIS_INPUT).receipt_id)
            except PaymentRequiredError:
                refused += 1
        assert refused > 0
        records = settle_all(client, served)
        assert [r.status for r in records] == ["settled"] * len(served)
        assert all(r.height < release for r in records)
        wait_height(net.chain.rpc, release + 1)
        cost = len(served) * (price + net.settlement_fee(price))
        assert net.escrow(client.key.address, net.node) == 0
        paid_back = net.chain.balance(client.key.address) - balance_before
        assert paid_back == deposit - cost - tx_fee_of(net, outcome.hash)  # what it did not spend, less the tx fee
        node_fees = settlement_tx_fees(net, client, served)
        # node0 may also re-attest its enclave meanwhile (a tx of its own): count every tx it paid for
        other_fees = fees_paid_by(net, net.node, start_height, net.chain.rpc.height()) - node_fees
        assert net.chain.balance(net.node) == node_before + len(served) * price - node_fees - other_fees
        assert other_fees >= 0
    net.assert_supply_holds()


# --- 4. one deposit cannot back answers at two nodes -----------------------------------------------


@pytest.fixture(scope="module")
def second_node(net) -> Iterator[tuple[str, str]]:
    """A second inference node (key dev9) serving the example models; (url, address)."""
    (port,) = free_ports(1)
    log = net.home / "node-dev9.log"
    pid = spawn(node_command(net.home, "dev9", port), log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", pid, "node dev9", log)
        yield url, net.key("dev9").address
    finally:
        if process_alive(pid):
            os.killpg(os.getpgid(pid), signal.SIGTERM)


def test_4_a_deposit_for_one_node_is_not_spent_at_another(net, second_node):
    url_b, node_b = second_node
    price = EXAMPLE_PRICES["iris"]
    one = price + net.settlement_fee(price)
    with net.client("dev6") as at_a, net.client("dev6", url_b) as at_b:
        at_a.deposit(one)  # enough for one inference, at node A only
        results: dict[str, Any] = {}

        def ask(name: str, client: Client) -> None:
            try:
                results[name] = client.infer("iris", IRIS_INPUT)
            except PaymentRequiredError as exc:
                results[name] = exc

        threads = [threading.Thread(target=ask, args=pair) for pair in (("a", at_a), ("b", at_b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert isinstance(results["b"], PaymentRequiredError) and "escrow" in str(results["b"])
        record = at_a.wait_settled(results["a"].receipt_id)
        assert record.status == "settled" and record.fee == price
        assert net.escrow(at_a.key.address, net.node) == 0
        at_b.deposit(one)  # now node B is backed by its own deposit
        assert at_b.wait_settled(at_b.infer("iris", IRIS_INPUT).receipt_id).status == "settled"
        assert net.escrow(at_b.key.address, node_b) == 0
    net.assert_supply_holds()


# --- 5. a price change never voids receipts already served ----------------------------------------


def test_5_raising_a_price_does_not_void_the_receipts_served_before_it_takes_effect(net):
    price = EXAMPLE_PRICES["digits-cnn"]
    example = MODELS["digits-cnn"]["example_input"]
    owner = net.key("publisher")
    current = net.chain.query("/registry/model", b"digits-cnn")
    with net.client("dev7") as client:
        client.deposit(10**9)
        served = [client.infer("digits-cnn", example) for _ in range(3)]
        raise_price = MsgRegisterModel(
            "digits-cnn",
            current["model_id"],  # the same bytes, a new version at three times the price
            current["input_schema"],
            current["output_schema"],
            tuple(current["modes"]),
            3 * price,
            current["price_unit"],
            current["max_rows"],
        )
        outcome = net.chain.send_msgs(owner, (raise_price,))  # the attack: right after the answers
        manifest = net.chain.query("/registry/model", b"digits-cnn")
        assert manifest["effective_height"] == outcome.height + int(net.chain.query("/registry/params")["price_delay"])
        served.append(client.infer("digits-cnn", example))  # still quoted at the old price
        records = settle_all(client, [r.receipt_id for r in served])
        assert [(r.status, r.fee) for r in records] == [("settled", price)] * len(served)
        wait_height(net.chain.rpc, manifest["effective_height"] + 1)
        time.sleep(1.2)  # the node reads the chain height through a one-second cache
        after = client.infer("digits-cnn", example)
        assert after.receipt.receipt.fee == 3 * price
        assert client.wait_settled(after.receipt_id).fee == 3 * price
    net.assert_supply_holds()


# --- 6. the fee follows the work -------------------------------------------------------------------


def test_6_a_request_beyond_the_row_limit_is_refused_and_per_row_prices_charge_every_row(net):
    _, unit, max_rows = EXAMPLE_TERMS["iris"]
    assert unit == "request"
    with net.client("dev8") as client:
        client.deposit(10**9)
        escrow = client.escrow()
        api_key = client.create_api_key(net.node, cap=10**8, expires_in=10_000)
        rows = [[5.1, 3.5, 1.4, 0.2]] * 1000
        response = httpx.post(
            f"{net.node_url}/v1/infer",
            json={"model": "iris", "input": rows},
            headers={"Authorization": f"Bearer {api_key}"},
        )
        assert response.status_code == 413 and response.json()["error"]["code"] == "too_many_rows"
        assert f"at most {max_rows}" in response.json()["error"]["message"]
        with pytest.raises(PaymentRequiredError, match=f"at most {max_rows} per request"):
            client.infer("iris", rows)
        assert client.escrow() == escrow

        price, unit, _ = EXAMPLE_TERMS["mlp-regressor"]
        assert unit == "row"
        three = MODELS["mlp-regressor"]["example_input"] * 3
        result = client.infer("mlp-regressor", three)
        assert result.receipt.receipt.fee == 3 * price
        record = client.wait_settled(result.receipt_id)
        assert record.fee == 3 * price
        assert client.escrow() == escrow - 3 * price - net.settlement_fee(3 * price)
    net.assert_supply_holds()


# --- 7. an unpaid request costs the node almost nothing --------------------------------------------


def metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


def test_7_unpaid_requests_with_large_bodies_are_refused_without_parsing_them(net):
    body = b'{"model": "iris", "input": [' + b",".join([b"[5.1, 3.5, 1.4, 0.2]"] * 45_000) + b"]}"
    assert 900_000 < len(body) < 1 << 20
    parsed_before = metric(httpx.get(f"{net.node_url}/metrics").text, "haca_request_bodies_parsed_total")
    with httpx.Client(timeout=30) as http:
        statuses = [
            http.post(f"{net.node_url}/v1/infer", content=body, headers={"content-type": "application/json"})
            for _ in range(20)
        ]
    assert {r.status_code for r in statuses} == {402}
    assert all(r.json()["error"] == "payment required" for r in statuses)
    parsed_after = metric(httpx.get(f"{net.node_url}/metrics").text, "haca_request_bodies_parsed_total")
    assert parsed_after == parsed_before
    with net.client("dev8") as client:  # and a paid request is served as before
        assert client.infer("iris", IRIS_INPUT).status == "pending"


# --- 8. non-finite outputs are encoded faithfully --------------------------------------------------


def test_8_an_answer_with_nan_passes_the_clients_check_and_settles_once(net):
    price = EXAMPLE_PRICES["mlp-regressor"]
    huge = [[3.0e38] * 10]  # overflows inside the network: the output is NaN
    with net.client("dev1") as client:
        client.deposit(10**8)
        escrow = client.escrow()
        result = client.infer("mlp-regressor", huge)
        assert result.output["prediction"]["data"] == [["NaN"]]
        manifest = net.chain.query("/registry/model", b"mlp-regressor")
        assert result.receipt.receipt.input_hash == tensors_hash(
            parse_input(huge, schema_from_json(manifest["input_schema"]))
        )
        assert client.wait_settled(result.receipt_id).status == "settled"
        assert client.escrow() == escrow - price - net.settlement_fee(price)
    net.assert_supply_holds()


# --- 10. uploads to the hub need an uploader's signature ------------------------------------------


def test_10_an_anonymous_upload_to_the_devnet_hub_is_a_401_and_stores_nothing(net):
    hub = net.handle.config.extra["hub"]
    before = httpx.get(f"{hub}/v1/blobs").json()
    response = httpx.post(
        f"{hub}/v1/blobs", content=b"free storage", headers={"content-type": "application/octet-stream"}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "upload_signature_required"
    assert httpx.get(f"{hub}/v1/blobs").json() == before
