"""Non-finite tensor values on the wire: NaN and ±inf are written as "NaN", "Infinity" and
"-Infinity", read back for outputs, refused in inputs, and every NaN hashes as one canonical NaN."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haca.runtime.onnx import to_tensor
from haca.types.tensor import (
    Tensor,
    TensorError,
    parse_input,
    tensor_from_json,
    tensors_from_json,
    tensors_hash,
    tensors_to_json,
)

NAN32 = 0x7FC00000
NAN64 = 0x7FF8000000000000


def from_bits32(bits: int) -> float:
    return float(struct.unpack("<f", struct.pack("<I", bits))[0])


def from_bits64(bits: int) -> float:
    return float(struct.unpack("<d", struct.pack("<Q", bits))[0])


def wire(tensor: Tensor) -> Any:
    """What a client gets: the node's JSON through orjson, as the node sends it."""
    return orjson.loads(orjson.dumps({"y": tensor.to_json()}))["y"]


def same_values(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Equal value by value, -0.0 apart from 0.0, any NaN equal to any NaN."""
    return len(a) == len(b) and all(
        (math.isnan(x) and math.isnan(y)) or (x == y and math.copysign(1, x) == math.copysign(1, y))
        for x, y in zip(a, b, strict=True)
    )


# Every bit pattern, so NaNs of any sign and payload (quiet and signalling), infinities, -0.0 and
# subnormals all come up, plus the special values on their own.
SPECIAL = [math.nan, math.inf, -math.inf, -0.0, 0.0]
FLOAT32 = st.one_of(st.integers(0, (1 << 32) - 1).map(from_bits32), st.sampled_from(SPECIAL), st.floats(width=32))
FLOAT64 = st.one_of(st.integers(0, (1 << 64) - 1).map(from_bits64), st.sampled_from(SPECIAL), st.floats())


@st.composite
def float_tensors(draw: st.DrawFn) -> Tensor:
    dtype = draw(st.sampled_from(["float32", "float64"]))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    values = draw(
        st.lists(FLOAT32 if dtype == "float32" else FLOAT64, min_size=math.prod(shape), max_size=math.prod(shape))
    )
    return Tensor(dtype, shape, tuple(values))


@settings(max_examples=400, deadline=None)
@given(float_tensors())
def test_any_float_tensor_round_trips_through_orjson_with_the_same_hash(tensor: Tensor) -> None:
    decoded = tensor_from_json(wire(tensor))
    assert (decoded.dtype, decoded.shape) == (tensor.dtype, tensor.shape)
    assert same_values(decoded.values, tensor.values)
    assert tensors_hash({"y": decoded}) == tensors_hash({"y": tensor})
    assert tensors_from_json(orjson.loads(orjson.dumps(tensors_to_json({"y": tensor}))), "output") == {"y": decoded}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), max_size=50))
def test_finite_values_pack_exactly_as_before(values: list[float]) -> None:
    tensor = Tensor("float32", (len(values),), tuple(values))
    assert tensor.pack() == struct.pack(f"<{len(values)}f", *values)
    assert tensor.to_json()["data"] == values


def test_non_finite_values_are_written_as_strings_and_nothing_else_is() -> None:
    tensor = Tensor("float32", (2, 3), (math.nan, math.inf, -math.inf, -0.0, 1.5, from_bits32(0xFFC00000)))
    assert tensor.to_json() == {
        "dtype": "float32",
        "shape": [2, 3],
        "data": [["NaN", "Infinity", "-Infinity"], [-0.0, 1.5, "NaN"]],
    }
    assert orjson.dumps(tensor.to_json()["data"]) == b'[["NaN","Infinity","-Infinity"],[-0.0,1.5,"NaN"]]'
    assert Tensor("float64", (), (-math.inf,)).to_json()["data"] == "-Infinity"


@pytest.mark.parametrize(
    ("dtype", "bits", "canonical", "unpack"),
    [
        ("float32", [0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF, 0x7FC12345], NAN32, from_bits32),
        (
            "float64",
            [0x7FF8000000000000, 0xFFF8000000000000, 0x7FF0000000000001, 0xFFFFFFFFFFFFFFFF, 0x7FF8DEADBEEF0000],
            NAN64,
            from_bits64,
        ),
    ],
)
def test_every_nan_packs_as_the_one_canonical_quiet_nan(
    dtype: str, bits: list[int], canonical: int, unpack: Callable[[int], float]
) -> None:
    code, width = ("<I", 4) if dtype == "float32" else ("<Q", 8)
    nans = [unpack(b) for b in bits]
    assert all(math.isnan(n) for n in nans)
    packed = Tensor(dtype, (len(nans) + 1,), (*nans, 2.0)).pack()
    words = [struct.unpack(code, packed[i : i + width])[0] for i in range(0, len(packed), width)]
    assert words[:-1] == [canonical] * len(nans)
    assert packed[-width:] == struct.pack("<f" if dtype == "float32" else "<d", 2.0)
    hashes = {tensors_hash({"y": Tensor(dtype, (1,), (n,))}) for n in nans}
    assert hashes == {tensors_hash({"y": Tensor(dtype, (1,), (math.nan,))})}


def test_infinities_and_negative_zero_keep_their_own_hash() -> None:
    hashes = {tensors_hash({"y": Tensor("float32", (1,), (v,))}) for v in (math.inf, -math.inf, 0.0, -0.0, math.nan)}
    assert len(hashes) == 5


def test_numpy_nans_of_either_sign_hash_like_the_decoded_json() -> None:
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.array([0.0, 1.0, -1.0, -1.0], dtype=np.float32) / np.array([0.0, 0.0, 0.0, 1.0], dtype=np.float32)
        root = np.sqrt(np.array([-1.0], dtype=np.float32))
    negative_nan = np.array([NAN32 | 0x80000000], dtype=np.uint32).view(np.float32)
    array = np.concatenate([out, negative_nan, root]).reshape(2, 3)
    tensor = to_tensor(array)
    assert math.copysign(1, tensor.values[4]) == -1  # a negative NaN really reached the tensor
    decoded = tensor_from_json(wire(tensor))
    assert wire(tensor)["data"] == [["NaN", "Infinity", "-Infinity"], [-1.0, "NaN", "NaN"]]
    assert tensors_hash({"y": decoded}) == tensors_hash({"y": tensor})
    for dtype in ("float32", "float64"):
        t = to_tensor(array.astype(dtype))
        assert tensors_hash({"y": tensor_from_json(wire(t))}) == tensors_hash({"y": t})


def test_float32_infinity_is_accepted_but_a_finite_value_beyond_float32_is_not() -> None:
    assert tensor_from_json({"dtype": "float32", "shape": [2], "data": ["Infinity", "-Infinity"]}).values == (
        math.inf,
        -math.inf,
    )
    assert Tensor("float32", (1,), (math.inf,)).pack() == struct.pack("<I", 0x7F800000)
    for value in (1e39, -3.5e38, 10**400):
        with pytest.raises(TensorError, match="float32"):
            tensor_from_json({"dtype": "float32", "shape": [1], "data": [value]})


@pytest.mark.parametrize("value", [None, "nan", "inf", "+Infinity", "-NaN", "1.5", "", True])
def test_only_the_three_names_stand_for_non_finite_values(value: Any) -> None:
    with pytest.raises(TensorError, match="expected numbers for dtype float64"):
        tensor_from_json({"dtype": "float64", "shape": [1], "data": [value]})


@pytest.mark.parametrize("dtype", ["int64", "int32", "uint8"])
def test_integer_tensors_have_no_non_finite_values(dtype: str) -> None:
    with pytest.raises(TensorError, match=f"expected numbers for dtype {dtype}"):
        tensor_from_json({"dtype": dtype, "shape": [1], "data": ["NaN"]})
    with pytest.raises(TensorError, match=dtype):
        tensor_from_json({"dtype": dtype, "shape": [1], "data": [math.inf]})


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("as_tensor", [False, True], ids=["nested_list", "tensor_json"])
def test_inputs_must_be_finite(value: Any, as_tensor: bool) -> None:
    raw: Any = [[1.0, value]]
    if as_tensor:
        raw = {"x": {"dtype": "float32", "shape": [1, 2], "data": raw}}
    with pytest.raises(TensorError, match=r"input\.x: values must be finite float32 numbers"):
        parse_input(raw, {"x": ("float32", (1, 2))})
    finite = parse_input([[1.0, -0.0]], {"x": ("float32", (1, 2))})["x"]
    assert finite.values == (1.0, -0.0) and math.copysign(1, finite.values[1]) == -1
