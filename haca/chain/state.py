"""Layered state views: a block's working state over the committed store, and a tx's over the block's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol


class ReadableState(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def iter_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]: ...


class CachedState:
    """Buffered writes over a parent; `write()` pushes them down, dropping the object discards them."""

    def __init__(self, parent: ReadableState) -> None:
        self.parent = parent
        self.writes: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        if key in self.writes:
            return self.writes[key]
        return self.parent.get(key)

    def set(self, key: bytes, value: bytes) -> None:
        self.writes[key] = value

    def delete(self, key: bytes) -> None:
        self.writes[key] = None

    def iter_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        merged = dict(self.parent.iter_prefix(prefix))
        for key, value in self.writes.items():
            if key.startswith(prefix):
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
        for key in sorted(merged):
            yield key, merged[key]

    def write(self) -> None:
        parent = self.parent
        if not isinstance(parent, CachedState):
            raise TypeError("only a CachedState can be written into")
        parent.writes.update(self.writes)
        self.writes = {}

    def branch(self) -> CachedState:
        return CachedState(self)


def get_int(state: ReadableState, key: bytes) -> int:
    raw = state.get(key)
    return int(raw) if raw else 0


def set_int(state: CachedState, key: bytes, value: int) -> None:
    if value < 0:
        raise ValueError("state integers are unsigned")
    state.set(key, str(value).encode())
