"""Verifiable inference end to end on a real devnet: pay, infer, receipt, settle, burn."""

from __future__ import annotations

import base64
import json
import time

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from haca.client.errors import NodeError
from haca.client.payment import ReceiptInvalid, verify_answer
from haca.client.sdk import Client
from haca.devnet.layout import example_models_dir
from haca.devnet.services import EXAMPLE_PRICES
from tests.integration.helpers import genesis_supply, module_accounts, wait_height
from tests.metricshelpers import samples, value

pytestmark = pytest.mark.devnet
MODELS = json.loads((example_models_dir() / "manifest.json").read_text())["models"]


def node_url(net) -> str:
    return net.config.extra["nodes"][0]["url"]


@pytest.fixture(scope="module")
def client(inference_devnet):
    c = Client.from_home(inference_devnet.home, "dev1")
    c.deposit(10**9)
    yield c
    c.close()


def all_balances(net) -> int:
    addresses = [k.address for k in net.keys.list()] + module_accounts()
    return sum(net.client.balance(a) for a in addresses)


def tx_fee_of(net, tx_hash: str) -> int:
    events = net.client.rpc.tx(tx_hash)["tx_result"]["events"]
    return int(next(a["value"] for e in events if e["type"] == "tx" for a in e["attributes"] if a["key"] == "fee"))


@pytest.mark.parametrize("entry", MODELS, ids=[m["name"] for m in MODELS])
def test_node_output_is_bit_identical_to_a_direct_onnxruntime_run(client, entry):
    result = client.infer(entry["name"], entry["example_input"])
    session = ort.InferenceSession(str(example_models_dir() / entry["file"]), providers=["CPUExecutionProvider"])
    feed = {entry["input"]["name"]: np.asarray(entry["example_input"], dtype=entry["input"]["dtype"])}
    direct = session.run(None, feed)
    for meta, expected in zip(session.get_outputs(), direct, strict=True):
        got = result.output[meta.name]
        actual = np.asarray(got["data"], dtype=got["dtype"]).reshape(got["shape"])
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        assert actual.tobytes() == expected.tobytes(), meta.name


def test_receipt_verifies_client_side_and_a_tampered_answer_does_not(client, inference_devnet):
    entry = MODELS[0]
    result = client.infer(entry["name"], entry["example_input"])
    manifest = inference_devnet.client.query("/registry/model", entry["name"].encode())
    answer = result.to_json()
    node = inference_devnet.config.extra["nodes"][0]["address"]
    assert verify_answer(answer, entry["example_input"], manifest["input_schema"], node).id == result.receipt_id
    tampered = json.loads(json.dumps(answer))
    first = next(iter(tampered["output"].values()))
    first["data"] = np.asarray(first["data"]).__add__(1).tolist()
    with pytest.raises(ReceiptInvalid, match="output hash"):
        verify_answer(tampered, entry["example_input"], manifest["input_schema"], node)
    with pytest.raises(ReceiptInvalid, match="input hash"):
        verify_answer(answer, [[0.0, 0.0, 0.0, 0.0]], manifest["input_schema"], node)
    with pytest.raises(ReceiptInvalid, match="not by the node"):
        verify_answer(answer, entry["example_input"], manifest["input_schema"], "0x" + "11" * 20)


def test_settlement_pays_the_node_burns_the_settlement_fee_and_keeps_supply(client, inference_devnet):
    net = inference_devnet
    node = net.config.extra["nodes"][0]["address"]
    params = net.client.query("/inference/params")
    minted = genesis_supply(net)
    client.wait_settled(client.infer("iris", MODELS[0]["example_input"]).receipt_id)  # drain earlier receipts
    node_before, escrow_before = net.client.balance(node), client.escrow()
    burned_before = net.client.supply()["burned"]

    result = client.infer("mlp-regressor", next(m for m in MODELS if m["name"] == "mlp-regressor")["example_input"])
    record = client.wait_settled(result.receipt_id)
    fee = result.receipt.receipt.fee
    settlement_fee = int(params["settlement_fee"]) + fee * int(params["settlement_fee_bps"]) // 10_000
    assert record.record is not None and record.status == "settled"
    assert record.record.fee == fee == EXAMPLE_PRICES["mlp-regressor"]
    assert record.record.settlement_fee == settlement_fee
    tx_fee = tx_fee_of(net, client.node_receipt(result.receipt_id)["tx_hash"])
    assert net.client.balance(node) == node_before + fee - tx_fee  # the node pays its settlement tx's fee
    assert client.escrow() == escrow_before - fee - settlement_fee
    assert net.client.supply()["burned"] == burned_before + settlement_fee + tx_fee
    supply = net.client.supply()
    assert all_balances(net) == supply["total"]
    assert supply["total"] + supply["burned"] == minted


