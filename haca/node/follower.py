"""Following the chain head off the request path: a thread reads the latest height a few times a
block and recomputes the quotes in effect when it moves, so a request after an idle spell finds
both ready instead of waiting on RPCs before its first token (the chain view's height and the
quotes were otherwise refreshed by the first request to find them stale)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger()


class ChainFollower:
    def __init__(
        self,
        read_height: Callable[[], int],
        note_height: Callable[[int], None],
        refresh: Callable[[], object],
        interval: float = 0.25,
    ) -> None:
        self.read_height = read_height  # the chain's latest height (an RPC)
        self.note_height = note_height  # tell the node's chain view
        self.refresh = refresh  # recompute what depends on the height (the quotes in effect)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chain-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def tick(self) -> None:
        self.note_height(self.read_height())
        self.refresh()

    def _loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.tick()
                failing = False
            except Exception as exc:  # the chain is away: requests read it themselves meanwhile
                if not failing:
                    log.warning("chain_follow_failed", error=repr(exc))
                failing = True
            self._stop.wait(self.interval)
