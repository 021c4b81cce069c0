"""ABCI socket framing (CometBFT v0.38): each message is an unsigned-varint length, then protobuf bytes."""

from __future__ import annotations

import asyncio

from haca.types.encoding import encode_uvarint

__all__ = ["FramingError", "encode_frame", "encode_uvarint", "read_frame", "take_frames"]

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # far above any block CometBFT sends with default params


class FramingError(ValueError):
    """The peer sent bytes that are not a valid frame; the connection must be closed. `frames`
    holds the complete frames that came before the bad bytes (they deserve an answer)."""

    def __init__(self, message: str, frames: list[bytes] | None = None) -> None:
        super().__init__(message)
        self.frames = frames or []


def encode_frame(payload: bytes) -> bytes:
    return encode_uvarint(len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next frame's payload, or None at a clean end of stream."""
    length = 0
    for shift in range(0, 70, 7):
        byte = await reader.read(1)
        if not byte:
            if shift == 0:
                return None
            raise FramingError("stream ended inside a length prefix")
        length |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            break
    else:
        raise FramingError("length prefix longer than 10 bytes")
    if length > MAX_MESSAGE_BYTES:
        raise FramingError(f"frame of {length} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise FramingError(f"stream ended after {len(exc.partial)} of {length} frame bytes") from exc


def take_frames(buffer: bytearray) -> list[bytes]:
    """Remove and return every complete frame at the start of `buffer`; an incomplete last frame
    stays. Bytes that cannot be a frame raise FramingError carrying the good frames before them."""
    frames: list[bytes] = []
    pos = 0
    while pos < len(buffer):
        length, shift, cursor = 0, 0, pos
        while True:
            if cursor >= len(buffer):
                del buffer[:pos]
                return frames  # the length prefix is still arriving
            byte = buffer[cursor]
            cursor += 1
            length |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            if shift >= 70:
                del buffer[:pos]
                raise FramingError("length prefix longer than 10 bytes", frames)
        if length > MAX_MESSAGE_BYTES:
            del buffer[:pos]
            raise FramingError(f"frame of {length} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit", frames)
        if cursor + length > len(buffer):
            break
        frames.append(bytes(buffer[cursor : cursor + length]))
        pos = cursor + length
    del buffer[:pos]
    return frames