def test_unpaid_request_gets_402_with_x402_requirements(inference_devnet):
    response = httpx.post(f"{node_url(inference_devnet)}/v1/infer", json={"model": "iris", "input": [[1, 2, 3, 4]]})
    assert response.status_code == 402
    body = response.json()
    offered = sorted((a["extra"]["model"], a["extra"]["mode"]) for a in body["accepts"])
    expected = [(m, mode) for m in ("digits-cnn", "iris", "mlp-regressor") for mode in ("tee", "vanilla")]
    assert offered == sorted([*expected, ("mlp-regressor", "zkml")])  # zkml where a circuit is built
    (accept,) = [a for a in body["accepts"] if (a["extra"]["model"], a["extra"]["mode"]) == ("iris", "vanilla")]
    assert body["x402Version"] == 1 and body["error"]
    assert accept["scheme"] == "haca-escrow" and accept["network"] == inference_devnet.config.chain_id
    assert accept["asset"] == "opg" and int(accept["maxAmountRequired"]) == EXAMPLE_PRICES["iris"]
    assert accept["payTo"] == inference_devnet.config.extra["nodes"][0]["address"]
    assert accept["resource"].endswith("/v1/infer")


BAD_REQUESTS = {
    "invalid_json": (b"{not json", 400),
    "not_an_object": (b"[1, 2]", 400),
    "missing_input": (json.dumps({"model": "iris"}).encode(), 400),
    "unknown_field": (json.dumps({"model": "iris", "input": [[1, 2, 3, 4]], "x": 1}).encode(), 400),
    "unknown_model": (json.dumps({"model": "gpt-9", "input": [[1]]}).encode(), 404),
    "unknown_mode": (json.dumps({"model": "iris", "mode": "magic", "input": [[1, 2, 3, 4]]}).encode(), 400),
    "mode_not_offered": (json.dumps({"model": "iris", "mode": "zkml", "input": [[1, 2, 3, 4]]}).encode(), 400),
    "wrong_shape": (json.dumps({"model": "iris", "input": [[1, 2, 3]]}).encode(), 422),
    "ragged": (json.dumps({"model": "iris", "input": [[1, 2, 3, 4], [1]]}).encode(), 422),
    "wrong_dtype": (json.dumps({"model": "iris", "input": [["a", "b", "c", "d"]]}).encode(), 422),
    "wrong_tensor_dtype": (
        json.dumps(
            {"model": "iris", "input": {"input": {"dtype": "int64", "shape": [1, 4], "data": [[1, 2, 3, 4]]}}}
        ).encode(),
        422,
    ),
    "oversize": (b'{"model": "iris", "input": [' + b"1," * 600_000 + b"1]}", 413),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_http_input_gets_4xx_json_error_and_the_node_keeps_serving(inference_devnet, client, case):
    body, status = BAD_REQUESTS[case]
    url = node_url(inference_devnet)
    api_key = client.create_api_key(inference_devnet.config.extra["nodes"][0]["address"], cap=10**6, expires_in=1_000)
    headers = {"content-type": "application/json", "authorization": f"Bearer {api_key}"}
    response = httpx.post(f"{url}/v1/infer", content=body, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] and error["message"]
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_unknown_receipt_and_route_are_json_404(inference_devnet):
    url = node_url(inference_devnet)
    for path in ("/v1/receipts/0x" + "00" * 32, "/v1/nothing"):
        response = httpx.get(url + path)
        assert response.status_code == 404 and response.json()["error"]["message"]


def test_models_endpoint_lists_the_registered_models(inference_devnet):
    data = httpx.get(f"{node_url(inference_devnet)}/v1/models").json()["data"]
    assert sorted(m["name"] for m in data) == ["digits-cnn", "iris", "mlp-regressor", "smollm2"]
    chain_models = {m["name"]: m["model_id"] for m in inference_devnet.client.query("/registry/models")["models"]}
    assert {m["id"]: m["model_id"] for m in data} == chain_models  # id: the name requests use


def test_the_node_and_app_metrics_parse_and_move_with_traffic(client, inference_devnet):
    """The node's /metrics and every validator's app metrics (URLs from `devnet status`) parse
    with prometheus_client's parser, and count the inference, its settlement and its block."""
    status = inference_devnet.net.status()
    app_urls = [v["metrics"] for v in status["validators"]]
    assert all(url.startswith("http://127.0.0.1:") for url in app_urls)
    node_metrics = f"{node_url(inference_devnet)}/metrics"
    node_before, apps_before = samples(httpx.get(node_metrics).text), [samples(httpx.get(u).text) for u in app_urls]
    result = client.infer("iris", MODELS[0]["example_input"])
    record = client.wait_settled(result.receipt_id)
    deadline = time.monotonic() + 30
    while True:  # the node counts a settlement once its settler has seen the tx commit
        node_after = samples(httpx.get(node_metrics).text)
        if value(node_after, "haca_receipts_settled_total", status="settled") > value(
            node_before, "haca_receipts_settled_total", status="settled"
        ):
            break
        assert time.monotonic() < deadline, "the node never counted the settlement"
        time.sleep(0.3)

    def moved(after: dict, before: dict, name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved(node_after, node_before, "haca_inferences_total", model="iris", mode="vanilla") == 1
    assert moved(node_after, node_before, "haca_inference_seconds_count") == 1
    assert moved(node_after, node_before, "haca_settlement_lag_seconds_count") >= 1
    assert moved(node_after, node_before, "haca_settlement_txs_total", kind="single") >= 1
    wait_height(inference_devnet.client.rpc, record.height + 1)
    for url, before in zip(app_urls, apps_before, strict=True):  # every validator counted that block
        after = samples(httpx.get(url).text)
        assert moved(after, before, "haca_chain_receipts_settled_total", mode="vanilla", status="settled") >= 1
        assert moved(after, before, "haca_chain_txs_total", result="ok") >= 1
        assert value(after, "haca_chain_height") >= record.height
        assert value(after, "haca_chain_burned_tokens") > value(before, "haca_chain_burned_tokens")


def test_api_key_allowance_pays_until_its_cap_then_402(inference_devnet, client):
    node = inference_devnet.config.extra["nodes"][0]["address"]
    api_key = client.create_api_key(node, cap=2 * EXAMPLE_PRICES["iris"], expires_in=1_000)
    url, body = node_url(inference_devnet), {"model": "iris", "input": [[5.1, 3.5, 1.4, 0.2]]}
    headers = {"Authorization": f"Bearer {api_key}"}
    receipts = []
    for _ in range(2):
        response = httpx.post(f"{url}/v1/infer", json=body, headers=headers)
        assert response.status_code == 200, response.text
        receipts.append(response.json()["receipt"]["id"])
        assert base64.b64decode(response.headers["x-payment-response"])
    third = httpx.post(f"{url}/v1/infer", json=body, headers=headers)
    assert third.status_code == 402 and "cap" in third.json()["error"]
    for receipt_id in receipts:
        settled = client.wait_settled(receipt_id).record
        assert settled is not None and settled.payment == "allowance"
    from haca.types.encoding import canonical_json
    from haca.types.payment import decode_api_key

    allowance = decode_api_key(api_key).value
    state = inference_devnet.client.query("/inference/allowance", canonical_json(allowance.to_json()))
    assert int(state["spent"]) == 2 * EXAMPLE_PRICES["iris"] <= int(state["cap"])


def test_revoked_api_key_is_refused(inference_devnet, client):
    from haca.types.inference import MsgRevokeAllowance

    node = inference_devnet.config.extra["nodes"][0]["address"]
    api_key = client.create_api_key(node, cap=10**6, expires_in=1_000, nonce=4242)
    client.chain.send_msgs(client.key, (MsgRevokeAllowance(node, 4242),))

    time.sleep(1.2)  # the node caches allowance state for a second
    response = httpx.post(
        f"{node_url(inference_devnet)}/v1/infer",
        json={"model": "iris", "input": [[1, 2, 3, 4]]},
        headers={"Authorization": f"Bearer {api_key}"},
    )
    assert response.status_code == 402 and "revoked" in response.json()["error"]


def test_cli_infer_and_receipt_show_json(inference_devnet, client):
    import subprocess
    import sys

    env_home = str(inference_devnet.home)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "haca.cli.main",
            "--home",
            env_home,
            "infer",
            "-m",
            "iris",
            "--input",
            json.dumps(MODELS[0]["example_input"]),
            "--from",
            "dev1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert set(answer) >= {"output", "receipt", "status"} and answer["receipt"]["id"].startswith("0x")
    client.wait_settled(answer["receipt"]["id"])
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "haca.cli.main",
            "--home",
            env_home,
            "receipt",
            "show",
            answer["receipt"]["id"],
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(shown.stdout)["status"] == "settled"


def test_async_client_pays_verifies_and_waits_for_settlement(inference_devnet):
    import asyncio

    from haca.client.sdk import AsyncClient

    async def scenario() -> tuple[dict, object]:
        async with AsyncClient.from_home(inference_devnet.home, "dev3") as client:
            await client.deposit(10**7)
            results = await asyncio.gather(*(client.infer("iris", [[6.0, 2.9, 4.5, 1.5 + i / 10]]) for i in range(4)))
            records = await asyncio.gather(*(client.wait_settled(r.receipt_id) for r in results))
            return records, results

    records, results = asyncio.run(scenario())
    assert [r.status for r in records] == ["settled"] * 4
    assert len({r.receipt_id for r in results}) == 4


def _tiny_onnx(path, scale: float) -> None:
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [scale])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), path)


