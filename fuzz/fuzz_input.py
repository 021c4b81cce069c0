"""Fuzz a node's input parsing: arbitrary JSON against a model schema parses or raises TensorError.

Seeds: inputs each schema takes, as nested lists and as {"dtype", "shape", "data"} (FuzzedDataProvider
reads the schema's index from the last byte, and a first byte 1 makes the text ASCII)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import atheris
import fuzzlib

with atheris.instrument_imports(include=["haca"]):
    from haca.types.tensor import TensorError, parse_input

SCHEMAS: list[dict[str, tuple[str, tuple[int, ...]]]] = [
    {"input": ("float32", (-1, 4))},
    {"input": ("float32", (1, 1, 8, 8))},
    {"a": ("int64", (2,)), "b": ("bool", (-1,))},
]


@atheris.instrument_func
def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    schema = SCHEMAS[fdp.ConsumeIntInRange(0, len(SCHEMAS) - 1)]
    try:
        value = json.loads(fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes()))
    except (ValueError, RecursionError):
        return
    try:
        tensors = parse_input(value, schema)
    except TensorError:
        return
    assert set(tensors) == set(schema)


def seeds() -> Iterator[bytes]:
    inputs: list[tuple[int, Any]] = [
        (0, [[1.0, 2.0, 3.0, 4.0], [0.5, -1.5, 1e-3, 2e10]]),
        (0, {"input": {"dtype": "float32", "shape": [1, 4], "data": [[1, 2, 3, 4]]}}),
        (1, [[[[float(i + j) for i in range(8)] for j in range(8)]]]),
        (2, {"a": [1, 2], "b": [True, False, True]}),
        (2, {"a": {"dtype": "int64", "shape": [2], "data": [7, -7]}, "b": []}),
    ]
    for index, value in inputs:
        yield b"\x01" + json.dumps(value).encode() + bytes([index])


if __name__ == "__main__":
    fuzzlib.main("input", test_one_input, seeds)
