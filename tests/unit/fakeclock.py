"""A clock tests advance by hand, for the caches that take `clock=` (ChainView, CometRpc): a test
steps past a TTL or a retry period instead of sleeping through it."""

from __future__ import annotations

import threading


class FakeClock:
    """Seconds, as `time.monotonic` gives them, that move only when `advance` is called."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> float:
        with self._lock:
            self.now += seconds
            return self.now
