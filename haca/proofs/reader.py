"""A bounded reader over evidence bytes: each length-prefixed field is taken whole or refused by
the caller's own error (what was being read, how many bytes it needed, how many were left)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal


class BoundedReader:
    def __init__(self, data: bytes, short: Callable[[str, int, int], Exception], offset: int = 0) -> None:
        self.data, self.short, self.offset = data, short, offset

    def take(self, n: int, what: str) -> bytes:
        left = len(self.data) - self.offset
        if n > left:
            raise self.short(what, n, left)
        chunk = self.data[self.offset : self.offset + n]
        self.offset += n
        return chunk

    def uint(self, n: int, what: str, order: Literal["big", "little"] = "big") -> int:
        return int.from_bytes(self.take(n, what), order)
