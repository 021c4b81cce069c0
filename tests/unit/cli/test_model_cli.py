"""`haca model`: ONNX schema extraction, hub resolution, and the JSON shapes that need no chain.
Registration against a live chain is covered by the integration tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from haca.cli.model import manifest_json, model_app, parse_modes, resolve_hub
from haca.client.config import ClientConfig, KeyStore
from haca.hub.api import create_app
from haca.hub.quota import UploadLedger, blob_charge
from haca.hub.schema import ONNX_DTYPES, onnx_schemas
from haca.hub.store import BlobStore
from haca.types.registry import ModelManifest
from tests.unit.hub.conftest import STRANGER, UPLOADER
from tests.unit.hub.server import serve

runner = CliRunner()


def tiny_model(
    inputs: list[onnx.ValueInfoProto] | None = None, outputs: list[onnx.ValueInfoProto] | None = None
) -> onnx.ModelProto:
    """Y = softmax(X @ W + B) with a symbolic batch dimension, W and B as initializers that an old
    exporter also listed as graph inputs; plus an int64 argmax output."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], [0.1] * 12)
    b = helper.make_tensor("B", TensorProto.FLOAT, [3], [0.0] * 3)
    nodes = [
        helper.make_node("Gemm", ["X", "W", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        inputs
        or [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 3]),
            helper.make_tensor_value_info("B", TensorProto.FLOAT, [3]),
        ],
        outputs
        or [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        initializer=[w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), str(path))
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("HACA_HOME", str(home))
    return home


def run_json(*args: str) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(model_app, [*args, "--json"])
    # a command that fails exits through SystemExit (its code); one that succeeds raises nothing
    expected = type(None) if result.exit_code == 0 else SystemExit
    assert type(result.exception) is expected, result.exception
    return result.exit_code, json.loads(result.stdout)


# --- schema extraction --------------------------------------------------------------------------


def test_schema_of_a_tiny_model(model_file: Path) -> None:
    onnx.checker.check_model(onnx.load(str(model_file)))
    inputs, outputs = onnx_schemas(model_file)
    assert inputs == {"X": {"dtype": "float32", "shape": [-1, 4]}}  # initializers are not inputs
    assert outputs == {
        "probabilities": {"dtype": "float32", "shape": [-1, 3]},
        "label": {"dtype": "int64", "shape": [-1]},
    }
    assert onnx_schemas(model_file.read_bytes()) == (inputs, outputs)
    assert onnx_schemas(str(model_file)) == (inputs, outputs)
    assert onnx_schemas(tiny_model()) == (inputs, outputs)


def test_dtype_table_matches_onnx() -> None:
    assert ONNX_DTYPES == {
        TensorProto.FLOAT: "float32",
        TensorProto.DOUBLE: "float64",
        TensorProto.INT64: "int64",
        TensorProto.INT32: "int32",
        TensorProto.UINT8: "uint8",
        TensorProto.BOOL: "bool",
    }


@pytest.mark.parametrize("elem", [TensorProto.DOUBLE, TensorProto.INT32, TensorProto.UINT8, TensorProto.BOOL])
def test_every_supported_dtype(elem: int) -> None:
    model = tiny_model(inputs=[helper.make_tensor_value_info("X", elem, [2, "n", 0])])
    inputs, _ = onnx_schemas(model)
    assert inputs == {"X": {"dtype": ONNX_DTYPES[elem], "shape": [2, -1, -1]}}


def test_unsupported_dtype_is_a_clear_error() -> None:
    model = tiny_model(inputs=[helper.make_tensor_value_info("X", TensorProto.FLOAT16, [1, 4])])
    with pytest.raises(ValueError, match=r"X.*FLOAT16"):
        onnx_schemas(model)


def test_non_tensor_output_is_an_error() -> None:
    seq = helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, [3])
    with pytest.raises(ValueError, match=r"seq.*only tensor"):
        onnx_schemas(tiny_model(outputs=[seq]))


def test_unknown_rank_is_an_error() -> None:
    model = tiny_model(inputs=[helper.make_tensor_value_info("X", TensorProto.FLOAT, None)])
    with pytest.raises(ValueError, match="rank"):
        onnx_schemas(model)


def test_not_onnx_is_an_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xfe definitely not protobuf \x00\x01")
    with pytest.raises(ValueError, match="not an ONNX model"):
        onnx_schemas(junk)
    with pytest.raises(ValueError, match="not an ONNX model"):
        onnx_schemas(b"")


# --- helpers --------------------------------------------------------------------------------------


def test_parse_modes() -> None:
    assert parse_modes("vanilla") == ("vanilla",)
    assert parse_modes("tee, vanilla,zkml") == ("tee", "vanilla", "zkml")
    for bad in ("", "gpu", "vanilla,vanilla"):
        with pytest.raises(ValueError):
            parse_modes(bad)


