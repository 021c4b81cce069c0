"""Wire field patterns match whole strings; tensor values must fit their dtype."""

import pytest

from haca.types import fields
from haca.types.tensor import TensorError, parse_input


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (fields.name, "m1\n"),
        (fields.model_id, "sha256:" + "ab" * 32 + "\n"),
        (lambda v: fields.bytes32(v, "id"), "0x" + "00" * 32 + "\n"),
    ],
)
def test_a_trailing_newline_is_not_part_of_a_valid_field(check, value):
    with pytest.raises(ValueError):
        check(value)
    check(value[:-1])  # the same without it is fine


@pytest.mark.parametrize(
    ("dtype", "value"),
    [("float32", 1e39), ("float32", -3.5e38), ("int64", 1 << 63), ("int32", -(1 << 31) - 1), ("uint8", 256)],
)
def test_values_outside_the_dtype_are_refused(dtype, value):
    with pytest.raises(TensorError, match=dtype):
        parse_input([[value]], {"x": (dtype, (1, 1))})


def test_values_at_the_dtype_limits_are_accepted():
    parse_input([[3.4028234663852886e38]], {"x": ("float32", (1, 1))})
    parse_input([[(1 << 63) - 1]], {"x": ("int64", (1, 1))})
    parse_input([[255]], {"x": ("uint8", (1, 1))})
