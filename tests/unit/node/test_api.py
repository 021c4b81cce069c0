"""The node's HTTP API over a real ONNX model (y = 2x), a real receipt store and a PaymentGate over
a fake chain view: 402 until paid, a signed receipt queued before the answer, JSON errors."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import sqlite3
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

from haca.client.payment import PaymentOffer, create_api_key, sign_payment, verify_answer
from haca.node.api import create_app
from haca.node.context import MAX_BODY_BYTES, NodeContext, ServedModel
from haca.node.payments import PaymentGate
from haca.node.receipts import ReceiptStore
from haca.runtime.onnx import OnnxModel
from haca.types.registry import ModelManifest
from haca.types.tensor import Tensor
from tests.metricshelpers import samples
from tests.unit.node.nodehelpers import CHAIN_ID, CLIENT, DENOM, HEIGHT, NODE, FakeView
from tests.unit.node.nodehelpers import manifest as chain_manifest

PRICE = 5
INPUT = [[1.5, -2.0]]
SCHEMA = {"x": {"dtype": "float32", "shape": [-1, 2]}}
OUTPUT_SCHEMA = {"y": {"dtype": "float32", "shape": [-1, 2]}}
MAX_ROWS = 4


def build_double(path: Path) -> str:
    """A one-op ONNX graph y = x * 2 (float32 [rows, 2]); returns its model id."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 2])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "double", [x], [y], [two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Node:
    client: TestClient
    app: Any
    store: ReceiptStore
    view: FakeView
    db: Path
    manifest: ModelManifest
    queued_before_answer: list[list[tuple[str, str]]]  # what the database held each time a receipt was queued


def make_node(
    tmp_path: Path,
    model_cls: type[OnnxModel] = OnnxModel,
    price_unit: str = "request",
    modes: tuple[str, ...] = ("vanilla",),
    enclave: Any = None,
) -> Node:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "double.onnx"
    model_id = build_double(path)
    manifest = chain_manifest(
        model_id=model_id,
        price=PRICE,
        max_rows=MAX_ROWS,
        price_unit=price_unit,
        input_schema=SCHEMA,
        output_schema=OUTPUT_SCHEMA,
        modes=modes,
    )
    served = ServedModel(manifest, model_cls(path))
    db = tmp_path / "node" / "receipts.db"
    store = ReceiptStore(db)
    view = FakeView()
    view.escrows[CLIENT.address] = 10**6
    view.manifests[model_id] = manifest
    gate = PaymentGate(NODE.address, CHAIN_ID, DENOM, view, store)  # type: ignore[arg-type]
    seen: list[list[tuple[str, str]]] = []

    def on_receipt() -> None:  # read through another connection: the receipt is committed, not just cached
        with sqlite3.connect(db) as other:
            seen.append(other.execute("SELECT id, status FROM receipts ORDER BY created").fetchall())

    ctx = NodeContext(NODE, CHAIN_ID, {"double": served, model_id: served}, modes, gate, store, on_receipt)
    ctx.enclave = enclave
    app = create_app(ctx)
    return Node(TestClient(app), app, store, view, db, manifest, seen)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return make_node(tmp_path)


def body(**changes: Any) -> dict[str, Any]:
    return {"model": "double", "input": INPUT, **changes}


def offer_of(node: Node) -> PaymentOffer:
    return PaymentOffer.from_402(node.client.post("/v1/infer", json={"model": "double"}).json(), "double", "vanilla")


def paid_headers(node: Node, fee: int = PRICE) -> tuple[Any, dict[str, str]]:
    """Answer the node's 402 the way the client SDK does."""
    auth, header = sign_payment(CLIENT, offer_of(node), fee)
    return auth, {"X-PAYMENT": header}


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message", "type", "param"} and error["code"] == code and error["message"]
    return str(error["message"])


# --- paying --------------------------------------------------------------------------------------


def test_an_unpaid_inference_is_a_402_with_x402_requirements_and_queues_nothing(node):
    response = node.client.post("/v1/infer", json=body())
    assert response.status_code == 402
    doc = response.json()
    assert doc["x402Version"] == 1 and doc["error"] == "payment required"
    accept = doc["accepts"][0]
    assert accept["scheme"] == "haca-escrow" and accept["network"] == CHAIN_ID and accept["asset"] == DENOM
    assert accept["maxAmountRequired"] == str(PRICE) and accept["payTo"] == NODE.address
    assert accept["resource"] == "http://testserver/v1/infer"
    assert accept["extra"]["model_id"] == node.manifest.model_id and accept["extra"]["mode"] == "vanilla"
    extra = accept["extra"]
    assert (extra["price"], extra["price_unit"], extra["max_rows"], extra["terms_height"]) == (
        str(PRICE),
        "request",
        MAX_ROWS,
        HEIGHT,
    )
    assert node.store.unsettled_count() == 0 and node.queued_before_answer == []


