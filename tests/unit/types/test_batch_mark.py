"""A batch mark is written by its own fast encoder: the same bytes as the canonical encoder, always."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from haca.types.batch import BatchMark
from haca.types.encoding import canonical_json

HEX32 = st.binary(min_size=32, max_size=32).map(lambda b: "0x" + b.hex())


@given(HEX32, st.integers(0, 2**63), st.integers(0, 2**31), HEX32, st.sampled_from(["settled", "verified"]))
def test_the_fast_encoding_is_the_canonical_json(batch, height, index, receipt_id, status) -> None:
    mark = BatchMark(batch, height, index, receipt_id, status)
    assert mark.canonical() == canonical_json(mark.to_json())
    assert BatchMark.from_json(mark.to_json()) == mark
