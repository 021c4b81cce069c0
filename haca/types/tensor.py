"""Named tensors on the wire and their canonical hash (what receipts commit to).

JSON form: {name: {"dtype": "float32", "shape": [1, 4], "data": nested lists}}. The hash covers,
per tensor in name order, the name, dtype, shape and little-endian values, so a client can check
an output hash from the JSON alone (a float32 survives the float64 JSON round trip exactly).

Non-finite values: JSON has no numbers for them (orjson would write null), so in float tensors
`to_json` writes NaN, +inf and -inf as the strings "NaN", "Infinity" and "-Infinity" in place of
the number, and `tensor_from_json` reads them back; every other value (-0.0 included) stays a JSON
number. NaN has many bit patterns (x86 gives 0/0 a negative quiet NaN), and JSON keeps none of
them, so `Tensor.pack` hashes every NaN as the one positive quiet NaN (0x7fc00000 for float32,
0x7ff8000000000000 for float64): a node's hash of the runtime's output equals a client's hash of
the decoded JSON. That is the rule for outputs, which a model may produce. Inputs stay finite:
`parse_input` refuses non-finite values (as strings, or as NaN/Infinity literals a lenient JSON
parser lets through), since a request that needs them is almost surely a mistake and a proving
mode could not represent them.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Any

DTYPES = {"float32": "f", "float64": "d", "int64": "q", "int32": "i", "uint8": "B", "bool": "?"}
MAX_ELEMENTS = 1 << 22
MAX_RANK = 16
FLOAT32_MAX = 3.4028234663852886e38
FLOAT_DTYPES = ("float32", "float64")
NONFINITE_JSON = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}  # wire string -> value
_CANONICAL_NAN = {"f": struct.pack("<I", 0x7FC00000), "d": struct.pack("<Q", 0x7FF8000000000000)}
INT_RANGES = {"int64": (-(1 << 63), (1 << 63) - 1), "int32": (-(1 << 31), (1 << 31) - 1), "uint8": (0, 255)}


class TensorError(ValueError):
    """A tensor's JSON is malformed (wrong shape, dtype or values)."""


@dataclass(frozen=True)
class Tensor:
    dtype: str
    shape: tuple[int, ...]
    values: tuple[Any, ...]  # flat, row-major

    def to_json(self) -> dict[str, Any]:
        values = list(self.values)
        if self.dtype in FLOAT_DTYPES and self._maybe_nonfinite():
            values = [v if math.isfinite(v) else _nonfinite_json(v) for v in values]
        return {"dtype": self.dtype, "shape": list(self.shape), "data": _nest(values, self.shape)}

    def pack(self) -> bytes:
        """Little-endian values, with every NaN as the canonical quiet NaN."""
        code = DTYPES[self.dtype]
        packed = struct.pack(f"<{len(self.values)}{code}", *self.values)
        if code == "f":
            top = packed[3::4]  # sign and high exponent bits: 0x7f or 0xff in every inf and NaN
        elif code == "d":
            top = packed[7::8]
        else:
            return packed
        maybe = b"\x7f" in top or b"\xff" in top
        self.__dict__["_nonfinite"] = maybe  # to_json (the node calls it next) reuses it; frozen: no setattr
        return _canonical_nans(packed, self.values, code) if maybe else packed

    def _maybe_nonfinite(self) -> bool:
        """False only when every value is finite (a cheap test; True may still be all finite)."""
        cached = self.__dict__.get("_nonfinite")
        if cached is not None:
            return bool(cached)
        # a sum of finite values is never NaN (it can only overflow to one infinity)
        return not math.isfinite(sum(self.values))


def _nonfinite_json(value: float) -> str:
    return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"


def _canonical_nans(packed: bytes, values: tuple[Any, ...], code: str) -> bytes:
    nan = _CANONICAL_NAN[code]
    out = bytearray(packed)
    for i, value in enumerate(values):
        if value != value:
            out[i * len(nan) : (i + 1) * len(nan)] = nan
    return bytes(out)


