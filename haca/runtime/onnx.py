"""ONNX models through onnxruntime: loaded once, kept warm, inputs checked against the graph.

Inputs arrive as JSON: a nested list for a single-input model, or {input name: nested list or
{"dtype", "shape", "data"}}. They become named `Tensor`s (hashed into the receipt) and numpy
arrays (fed to the session). Inputs must be finite; outputs are whatever the session computed,
NaN and infinities included, which `haca.types.tensor` writes and hashes faithfully (every NaN,
whatever its sign or payload, as the canonical quiet NaN).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from haca.types.tensor import Tensor, TensorError, parse_input

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


class InvalidInput(ValueError):
    """The request's input does not fit the model's inputs."""


@dataclass(frozen=True)
class TensorSpec:
    dtype: str
    shape: tuple[int, ...]  # -1 = any size

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape)}


def available_providers() -> list[str]:
    """CUDA first where onnxruntime has it, CPU always."""
    have = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]


class OnnxModel:
    def __init__(self, source: Path | bytes, providers: list[str] | None = None) -> None:
        """`source`: the model file, or its bytes (an enclave loads the very bytes it hashed)."""
        options = ort.SessionOptions()
        options.log_severity_level = 3
        model = source if isinstance(source, bytes) else str(source)
        self.session = ort.InferenceSession(model, options, providers=providers or available_providers())
        self.inputs = {i.name: _spec(i) for i in self.session.get_inputs()}
        self.outputs = {o.name: _spec(o) for o in self.session.get_outputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def provider(self) -> str:
        return str(self.session.get_providers()[0])

    def prepare(self, raw: Any) -> dict[str, Tensor]:
        """Parse JSON input into named tensors matching the graph's inputs."""
        try:
            return parse_input(raw, {name: (spec.dtype, spec.shape) for name, spec in self.inputs.items()})
        except TensorError as exc:
            raise InvalidInput(str(exc)) from exc

    def run(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        feed = {name: np.asarray(t.values, dtype=t.dtype).reshape(t.shape) for name, t in inputs.items()}
        results = self.session.run(self.output_names, feed)
        return {name: to_tensor(np.asarray(array)) for name, array in zip(self.output_names, results, strict=True)}


def to_tensor(array: np.ndarray) -> Tensor:
    """A session output as a Tensor; non-finite values are kept as they are."""
    dtype = str(array.dtype)
    if dtype not in ("float32", "float64", "int64", "int32", "uint8", "bool"):
        raise ValueError(f"unsupported output dtype {dtype}")
    return Tensor(dtype, tuple(int(d) for d in array.shape), tuple(array.ravel().tolist()))


def _spec(meta: Any) -> TensorSpec:
    dtype = _ORT_DTYPES.get(meta.type)
    if dtype is None:
        raise ValueError(f"unsupported ONNX tensor type {meta.type} for {meta.name}")
    return TensorSpec(dtype, tuple(d if isinstance(d, int) and d > 0 else -1 for d in meta.shape))