def test_a_paid_inference_answers_the_output_with_a_node_signed_receipt_queued_before_the_answer(node):
    auth, headers = paid_headers(node)
    response = node.client.post("/v1/infer", json=body(), headers=headers)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "pending"
    assert answer["output"] == {"y": {"dtype": "float32", "shape": [1, 2], "data": [[3.0, -4.0]]}}
    signed = verify_answer(answer, INPUT, node.manifest.input_schema, NODE.address, auth)  # signature, hashes
    receipt = signed.receipt
    assert receipt.signer(signed.signature) == NODE.address
    assert (receipt.client, receipt.request_id, receipt.fee) == (CLIENT.address, auth.request_id, PRICE)
    assert (receipt.chain_id, receipt.model_id, receipt.mode) == (CHAIN_ID, node.manifest.model_id, "vanilla")
    assert receipt.height_hint == HEIGHT
    assert answer["receipt"]["id"] == signed.id
    assert node.queued_before_answer == [[(signed.id, "pending")]]
    settled = json.loads(base64.b64decode(response.headers["X-PAYMENT-RESPONSE"]))
    assert settled["success"] is True and settled["network"] == CHAIN_ID
    assert (settled["payer"], settled["receipt"]) == (CLIENT.address, signed.id)
    for receipt_id in (signed.id, signed.id.upper().replace("0X", "0x")):
        stored = node.client.get(f"/v1/receipts/{receipt_id}")
        assert stored.status_code == 200
        assert stored.json() == {
            "receipt": answer["receipt"],
            "status": "pending",
            "tx_hash": None,
            "settled_height": None,
            "error": None,
            "evidence": None,  # vanilla: no proof
            "payment": stored.json()["payment"],  # what a claim on it must show (checked below)
        }
        assert stored.json()["payment"]["value"]["request_id"] == auth.request_id
    stored_item = node.store.get(signed.id)
    assert stored_item is not None and stored_item.item.payment.value == auth


def test_a_model_can_be_named_by_its_id(node):
    _, headers = paid_headers(node)
    response = node.client.post("/v1/infer", json=body(model=node.manifest.model_id), headers=headers)
    assert response.status_code == 200 and response.json()["receipt"]["model_id"] == node.manifest.model_id


def test_replaying_an_x_payment_is_a_409_and_queues_no_second_receipt(node):
    _, headers = paid_headers(node)
    assert node.client.post("/v1/infer", json=body(), headers=headers).status_code == 200
    assert_error(node.client.post("/v1/infer", json=body(), headers=headers), 409, "request_conflict")
    assert node.store.unsettled_count() == 1


def test_a_payment_that_does_not_cover_the_price_is_a_402(node):
    _, header = sign_payment(CLIENT, offer_of(node), PRICE - 1)
    response = node.client.post("/v1/infer", json=body(), headers={"X-PAYMENT": header})
    assert response.status_code == 402 and "below the price" in response.json()["error"]


