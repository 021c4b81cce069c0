"""take_frames: the synchronous frame splitter behind the ABCI connection, over any chunking."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haca.chain.abci.framing import MAX_MESSAGE_BYTES, FramingError, encode_frame, encode_uvarint, take_frames


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8), st.lists(st.integers(1, 64), min_size=1, max_size=30))
def test_frames_come_out_whole_and_in_order_however_the_stream_is_cut(payloads, cuts):
    stream = b"".join(encode_frame(p) for p in payloads)
    buffer, out, pos = bytearray(), [], 0
    for cut in cuts * (len(stream) // max(1, sum(cuts)) + 1):
        if pos >= len(stream):
            break
        buffer += stream[pos : pos + cut]
        pos += cut
        out += take_frames(buffer)
    buffer += stream[pos:]
    out += take_frames(buffer)
    assert out == payloads and not buffer


def test_oversize_prefix_raises_with_the_good_frames_before_it():
    buffer = bytearray(encode_frame(b"ok") + encode_uvarint(MAX_MESSAGE_BYTES + 1))
    with pytest.raises(FramingError) as error:
        take_frames(buffer)
    assert error.value.frames == [b"ok"]


def test_overlong_length_prefix_is_refused():
    with pytest.raises(FramingError, match="10 bytes"):
        take_frames(bytearray(b"\x80" * 11))