def tensor_from_json(value: Any, field: str = "tensor", *, finite: bool = False) -> Tensor:
    """A tensor from its JSON form; `finite` refuses NaN and infinities (inputs), else they are
    read from their strings (outputs)."""
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data"}:
        raise TensorError(f"{field}: expected {{'dtype', 'shape', 'data'}}")
    dtype = value["dtype"]
    if dtype not in DTYPES:
        raise TensorError(f"{field}: dtype must be one of {sorted(DTYPES)}")
    shape = value["shape"]
    if isinstance(shape, list) and len(shape) > MAX_RANK:
        raise TensorError(f"{field}: rank {len(shape)} is above the limit of {MAX_RANK}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise TensorError(f"{field}: shape must be a list of non-negative integers")
    return Tensor(dtype, tuple(shape), tuple(flatten(value["data"], tuple(shape), dtype, field, finite=finite)))


def flatten(data: Any, shape: tuple[int, ...], dtype: str, field: str = "tensor", *, finite: bool = False) -> list[Any]:
    """Row-major values of nested lists `data`, checked against `shape` and `dtype` (and finite
    when `finite`; else "NaN", "Infinity" and "-Infinity" are read as those values)."""
    if len(shape) > MAX_RANK:
        raise TensorError(f"{field}: rank {len(shape)} is above the limit of {MAX_RANK}")
    if math.prod(shape) > MAX_ELEMENTS:
        raise TensorError(f"{field}: more than {MAX_ELEMENTS} elements")
    out: list[Any] = []
    _walk(data, shape, 0, dtype, field, finite, out)
    return out


def _walk(data: Any, shape: tuple[int, ...], depth: int, dtype: str, field: str, finite: bool, out: list[Any]) -> None:
    if depth == len(shape):
        out.append(_scalar(data, dtype, field, finite))
        return
    if not isinstance(data, list) or len(data) != shape[depth]:
        raise TensorError(f"{field}: data does not match shape {list(shape)} at depth {depth}")
    for item in data:
        _walk(item, shape, depth + 1, dtype, field, finite, out)


def _scalar(value: Any, dtype: str, field: str, finite: bool) -> Any:
    if dtype == "bool":
        if not isinstance(value, bool):
            raise TensorError(f"{field}: expected booleans")
        return value
    if dtype in FLOAT_DTYPES:
        return _float(value, dtype, field, finite)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TensorError(f"{field}: expected numbers for dtype {dtype}")
    if isinstance(value, float) and not value.is_integer():
        raise TensorError(f"{field}: expected integers for dtype {dtype}")
    low, high = INT_RANGES[dtype]
    if not low <= value <= high:
        raise TensorError(f"{field}: {value} is out of range for {dtype}")
    return int(value)


def _float(value: Any, dtype: str, field: str, finite: bool) -> float:
    if isinstance(value, str) and value in NONFINITE_JSON:
        value = NONFINITE_JSON[value]
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise TensorError(f"{field}: expected numbers for dtype {dtype}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float64
        raise TensorError(f"{field}: values must be finite {dtype} numbers") from None
    if not math.isfinite(number):
        if finite:
            raise TensorError(f"{field}: values must be finite {dtype} numbers (inputs cannot be NaN or infinite)")
        return number
    if dtype == "float32" and abs(number) > FLOAT32_MAX:
        raise TensorError(f"{field}: values must be finite {dtype} numbers")
    return number


def _nest(values: list[Any], shape: tuple[int, ...]) -> Any:
    if not shape:
        return values[0]
    if len(shape) == 1:
        return values
    step = math.prod(shape[1:])
    return [_nest(values[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def tensors_hash(tensors: dict[str, Tensor]) -> str:
    """0x-hex sha256 of the canonical binary form of named tensors."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        for part in (name.encode(), t.dtype.encode()):
            h.update(struct.pack(">I", len(part)) + part)
        h.update(struct.pack(f">I{len(t.shape)}Q", len(t.shape), *t.shape))
        h.update(t.pack())
    return "0x" + h.hexdigest()


def tensors_from_json(value: Any, field: str) -> dict[str, Tensor]:
    """Named tensors from JSON, non-finite values allowed (a model's outputs)."""
    if not isinstance(value, dict) or not value:
        raise TensorError(f"{field}: expected an object of named tensors")
    return {str(k): tensor_from_json(v, f"{field}.{k}") for k, v in value.items()}


def tensors_to_json(tensors: dict[str, Tensor]) -> dict[str, Any]:
    return {name: tensors[name].to_json() for name in sorted(tensors)}


def parse_input(raw: Any, schema: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, Tensor]:
    """Request input → named tensors, per a model's input schema {name: (dtype, shape with -1 = any)}.

    `raw` is a nested list (single-input models) or {name: nested list | {"dtype","shape","data"}};
    every value must be finite (see the module docstring).
    The node hashes what this returns into the receipt; a client recomputes it to check the receipt.
    """
    if isinstance(raw, list):
        if len(schema) != 1:
            raise TensorError(f"this model has inputs {sorted(schema)}: send an object by name")
        raw = {next(iter(schema)): raw}
    if not isinstance(raw, dict) or set(raw) != set(schema):
        raise TensorError(f"input must name exactly the model inputs {sorted(schema)}")
    return {name: _input_tensor(name, value, *schema[name]) for name, value in raw.items()}


def _input_tensor(name: str, value: Any, dtype: str, shape: tuple[int, ...]) -> Tensor:
    if isinstance(value, dict):
        tensor = tensor_from_json(value, f"input.{name}", finite=True)
        if tensor.dtype != dtype:
            raise TensorError(f"input.{name}: dtype {tensor.dtype}, the model takes {dtype}")
    else:
        got = nested_shape(value)
        if len(got) != len(shape):  # before flattening: a deeply nested input must not recurse
            raise TensorError(f"input.{name}: rank {len(got)}, the model takes rank {len(shape)}")
        tensor = Tensor(dtype, got, tuple(flatten(value, got, dtype, f"input.{name}", finite=True)))
    if len(tensor.shape) != len(shape) or any(w not in (-1, g) for w, g in zip(shape, tensor.shape, strict=True)):
        raise TensorError(f"input.{name}: shape {list(tensor.shape)}, the model takes {list(shape)}")
    return tensor


def nested_shape(value: Any) -> tuple[int, ...]:
    shape: list[int] = []
    while isinstance(value, list) and len(shape) <= MAX_RANK:
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def schema_from_json(schema: dict[str, Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """A manifest's {"name": {"dtype", "shape"}} as parse_input wants it."""
    return {name: (spec["dtype"], tuple(spec["shape"])) for name, spec in schema.items()}
