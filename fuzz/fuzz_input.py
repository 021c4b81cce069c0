"""Fuzz a node's input parsing: arbitrary JSON against a model schema parses or raises TensorError."""

import json
import sys

import atheris

with atheris.instrument_imports():
    from haca.types.tensor import TensorError, parse_input

SCHEMAS = [
    {"input": ("float32", (-1, 4))},
    {"input": ("float32", (1, 1, 8, 8))},
    {"a": ("int64", (2,)), "b": ("bool", (-1,))},
]


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


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
