"""Fuzz the ABCI frame splitter: any stream, cut anywhere, yields frames or FramingError.

Seeds: streams of frames (empty, small, one with a two-byte length), the cut size in the last byte."""

from __future__ import annotations

from collections.abc import Iterator

import atheris
import fuzzlib

with atheris.instrument_imports(include=["haca"]):
    from haca.chain.abci.framing import FramingError, encode_frame, take_frames


@atheris.instrument_func
def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    cut = fdp.ConsumeIntInRange(0, 64)
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    buffer = bytearray()
    try:
        for start in range(0, len(stream), max(1, cut)):
            buffer += stream[start : start + max(1, cut)]
            for frame in take_frames(buffer):
                assert isinstance(frame, bytes)
    except FramingError:
        pass


def seeds() -> Iterator[bytes]:
    # (FuzzedDataProvider takes the cut size from the last byte)
    yield encode_frame(b"") + encode_frame(b"\x12\x00") + bytes([1])
    yield b"".join(encode_frame(bytes([i]) * i) for i in range(1, 9)) + bytes([5])
    yield encode_frame(b"\x22" * 300) + encode_frame(b"\x0a\x02hi") + bytes([64])


if __name__ == "__main__":
    fuzzlib.main("frames", test_one_input, seeds)
