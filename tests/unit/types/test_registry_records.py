"""The registry's records (ModelManifest, CircuitRecord, NodeRegistration): what the chain stores
is what `to_json` writes, byte for byte the shape it had as a dict, and `from_json` refuses a
malformed answer naming the field, as message decoding does."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from haca.types.encoding import canonical_json
from haca.types.registry import (
    CircuitRecord,
    ModelManifest,
    MsgRegisterModel,
    MsgRegisterNode,
    NodeRegistration,
    PriceUnit,
)

OWNER = "0x" + "ab" * 20
IRIS = MsgRegisterModel(
    "iris",
    "sha256:" + "1" * 64,
    {"X": {"dtype": "float32", "shape": [-1, 4]}},
    {"Y": {"dtype": "int64", "shape": [-1]}},
    ("tee", "vanilla", "zkml"),
    1000,
    "row",
    32,
    {"settings_hash": "sha256:" + "2" * 64, "vk_hash": "sha256:" + "3" * 64},
)
CIRCUIT = CircuitRecord(
    "sha256:" + "2" * 64, "sha256:" + "3" * 64, 15, "hashed", "public", (7,), (7, 7), "sha256:" + "4" * 64
)


def test_a_manifest_is_stored_as_the_message_plus_its_record_fields() -> None:
    manifest = ModelManifest.registered(IRIS, CIRCUIT, 2, OWNER, 9, 29)
    # the dict the keeper stored before manifests were typed: the message, the circuit in full, the record
    before = {
        **IRIS.to_json(),
        "circuit": {**(IRIS.circuit or {}), **CIRCUIT.to_json()},
        "version": 2,
        "owner": OWNER,
        "height": 9,
        "effective_height": 29,
    }
    assert canonical_json(manifest.to_json()) == canonical_json(before)
    assert ModelManifest.from_json(manifest.to_json()) == manifest
    assert manifest.price_unit is PriceUnit.ROW and manifest.fee(3) == 3000


def test_an_llm_manifest_round_trips_with_its_completion_price() -> None:
    llm = MsgRegisterModel("smollm2", "sha256:" + "5" * 64, {}, {}, ("vanilla",), 2, "token", 2048, None, "gguf", 7)
    manifest = ModelManifest.registered(llm, None, 1, OWNER, 3, 3)
    assert ModelManifest.from_json(manifest.to_json()) == manifest
    assert (manifest.kind, manifest.completion_price, manifest.circuit) == ("gguf", 7, None)


def test_a_manifest_registered_before_kinds_existed_reads_as_onnx() -> None:
    doc = ModelManifest.registered(dataclasses.replace(IRIS, modes=("vanilla",), circuit=None), None, 1, OWNER, 1, 1)
    old = {k: v for k, v in doc.to_json().items() if k not in ("kind", "completion_price")}
    assert ModelManifest.from_json(old).kind == "onnx"


def _stored() -> dict[str, Any]:
    return ModelManifest.registered(IRIS, CIRCUIT, 1, OWNER, 1, 1).to_json()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("owner"), r"manifest: missing fields \['owner'\]"),
        (lambda d: d.update(owner="nobody"), "owner: not an address"),
        (lambda d: d.update(version=0), "version: expected an integer from 1"),
        (lambda d: d.update(height=-1), "height: expected a block height"),
        (lambda d: d.update(price_unit="ounce"), "price_unit: expected one of"),
        (lambda d: d.update(circuit=None), "circuit: a zkml model names its circuit"),
        (lambda d: d["circuit"].update(input_visibility="secret"), "circuit.input_visibility: expected one of"),
        (lambda d: d["circuit"].update(logrows=True), "circuit.logrows: expected an integer from 1 to 28"),
        (lambda d: d["circuit"].update(output_scales=[1.5]), "circuit.output_scales: expected a list of integers"),
        (lambda d: d["circuit"].pop("srs_hash"), r"circuit: missing fields \['srs_hash'\]"),
        (lambda d: d.update(extra=1), r"unexpected fields \['extra'\]"),
    ],
)
def test_a_malformed_manifest_is_refused_naming_the_field(change: Any, message: str) -> None:
    doc = _stored()
    change(doc)
    with pytest.raises(ValueError, match=message):
        ModelManifest.from_json(doc)


def test_a_circuit_keeps_the_proving_artefacts_it_was_registered_with() -> None:
    full = dataclasses.replace(CIRCUIT, compiled_hash="sha256:" + "6" * 64, pk_hash="sha256:" + "7" * 64)
    assert set(full.ref()) == {"settings_hash", "vk_hash", "compiled_hash", "pk_hash"}
    assert CircuitRecord.from_json(full.to_json()) == full
    assert set(CIRCUIT.ref()) == {"settings_hash", "vk_hash"}


def test_a_node_registration_is_the_message_plus_address_and_height() -> None:
    msg = MsgRegisterNode("http://node.test", ("tee", "vanilla"), ("iris",), 5)
    node = NodeRegistration.registered(msg, OWNER, 12)
    assert canonical_json(node.to_json()) == canonical_json({**msg.to_json(), "address": OWNER, "height": 12})
    assert NodeRegistration.from_json(node.to_json()) == node
    with pytest.raises(ValueError, match=r"node: missing fields \['height'\]"):
        NodeRegistration.from_json({k: v for k, v in node.to_json().items() if k != "height"})
    with pytest.raises(ValueError, match="endpoint: expected an http"):
        NodeRegistration.from_json({**node.to_json(), "endpoint": "ftp://x"})
