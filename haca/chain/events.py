"""Events emitted by handlers; app.py turns them into ABCI events."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Event:
    type: str
    attributes: dict[str, str] = field(default_factory=dict)
