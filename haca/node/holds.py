"""What requests in flight hold of a client's escrow and of an API key's cap, and which request
ids are taken. One process keeps this in memory (`LocalHolds`); the workers of one node share it
in PostgreSQL (haca.node.pgstore), so no two workers together overdraw a client's escrow.

Check-then-hold must be atomic: the payment gate runs it under `guard(client)` (a no-op here,
where the gate runs on the event loop thread; an advisory lock per client across workers)."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

SPENT_IDS = 100_000  # request ids whose work began without a receipt, remembered (a replay is a 409)

Request = tuple[str, str]  # (client, request id)


@dataclass(frozen=True)
class Hold:
    """One request's hold: `escrow` of the client's escrow (fee + settlement fee), `allowance` of
    an API key's cap. `exclusive`: the id may be sent again (a signed authorisation, an
    Idempotency-Key), so it is taken while in flight; an allowance request's fresh id is not."""

    client: str
    request_id: str
    escrow: int
    allowance_id: str = ""
    allowance: int = 0
    exclusive: bool = True

    @property
    def request(self) -> Request:
        return (self.client, self.request_id)


class RequestTaken(Exception):
    """The request id is in flight or was served (the gate answers 409)."""


class HoldBook(Protocol):
    def guard(self, client: str) -> contextlib.AbstractContextManager[None]: ...

    def held(self, client: str) -> int: ...

    def held_allowance(self, allowance_id: str) -> int: ...

    def taken(self, request: Request) -> bool: ...

    def hold(self, hold: Hold) -> None: ...

    def release(self, hold: Hold, spent: bool) -> None: ...

    def idle(self) -> bool: ...


class LocalHolds:
    """The holds of one node process, in memory."""

    def __init__(self) -> None:
        self._held: dict[str, int] = {}  # client -> escrow held by requests in flight
        self._held_allowance: dict[str, int] = {}  # allowance id -> cap held by requests in flight
        self._in_flight: set[Request] = set()  # charged, receipt not yet queued
        self._spent: OrderedDict[Request, None] = OrderedDict()  # work began, no receipt came of it

    @contextlib.contextmanager
    def guard(self, client: str) -> Iterator[None]:
        yield  # the gate holds on the event loop thread: nothing runs in between

    def held(self, client: str) -> int:
        return self._held.get(client, 0)

    def held_allowance(self, allowance_id: str) -> int:
        return self._held_allowance.get(allowance_id, 0)

    def taken(self, request: Request) -> bool:
        return request in self._in_flight or request in self._spent

    def hold(self, hold: Hold) -> None:
        if hold.exclusive:
            if self.taken(hold.request):
                raise RequestTaken(hold.request_id)
            self._in_flight.add(hold.request)
        self._held[hold.client] = self.held(hold.client) + hold.escrow
        if hold.allowance_id:
            self._held_allowance[hold.allowance_id] = self.held_allowance(hold.allowance_id) + hold.allowance

    def release(self, hold: Hold, spent: bool) -> None:
        """Drop the hold; `spent`: remember its id (the work began, a replay must not get it again)."""
        _drop(self._held, hold.client, hold.escrow)
        if hold.allowance_id:
            _drop(self._held_allowance, hold.allowance_id, hold.allowance)
        if hold.exclusive:
            self._in_flight.discard(hold.request)
        if spent:
            self._spent[hold.request] = None
            self._spent.move_to_end(hold.request)
            while len(self._spent) > SPENT_IDS:
                self._spent.popitem(last=False)

    def idle(self) -> bool:
        """Nothing held, nothing in flight."""
        return not self._held and not self._held_allowance and not self._in_flight


def _drop(held: dict[str, int], key: str, amount: int) -> None:
    left = held.get(key, 0) - amount
    if left > 0:
        held[key] = left
    else:
        held.pop(key, None)