def test_model_cli_create_version_list_show_against_the_chain(inference_devnet, tmp_path):
    import subprocess
    import sys

    def haca(*args: str) -> dict:
        done = subprocess.run(
            [sys.executable, "-m", "haca.cli.main", "--home", str(inference_devnet.home), *args, "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr + done.stdout
        return json.loads(done.stdout)

    _tiny_onnx(tmp_path / "v1.onnx", 2.0)
    _tiny_onnx(tmp_path / "v2.onnx", 3.0)
    created = haca(
        "model",
        "create",
        "--name",
        "scaler",
        "--file",
        str(tmp_path / "v1.onnx"),
        "--modes",
        "vanilla",
        "--price",
        "700",
        "--from",
        "dev4",
    )
    assert created["name"] == "scaler" and created["version"] == 1 and created["id"].startswith("sha256:")
    version = haca("model", "version", "--name", "scaler", "--file", str(tmp_path / "v2.onnx"), "--from", "dev4")
    assert version["version"] == 2 and version["id"] != created["id"]
    listed = {m["name"]: m for m in haca("model", "list")["models"]}
    assert listed["scaler"]["version"] == 2 and listed["scaler"]["price"] == 700
    first = haca("model", "show", "scaler@1")
    assert first["id"] == created["id"] and first["input_schema"] == {"x": {"dtype": "float32", "shape": [1, 2]}}
    assert first["owner"] == inference_devnet.keys.get("dev4").address


class LosingTransport(httpx.HTTPTransport):
    """Delivers the paid request, then drops the node's answer (a connection reset on the way back)."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST" and "x-payment" in request.headers and not self.lost:
            response.read()
            response.close()
            self.lost += 1
            raise httpx.ReadError("connection reset after the request was sent", request=request)
        return response


def test_an_answer_lost_after_the_receipt_was_queued_is_fetched_again_and_paid_for_once(client, inference_devnet):
    """The client pays, the node serves and queues the receipt, the answer is lost on the way: the
    SDK fetches the kept output (GET /v1/outputs, signed by the client), checks it like any answer,
    and the chain charges the escrow once. Another client asking for it finds nothing."""
    net = inference_devnet
    entry = next(m for m in MODELS if m["name"] == "mlp-regressor")
    client.wait_settled(client.infer("iris", MODELS[0]["example_input"]).receipt_id)  # drain earlier receipts
    escrow_before = client.escrow()
    transport = LosingTransport()
    losing = Client.from_home(net.home, "dev1")
    losing.http = httpx.Client(transport=transport, timeout=30)
    try:
        result = losing.infer("mlp-regressor", entry["example_input"])
    finally:
        losing.close()
    assert transport.lost == 1
    assert result.output == client.infer("mlp-regressor", entry["example_input"]).output  # the model's real answer
    record = client.wait_settled(result.receipt_id)
    assert record.record is not None and (record.status, record.record.receipt_id) == ("settled", result.receipt_id)
    fee = result.receipt.receipt.fee
    params = net.client.query("/inference/params")
    settlement_fee = int(params["settlement_fee"]) + fee * int(params["settlement_fee_bps"]) // 10_000
    client.wait_settled(client.infer("iris", MODELS[0]["example_input"]).receipt_id)
    iris_fee = EXAMPLE_PRICES["iris"]
    iris_sf = int(params["settlement_fee"]) + iris_fee * int(params["settlement_fee_bps"]) // 10_000
    second = EXAMPLE_PRICES["mlp-regressor"]
    second_sf = int(params["settlement_fee"]) + second * int(params["settlement_fee_bps"]) // 10_000
    # the lost answer, the comparison run and the drain: each charged exactly once
    assert client.escrow() == escrow_before - (fee + settlement_fee) - (second + second_sf) - (iris_fee + iris_sf)
    with Client.from_home(net.home, "dev2") as other, pytest.raises(NodeError, match="no output of request"):
        other.fetch_output(result.receipt.receipt.request_id)
    supply = net.client.supply()
    assert all_balances(net) == supply["total"] and supply["total"] + supply["burned"] == genesis_supply(net)
