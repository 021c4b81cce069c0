"""Issue 7, item 8: a model whose outputs are NaN and ±inf. The node used to write them as null,
so the client's own check failed while the receipt settled and the client was charged. Now the
node's HTTP answer carries them faithfully and passes `verify_answer`, with the receipt's output
hash equal to the hash of what the client decoded."""

from __future__ import annotations

import hashlib
import math
import platform
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import orjson
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

from haca.client.payment import PaymentOffer, ReceiptInvalid, sign_payment, verify_answer
from haca.node.api import create_app
from haca.node.context import NodeContext, ServedModel
from haca.node.payments import PaymentGate
from haca.node.receipts import ReceiptStore
from haca.runtime.onnx import OnnxModel
from haca.types.registry import ModelManifest
from haca.types.tensor import Tensor, tensors_hash
from tests.unit.node.nodehelpers import CHAIN_ID, CLIENT, DENOM, NODE, FakeView
from tests.unit.node.nodehelpers import manifest as chain_manifest

PRICE = 5
INPUT = [[1.0, -1.0, 0.0]]
NAN, INF = math.nan, math.inf
# x / 0, log(x), sqrt(x) of [1, -1, 0]
EXPECTED = {
    "ratio": (INF, -INF, NAN),
    "log": (0.0, NAN, -INF),
    "root": (1.0, NAN, 0.0),
}
EXPECTED_WIRE = {
    "ratio": [["Infinity", "-Infinity", "NaN"]],
    "log": [[0.0, "NaN", "-Infinity"]],
    "root": [[1.0, "NaN", 0.0]],
}
DTYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE}


