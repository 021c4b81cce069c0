"""The chain follower keeps the node's view of the head fresh off the request path: a request
after an idle spell reads the height from the cache (no RPC of its own) and finds the quotes of
that height already computed; with the chain away it keeps trying, and requests read for
themselves meanwhile."""

from __future__ import annotations

import time
from typing import Any

from haca.node.chainview import ChainView
from haca.node.follower import ChainFollower
from tests.unit.fakeclock import FakeClock


class Rpc:
    def __init__(self) -> None:
        self.latest = 5
        self.calls = 0
        self.down = False

    def height(self) -> int:
        self.calls += 1
        if self.down:
            raise ConnectionError("no RPC answers")
        return self.latest


class Chain:
    def __init__(self) -> None:
        self.rpc = Rpc()


def wait_for(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_follower_keeps_the_height_fresh_and_recomputes_at_each_new_height():
    chain, clock = Chain(), FakeClock()
    view = ChainView(chain, "0xnode", ttl=0.2, clock=clock)  # type: ignore[arg-type]
    refreshed: list[int] = []
    # the follower's own reads bypass the counter: chain.rpc.calls counts the view's reads only
    follower = ChainFollower(lambda: chain.rpc.latest, view.note_height, lambda: refreshed.append(view.height()), 0.02)
    follower.start()
    try:
        wait_for(lambda: refreshed and refreshed[-1] == 5)
        chain.rpc.latest = 6
        wait_for(lambda: refreshed[-1] == 6)
        later = clock.advance(0.5)  # longer than the view's TTL: without the follower the next read would be an RPC
        wait_for(lambda: view._cache[("height", "")][0] >= later)  # the follower's next tick noted it
        assert view.height() == 6
        assert chain.rpc.calls == 0  # every read of the view, the request path's too, was a cache hit
    finally:
        follower.stop()


def test_with_the_chain_away_the_follower_keeps_trying_and_catches_up():
    chain = Chain()
    view = ChainView(chain, "0xnode", ttl=0.2, clock=FakeClock())  # type: ignore[arg-type]
    chain.rpc.down = True
    follower = ChainFollower(chain.rpc.height, view.note_height, lambda: None, 0.02)
    follower.start()
    try:
        wait_for(lambda: chain.rpc.calls >= 3)  # it kept trying
        chain.rpc.down = False
        chain.rpc.latest = 9
        wait_for(lambda: view._cache.get(("height", ""), (0, 0))[1] == 9)
        assert view.height() == 9
    finally:
        follower.stop()
