"""Input/output schemas of an ONNX model, in the registry's shape: {tensor name: {"dtype", "shape"}}.

Dtypes are the wire tensor dtypes (`haca.types.tensor.DTYPES`); a dynamic or symbolic dimension is -1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from haca.types.registry import parse_schema

# onnx.TensorProto.DataType values (stable in the ONNX spec), so this table needs no onnx import.
ONNX_DTYPES: dict[int, str] = {
    1: "float32",  # FLOAT
    11: "float64",  # DOUBLE
    7: "int64",  # INT64
    6: "int32",  # INT32
    2: "uint8",  # UINT8
    9: "bool",  # BOOL
}

Schema = dict[str, dict[str, Any]]


def onnx_schemas(model: Path | str | bytes | Any) -> tuple[Schema, Schema]:
    """(input_schema, output_schema) of an ONNX model given as a path, its bytes, or a ModelProto.
    ValueError for a file that is not ONNX, a tensor type the wire cannot carry, or a non-tensor
    input/output. Initializers listed as graph inputs (old exporters) are not inputs."""
    import onnx

    if isinstance(model, bytes):
        proto = _parse(model)
    elif isinstance(model, str | Path):
        proto = _parse(Path(model).read_bytes(), str(model))
    else:
        proto = model
    graph = proto.graph
    initializers = {init.name for init in graph.initializer}
    inputs = {v.name: _tensor_spec(v, onnx) for v in graph.input if v.name not in initializers}
    outputs = {v.name: _tensor_spec(v, onnx) for v in graph.output}
    return parse_schema(inputs, "input_schema"), parse_schema(outputs, "output_schema")


def _parse(data: bytes, where: str = "model") -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{where} is not an ONNX model: {exc}") from exc
    if not proto.graph.node and not proto.graph.output:
        raise ValueError(f"{where} is not an ONNX model: it has no graph")
    return proto


def _tensor_spec(value_info: Any, onnx: Any) -> dict[str, Any]:
    name = value_info.name
    kind = value_info.type.WhichOneof("value")
    if kind != "tensor_type":
        raise ValueError(f"tensor {name!r}: only tensor inputs and outputs are supported, not {kind}")
    tensor_type = value_info.type.tensor_type
    dtype = ONNX_DTYPES.get(tensor_type.elem_type)
    if dtype is None:
        type_name = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
        raise ValueError(f"tensor {name!r}: element type {type_name} is not one of {sorted(ONNX_DTYPES.values())}")
    if not tensor_type.HasField("shape"):
        raise ValueError(f"tensor {name!r}: the model does not declare its rank (no shape)")
    shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor_type.shape.dim]
    return {"dtype": dtype, "shape": shape}