def build_nonfinite(path: Path, dtype: str) -> str:
    """ratio = x / 0, log = Log(x), root = Sqrt(x) over x of shape [1, 3]; returns the model id."""
    elem = DTYPES[dtype]
    x = helper.make_tensor_value_info("x", elem, [1, 3])
    outputs = [helper.make_tensor_value_info(name, elem, [1, 3]) for name in EXPECTED]
    zero = helper.make_tensor("zero", elem, [], [0.0])
    nodes = [
        helper.make_node("Div", ["x", "zero"], ["ratio"]),
        helper.make_node("Log", ["x"], ["log"]),
        helper.make_node("Sqrt", ["x"], ["root"]),
    ]
    graph = helper.make_graph(nodes, "nonfinite", [x], outputs, [zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Node:
    client: TestClient
    model: OnnxModel
    store: ReceiptStore
    manifest: ModelManifest


def make_node(tmp_path: Path, dtype: str) -> Node:
    path = tmp_path / "nonfinite.onnx"
    model_id = build_nonfinite(path, dtype)
    schema = {"x": {"dtype": dtype, "shape": [1, 3]}}
    manifest = chain_manifest(
        "nonfinite",
        model_id,
        PRICE,
        max_rows=1,
        input_schema=schema,
        output_schema={name: {"dtype": dtype, "shape": [1, 3]} for name in EXPECTED},
    )
    model = OnnxModel(path, ["CPUExecutionProvider"])
    served = ServedModel(manifest, model)
    store = ReceiptStore(tmp_path / "node" / "receipts.db")
    view = FakeView()
    view.escrows[CLIENT.address] = 10**6
    view.manifests[model_id] = manifest
    gate = PaymentGate(NODE.address, CHAIN_ID, DENOM, view, store)
    ctx = NodeContext(NODE, CHAIN_ID, {"nonfinite": served, model_id: served}, ("vanilla",), gate, store)
    return Node(TestClient(create_app(ctx)), model, store, manifest)


def paid_request(node: Node, raw_input: Any) -> tuple[Any, Any]:
    """Pay the node's 402 (asked with a valid input) the way the client SDK does, then send
    `raw_input`; (authorisation, HTTP response)."""
    unpaid = node.client.post("/v1/infer", json={"model": "nonfinite", "input": INPUT})
    assert unpaid.status_code == 402, unpaid.text
    auth, header = sign_payment(CLIENT, PaymentOffer.from_402(unpaid.json(), "nonfinite", "vanilla"), PRICE)
    body = {"model": "nonfinite", "input": raw_input}
    return auth, node.client.post("/v1/infer", json=body, headers={"X-PAYMENT": header})


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_an_honest_answer_with_nan_and_infinities_passes_the_clients_check(tmp_path: Path, dtype: str) -> None:
    node = make_node(tmp_path, dtype)
    auth, response = paid_request(node, INPUT)
    assert response.status_code == 200, response.text
    assert b"null" not in response.content  # nothing is lost on the wire
    answer = orjson.loads(response.content)
    assert answer["output"] == {
        name: {"dtype": dtype, "shape": [1, 3], "data": data} for name, data in EXPECTED_WIRE.items()
    }

    signed = verify_answer(answer, INPUT, node.manifest.input_schema, NODE.address, auth)  # no ReceiptInvalid

    receipt = signed.receipt
    expected = {name: Tensor(dtype, (1, 3), values) for name, values in EXPECTED.items()}
    assert receipt.output_hash == tensors_hash(expected)
    assert (receipt.client, receipt.request_id, receipt.fee) == (CLIENT.address, auth.request_id, PRICE)
    stored = node.store.get(signed.id)
    assert stored is not None and stored.item.receipt.receipt.output_hash == receipt.output_hash
    assert node.store.unsettled_count() == 1


def test_the_runtime_nan_bit_pattern_does_not_change_the_hash(tmp_path: Path) -> None:
    """On x86, 0/0 and log/sqrt of a negative number give a negative quiet NaN (0xffc00000), which
    a client decoding "NaN" cannot know: the node's hash of the raw output must not depend on it."""
    node = make_node(tmp_path, "float32")
    outputs = node.model.run(node.model.prepare(INPUT))
    raw = node.model.session.run(None, {"x": np.asarray(INPUT, dtype=np.float32)})
    nan_bits = {int(b) for r in raw for b in np.asarray(r).view(np.uint32).ravel() if (b & 0x7FFFFFFF) > 0x7F800000}
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert 0xFFC00000 in nan_bits  # the runtime really produced a NaN the JSON cannot carry
    decoded = {name: Tensor("float32", (1, 3), values) for name, values in EXPECTED.items()}
    assert tensors_hash(outputs) == tensors_hash(decoded)
    assert all(struct.unpack("<3I", t.pack())[EXPECTED[n].index(NAN)] == 0x7FC00000 for n, t in outputs.items())


def test_an_answer_with_the_old_null_encoding_fails_the_clients_check(tmp_path: Path) -> None:
    """What the attack looked like to the client: the same answer with null for each non-finite
    value is refused, so a client is never left holding an answer it cannot verify."""
    node = make_node(tmp_path, "float32")
    auth, response = paid_request(node, INPUT)
    answer = orjson.loads(response.content.replace(b'"NaN"', b"null").replace(b'"-Infinity"', b"null"))
    answer = orjson.loads(orjson.dumps(answer).replace(b'"Infinity"', b"null"))
    assert answer["output"]["ratio"]["data"] == [[None, None, None]]
    with pytest.raises(ReceiptInvalid, match="expected numbers for dtype float32"):
        verify_answer(answer, INPUT, node.manifest.input_schema, NODE.address, auth)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_input_is_a_422_and_queues_no_receipt(tmp_path: Path, value: Any) -> None:
    node = make_node(tmp_path, "float32")
    raw_input = {"x": {"dtype": "float32", "shape": [1, 3], "data": [[1.0, value, 0.0]]}}
    _, response = paid_request(node, raw_input)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["message"] == ("input.x: values must be finite float32 numbers (inputs cannot be NaN or infinite)")
    assert node.store.unsettled_count() == 0
