"""What a zkml answer's public instances must say about the input the client sent and the output
it got back — checked off chain by the client, in field elements, before any proof exists.

EZKL's public row is the input commitment (for a hashed input: the Poseidon hash of the input
quantized at the circuit's input scale; for a public input: the quantized input itself) followed by
the quantized outputs. The input part is always checked: a circuit whose instances do not bind the
input (a private input; the chain refuses to register one) is refused here too. A zkml answer's output
is those outputs dequantized at the circuit's output scales (as float32), so it matches the
instances exactly: the receipt's instance commitment then binds the very answer the client holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from haca.proofs.receipt import EvidenceError
from haca.proofs.zk.proof import Instances


class CircuitFacts(Protocol):
    """What a circuit's settings say is public, and at what scales: a manifest's CircuitRecord, or
    a node's compiled Circuit."""

    @property
    def input_visibility(self) -> str: ...
    @property
    def output_visibility(self) -> str: ...
    @property
    def input_scales(self) -> tuple[int, ...]: ...
    @property
    def output_scales(self) -> tuple[int, ...]: ...


def _felts(values: Sequence[float], scale: int) -> list[str]:
    import ezkl

    return [str(ezkl.float_to_felt(float(v), scale, ezkl.PyInputType.F32)) for v in values]


def input_commitment(inputs: Sequence[Sequence[float]], input_scales: Sequence[int]) -> list[str]:
    """The Poseidon hash EZKL puts first in the instances of a circuit with a hashed input."""
    import ezkl

    felts = [f for values, scale in zip(inputs, input_scales, strict=True) for f in _felts(values, scale)]
    return [str(h) for h in ezkl.poseidon_hash(felts)]


def expected_input(inputs: Sequence[Sequence[float]], circuit: CircuitFacts) -> list[str]:
    """The felts a circuit's public row starts with for this input; EvidenceError for a circuit
    whose instances do not bind the input."""
    visibility = circuit.input_visibility
    if visibility == "hashed":
        return input_commitment(inputs, circuit.input_scales)
    if visibility == "public":
        scales = circuit.input_scales
        return [f for values, scale in zip(inputs, scales, strict=True) for f in _felts(values, scale)]
    raise EvidenceError(f"the circuit's input is {visibility!r}: its proof does not bind the input sent")


def dequantized_outputs(instances: Instances, circuit: CircuitFacts, sizes: Sequence[int]) -> list[np.ndarray]:
    """The float32 outputs the public instances stand for (the last `sum(sizes)` felts, after the
    input part), one array per output of `sizes` elements each."""
    import ezkl

    (row,) = instances
    start = len(row) - sum(sizes)
    if start < 0 or (circuit.input_visibility == "hashed" and start != 1):
        raise EvidenceError(f"the instances hold {len(row)} field elements; the model answers {sum(sizes)} outputs")
    felts = row[start:]
    out, offset = [], 0
    for size, scale in zip(sizes, circuit.output_scales, strict=True):
        values = [ezkl.felt_to_float(f, scale) for f in felts[offset : offset + size]]
        out.append(np.asarray(values, dtype=np.float32))
        offset += size
    return out


def check_answer_instances(
    instances: Instances,
    circuit: CircuitFacts,
    inputs: Sequence[Sequence[float]],
    outputs: Sequence[np.ndarray],
) -> None:
    """EvidenceError unless the instances commit to this input and stand for exactly these outputs."""
    if len(instances) != 1:
        raise EvidenceError("a zkml answer carries one row of public instances")
    if circuit.output_visibility != "public":
        raise EvidenceError(f"the circuit's output is {circuit.output_visibility!r}: its proof does not show it")
    expected = expected_input(inputs, circuit)
    sizes = [int(np.asarray(o).size) for o in outputs]
    if len(instances[0]) != len(expected) + sum(sizes) or list(instances[0][: len(expected)]) != expected:
        raise EvidenceError("the instances commit to another input than the one sent")
    for got, want in zip(outputs, dequantized_outputs(instances, circuit, sizes), strict=True):
        if not np.array_equal(np.asarray(got, dtype=np.float32).reshape(-1), want):
            raise EvidenceError("the output is not what the instances dequantize to")
