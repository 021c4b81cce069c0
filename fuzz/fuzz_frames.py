"""Fuzz the ABCI frame splitter: any stream, cut anywhere, yields frames or FramingError."""

import sys

import atheris

with atheris.instrument_imports():
    from haca.chain.abci.framing import FramingError, take_frames


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


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