def test_an_api_key_pays_with_a_new_request_id_per_inference(node):
    key = create_api_key(CLIENT, CHAIN_ID, NODE.address, cap=100, expiry=HEIGHT + 1000, nonce=1)
    headers = {"Authorization": f"Bearer {key}"}
    answers = [node.client.post("/v1/infer", json=body(), headers=headers) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    receipts = [verify_answer(a.json(), INPUT, SCHEMA, NODE.address).receipt for a in answers]
    assert receipts[0].client == CLIENT.address and receipts[0].request_id != receipts[1].request_id
    assert node.store.unsettled_count() == 2


# --- refused requests ----------------------------------------------------------------------------

BAD_BODIES = {
    "not_json": (b"{not json", 400, "invalid_request"),
    "not_an_object": (b"[1, 2]", 400, "invalid_request"),
    "no_input": (json.dumps({"model": "double"}).encode(), 400, "invalid_request"),
    "unknown_field": (json.dumps(body(temperature=1)).encode(), 400, "invalid_request"),
    "unknown_model": (json.dumps(body(model="triple")).encode(), 404, "model_not_found"),
    "model_not_a_string": (json.dumps(body(model=["double"])).encode(), 404, "model_not_found"),
    "unsupported_mode": (json.dumps(body(mode="zkml")).encode(), 400, "mode_not_supported"),
    "unknown_mode": (json.dumps(body(mode="magic")).encode(), 400, "mode_not_supported"),
    "wrong_shape": (json.dumps(body(input=[[1.0, 2.0, 3.0]])).encode(), 422, "invalid_input"),
    "wrong_rank": (json.dumps(body(input=[1.0, 2.0])).encode(), 422, "invalid_input"),
    "ragged": (json.dumps(body(input=[[1.0], [2.0, 3.0]])).encode(), 422, "invalid_input"),
    "not_numbers": (json.dumps(body(input=[["a", "b"]])).encode(), 422, "invalid_input"),
    "not_finite": (b'{"model": "double", "input": [[NaN, 1.0]]}', 422, "invalid_input"),  # or 400: not JSON
    "wrong_input_name": (json.dumps(body(input={"z": [[1.0, 2.0]]})).encode(), 422, "invalid_input"),
    "wrong_dtype": (
        json.dumps(body(input={"x": {"dtype": "int64", "shape": [1, 2], "data": [[1, 2]]}})).encode(),
        422,
        "invalid_input",
    ),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_a_bad_body_is_a_json_error_and_does_not_use_up_the_payment(node, case):
    raw, status, code = BAD_BODIES[case]
    _, headers = paid_headers(node)
    headers["content-type"] = "application/json"
    response = node.client.post("/v1/infer", content=raw, headers=headers)
    if case == "not_finite" and response.status_code == 400:  # a strict JSON parser refuses NaN outright
        status, code = 400, "invalid_request"
    assert_error(response, status, code)
    assert node.store.unsettled_count() == 0
    assert node.client.post("/v1/infer", json=body(), headers=headers).status_code == 200


def test_an_input_as_named_tensor_json_is_accepted(node):
    _, headers = paid_headers(node)
    tensor_input = {"x": {"dtype": "float32", "shape": [1, 2], "data": INPUT}}
    response = node.client.post("/v1/infer", json=body(input=tensor_input), headers=headers)
    assert response.status_code == 200
    assert verify_answer(response.json(), tensor_input, SCHEMA, NODE.address).receipt.fee == PRICE


@pytest.fixture
def default_recursion_limit() -> Iterator[None]:
    """The node runs with Python's default recursion limit; importing eth_account (as other tests do)
    raises it to 100000 for the whole process."""
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    yield
    sys.setrecursionlimit(previous)


@pytest.mark.parametrize("as_tensor", [False, True], ids=["nested_list", "tensor_json"])
def test_a_deeply_nested_input_is_a_4xx_json_error_not_a_server_error(node, as_tensor, default_recursion_limit):
    client = TestClient(node.app, raise_server_exceptions=False)
    _, headers = paid_headers(node)  # not used up: the request fails before it is charged
    for depth in (100, 900, 1000, 1020, 5000):
        data = "[" * depth + "1" + "]" * depth
        value = f'{{"x": {{"dtype": "float32", "shape": {[1] * depth}, "data": {data}}}}}' if as_tensor else data
        content = f'{{"model": "double", "input": {value}}}'.encode()
        response = client.post("/v1/infer", content=content, headers=headers)
        outcome = (response.status_code, response.json()["error"]["code"])
        # past orjson's nesting limit (1024) the body is not JSON at all; within it, the input is refused
        expected = (400, "invalid_request") if depth > 1022 else (422, "invalid_input")
        assert outcome == expected, (depth, outcome)


def test_a_paid_body_over_one_mib_is_a_413(node):
    _, headers = paid_headers(node)
    too_big = b'{"model": "double", "input": "' + b"x" * MAX_BODY_BYTES + b'"}'
    assert_error(node.client.post("/v1/infer", content=too_big, headers=headers), 413, "payload_too_large")

    def chunks():  # no content-length: the limit holds while streaming
        yield b'{"model": "double", "input": "'
        for _ in range(MAX_BODY_BYTES // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    assert_error(node.client.post("/v1/infer", content=chunks(), headers=headers), 413, "payload_too_large")


def test_unknown_receipts_and_routes_are_json_404s(node):
    assert_error(node.client.get("/v1/receipts/0x" + "00" * 32), 404, "receipt_not_found")
    assert_error(node.client.get("/v1/nothing"), 404, "http_error")
    assert_error(node.client.get("/v1/infer"), 405, "http_error")


# --- what the node says about itself ------------------------------------------------------------


def test_models_lists_each_served_model_once_with_its_price_and_schemas(node):
    response = node.client.get("/v1/models")
    assert response.status_code == 200
    doc = response.json()
    assert doc["object"] == "list" and len(doc["data"]) == 1  # served under its name and its id
    entry = doc["data"][0]
    assert {k: v for k, v in entry.items() if k != "provider"} == {
        "id": "double",
        "model_id": node.manifest.model_id,
        "name": "double",
        "version": 1,
        "modes": ["vanilla"],
        "price": PRICE,
        "price_unit": "request",
        "max_rows": MAX_ROWS,
        "input_schema": SCHEMA,
        "output_schema": OUTPUT_SCHEMA,
        "kind": "onnx",
        "object": "model",  # what OpenAI clients read (models.list)
        "created": 0,
        "owned_by": node.manifest.owner,
    }
    assert entry["provider"].endswith("ExecutionProvider")


def test_healthz_reports_the_node_and_its_unsettled_receipts(node):
    expected = {"status": "ok", "node": NODE.address, "chain_id": CHAIN_ID, "pending_receipts": 0}
    assert node.client.get("/healthz").json() == expected
    _, headers = paid_headers(node)
    node.client.post("/v1/infer", json=body(), headers=headers)
    assert node.client.get("/healthz").json() == {**expected, "pending_receipts": 1}


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in metrics:\n{text}"
    return float(match.group(1))


def test_metrics_count_inferences_refusals_latency_and_pending_receipts(node):
    _, headers = paid_headers(node)  # one 402
    node.client.post("/v1/infer", json=body(), headers=headers)
    node.client.post("/v1/infer", json=body(), headers=headers)  # one 409
    api_key = create_api_key(CLIENT, CHAIN_ID, NODE.address, cap=100, expiry=HEIGHT + 1000, nonce=1)
    node.client.post("/v1/infer", json=body(model="triple"), headers={"Authorization": f"Bearer {api_key}"})  # 404
    response = node.client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    families = {name for name, _ in samples(text)}  # prometheus_client's parser reads it
    for name in ("haca_llm_queue_depth", "haca_proof_seconds_count", "haca_settlement_lag_seconds_count"):
        assert name in families
    assert metric(text, 'haca_inferences_total{mode="vanilla",model="double"}') == 1
    assert metric(text, "haca_inference_seconds_count") == 1
    for status in ("402", "404", "409"):
        assert metric(text, f'haca_requests_rejected_total{{status="{status}"}}') == 1
    assert metric(text, "haca_receipts_pending") == 1
    node.store.mark([r.item.receipt.id for r in node.store.unsettled(10)], "settled", height=HEIGHT + 1)
    assert metric(node.client.get("/metrics").text, "haca_receipts_pending") == 0


def test_two_apps_keep_separate_metrics(tmp_path):
    first, second = make_node(tmp_path / "a"), make_node(tmp_path / "b")
    first.client.post("/v1/infer", json=body())
    assert metric(first.client.get("/metrics").text, 'haca_requests_rejected_total{status="402"}') == 1
    assert 'status="402"' not in second.client.get("/metrics").text


# --- known bugs --------------------------------------------------------------------------------


class GatedModel(OnnxModel):
    """Holds each run until `release` is set (by the test, once two requests passed the payment gate)."""

    release = threading.Event()

    def run(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        assert self.release.wait(10), "the second request never reached the payment gate"
        return super().run(inputs)


def test_concurrent_requests_cannot_spend_the_same_escrow_twice(tmp_path, monkeypatch):
    node = make_node(tmp_path, GatedModel)
    node.view.escrows[CLIENT.address] = PRICE + node.view.settlement_fee(PRICE)  # pays exactly one inference
    offer = offer_of(node)
    headers = [{"X-PAYMENT": sign_payment(CLIENT, offer, PRICE)[1]} for _ in range(2)]
    release, calls, original = threading.Event(), [], PaymentGate.check

    def counting(self: PaymentGate, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        finally:
            calls.append(1)
            if len(calls) == 2:
                release.set()

    monkeypatch.setattr(PaymentGate, "check", counting)
    monkeypatch.setattr(GatedModel, "release", release)

    async def both() -> list[int]:
        transport = httpx.ASGITransport(app=node.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            answers = await asyncio.gather(*(client.post("/v1/infer", json=body(), headers=h) for h in headers))
        return sorted(a.status_code for a in answers)

    assert asyncio.run(both()) == [200, 402]
    assert node.store.unsettled_charges(CLIENT.address) == (1, PRICE)
