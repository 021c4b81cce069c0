"""The node account's tx lock: settlements and enclave attestations take turns on one nonce sequence."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Protocol


class TxLock(Protocol):
    """A lock the node account's txs are sent under (one process's, or shared by a node's workers)."""

    def acquire(self) -> None: ...

    def release(self) -> None: ...

    def waiting(self) -> int: ...

    def __enter__(self) -> TxLock: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class AccountTxLock:
    """A lock granted in the order it was asked for. The settler, under load, passes again and
    again and re-takes a plain lock the instant it lets go; the enclave's heartbeat waiting for the
    same nonce sequence could starve, its coverage lapse, and every tee receipt signed in the gap
    be refused (seen in the chaos campaign, issue 23). Not reentrant."""

    def __init__(self) -> None:
        self._turns = threading.Condition()
        self._next_ticket = 0
        self._serving = 0

    def acquire(self) -> None:
        with self._turns:
            ticket = self._next_ticket
            self._next_ticket += 1
            while ticket != self._serving:
                self._turns.wait()

    def release(self) -> None:
        with self._turns:
            self._serving += 1
            self._turns.notify_all()

    def waiting(self) -> int:
        """How many are queued behind the holder (0 when free or held with nobody waiting)."""
        with self._turns:
            return max(0, self._next_ticket - self._serving - 1)

    def __enter__(self) -> AccountTxLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