def test_manifest_json_renames_model_id_and_prices_as_int() -> None:
    manifest = {
        "name": "iris",
        "model_id": "sha256:" + "a" * 64,
        "input_schema": {"X": {"dtype": "float32", "shape": [-1, 4]}},
        "output_schema": {"Y": {"dtype": "int64", "shape": [-1]}},
        "modes": ["vanilla"],
        "price": "1000",
        "price_unit": "row",
        "max_rows": 32,
        "version": 2,
        "owner": "0x" + "1" * 40,
        "height": 9,
        "effective_height": 29,
    }
    shown = manifest_json(ModelManifest.from_json(manifest))
    assert shown["id"] == manifest["model_id"] and "model_id" not in shown
    assert shown["price"] == 1000 and shown["version"] == 2 and shown["height"] == 9
    assert (shown["price_unit"], shown["max_rows"], shown["effective_height"]) == ("row", 32, 29)
    assert list(shown)[:5] == ["id", "name", "version", "modes", "price"]


def test_resolve_hub_order(home: Path) -> None:
    assert resolve_hub("http://flag:1", home) == "http://flag:1"
    ClientConfig("c", ["http://127.0.0.1:1"], extra={"hub": "http://config:2"}).save(home)
    assert resolve_hub("", home) == "http://config:2"
    assert resolve_hub("http://flag:1", home) == "http://flag:1"


# --- CLI ------------------------------------------------------------------------------------------


def test_upload_without_a_hub_is_a_json_error(home: Path, model_file: Path) -> None:
    code, answer = run_json("upload", str(model_file))
    assert code == 1
    assert answer["error"]["code"] == "no_hub" and "no hub configured" in answer["error"]["message"]
    ClientConfig("c", ["http://127.0.0.1:1"]).save(home)  # a config without extra.hub
    code, answer = run_json("upload", str(model_file), "--home", str(home))
    assert code == 1 and answer["error"]["code"] == "no_hub"


def test_upload_without_a_hub_is_one_line_in_human_mode(home: Path, model_file: Path) -> None:
    result = runner.invoke(model_app, ["upload", str(model_file)])
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0 and "no hub configured" in result.stderr


def test_create_without_a_hub_fails_before_touching_the_chain(home: Path, model_file: Path) -> None:
    ClientConfig("c", ["http://127.0.0.1:1"]).save(home)  # nothing listens there
    code, answer = run_json(
        "create", "--name", "tiny", "--file", str(model_file), "--modes", "vanilla", "--price", "10"
    )
    assert code == 1 and answer["error"]["code"] == "no_hub"


def test_create_with_bad_modes_is_a_json_error(home: Path, model_file: Path) -> None:
    ClientConfig("c", ["http://127.0.0.1:1"], extra={"hub": "http://127.0.0.1:1"}).save(home)
    code, answer = run_json("create", "--name", "tiny", "--file", str(model_file), "--modes", "gpu", "--price", "1")
    assert code == 1 and "modes" in answer["error"]["message"]
    code, answer = run_json(
        "create", "--name", "Bad Name", "--file", str(model_file), "--modes", "vanilla", "--price", "1"
    )
    assert code == 1 and "name" in answer["error"]["message"]


def test_show_with_a_bad_reference_is_a_json_error(home: Path) -> None:
    for ref in ("Bad", "iris@x", "iris@0"):
        code, answer = run_json("show", ref)
        assert code == 1 and answer["error"]["message"]


def signing_hub(tmp_path: Path) -> tuple[BlobStore, UploadLedger]:
    """A hub store whose only uploader is UPLOADER."""
    store = BlobStore(tmp_path / "hub")
    return store, UploadLedger(store.root, {UPLOADER.address: 1 << 20})


def test_upload_to_a_hub(home: Path, model_file: Path, tmp_path: Path) -> None:
    KeyStore(home).add("uploader", UPLOADER)
    store, ledger = signing_hub(tmp_path)
    with serve(create_app(store, ledger)) as url:
        code, answer = run_json("upload", str(model_file), "--hub", url, "--from", "uploader")
        assert code == 0
        assert answer == {"id": store.list()[0].id, "size": model_file.stat().st_size}
        ClientConfig("c", ["http://127.0.0.1:1"], default_key="uploader", extra={"hub": url}).save(home)
        code, again = run_json("upload", str(model_file))  # the hub and the key from the home's config
        assert code == 0 and again == answer
        human = runner.invoke(model_app, ["upload", str(model_file)])
        assert human.exit_code == 0 and answer["id"] in human.stdout
    assert ledger.used(UPLOADER.address) == blob_charge(model_file.stat().st_size)  # charged once


def test_upload_signed_by_a_non_uploader_is_refused(home: Path, model_file: Path, tmp_path: Path) -> None:
    KeyStore(home).add("stranger", STRANGER)
    store, ledger = signing_hub(tmp_path)
    with serve(create_app(store, ledger)) as url:
        code, answer = run_json("upload", str(model_file), "--hub", url, "--from", "stranger")
    assert (code, answer["error"]["code"]) == (1, "uploader_not_allowed")
    assert store.list() == []


def test_upload_without_a_key_is_refused_before_contacting_the_hub(home: Path, model_file: Path) -> None:
    code, answer = run_json("upload", str(model_file), "--hub", "http://127.0.0.1:1")
    assert (code, answer["error"]["code"]) == (1, "no_key")


def test_upload_to_an_unreachable_hub_is_a_json_error(home: Path, model_file: Path) -> None:
    KeyStore(home).add("uploader", UPLOADER)
    code, answer = run_json("upload", str(model_file), "--hub", "http://127.0.0.1:1", "--from", "uploader")
    assert code == 1 and answer["error"]["code"] == "hub_unavailable"
