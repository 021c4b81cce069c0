"""The node's chain view: reads cached for its TTL (a fresh read on demand), stale values answered
on the event loop while one refresh runs, and the cache bounded (least recently used entries
dropped), so a node seeing many clients does not grow without limit. Time is a FakeClock."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from haca.node.chainview import ChainView, ReadPending
from tests.unit.fakeclock import FakeClock
from tests.unit.node.nodehelpers import escrow_answer


class CountingChain:
    """A chain client answering escrow queries and counting them."""

    def __init__(self) -> None:
        self.queries: list[bytes] = []
        self.extra = 0  # added to every answer: a deposit landing
        self.gate = threading.Event()  # each query waits for it
        self.gate.set()

    def query(self, path: str, data: bytes = b"") -> dict[str, Any]:
        assert self.gate.wait(10), "never released"
        self.queries.append(data)
        return escrow_answer(len(data) + self.extra)


ESCROW = len(b"0xa/0xnode")


def test_escrow_reads_are_cached_within_the_ttl():
    chain = CountingChain()
    view = ChainView(chain, "0xnode", ttl=60)  # type: ignore[arg-type]
    assert view.available_escrow("0xa") == view.available_escrow("0xa") == len(b"0xa/0xnode")
    assert chain.queries == [b"0xa/0xnode"]


def test_a_fresh_escrow_read_goes_to_the_chain_and_refreshes_the_cache():
    chain = CountingChain()
    view = ChainView(chain, "0xnode", ttl=60, recheck=0)  # type: ignore[arg-type]
    view.available_escrow("0xa")
    view.available_escrow("0xa", fresh=True)
    view.available_escrow("0xa")
    assert chain.queries == [b"0xa/0xnode", b"0xa/0xnode"]


def test_the_cache_keeps_at_most_max_entries_dropping_the_least_recently_used():
    chain = CountingChain()
    view = ChainView(chain, "0xnode", ttl=60, max_entries=2)  # type: ignore[arg-type]
    view.available_escrow("0xa")
    view.available_escrow("0xb")
    view.available_escrow("0xa")  # a hit: 0xa is now the most recent
    view.available_escrow("0xc")  # evicts 0xb
    assert len(view._cache) == 2
    view.available_escrow("0xa")
    assert chain.queries.count(b"0xa/0xnode") == 1
    view.available_escrow("0xb")
    assert chain.queries.count(b"0xb/0xnode") == 2  # read again: it was dropped


def test_a_fresh_escrow_read_happens_once_per_new_block_however_often_the_client_is_refused():
    """The negative cache: an unfunded client replaying its payment costs one chain read per block
    (a deposit lands in a block, so the next block's read sees it), not one per request."""
    chain = CountingChain()
    view = ChainView(chain, "0xnode", ttl=60, recheck=60)  # type: ignore[arg-type]
    view.note_height(10)
    view.available_escrow("0xa")
    for _ in range(5):  # refused again and again within block 10: no read
        view.available_escrow("0xa", fresh=True)
    assert len(chain.queries) == 1
    view.note_height(11)  # a new block: the deposit may be in it
    view.available_escrow("0xa", fresh=True)
    view.available_escrow("0xa", fresh=True)
    assert len(chain.queries) == 2


def test_a_read_older_than_the_ttl_is_read_again():
    chain, clock = CountingChain(), FakeClock()
    view = ChainView(chain, "0xnode", ttl=1.0, clock=clock)  # type: ignore[arg-type]
    view.available_escrow("0xa")
    chain.extra = 5
    clock.advance(0.99)
    assert view.available_escrow("0xa") == ESCROW and len(chain.queries) == 1
    clock.advance(0.01)
    assert view.available_escrow("0xa") == ESCROW + 5 and len(chain.queries) == 2


def test_a_fresh_read_within_recheck_seconds_is_answered_from_the_cache():
    chain, clock = CountingChain(), FakeClock()
    view = ChainView(chain, "0xnode", ttl=60, recheck=2.0, clock=clock)  # type: ignore[arg-type]
    view.available_escrow("0xa")
    clock.advance(1.9)
    view.available_escrow("0xa", fresh=True)
    assert len(chain.queries) == 1
    clock.advance(0.1)
    view.available_escrow("0xa", fresh=True)
    assert len(chain.queries) == 2


def test_on_the_event_loop_a_stale_value_is_answered_while_one_refresh_runs():
    chain, clock = CountingChain(), FakeClock()
    view = ChainView(chain, "0xnode", ttl=1.0, max_stale=10.0, clock=clock)  # type: ignore[arg-type]
    view.available_escrow("0xa")  # off the loop: read inline
    chain.extra = 5
    chain.gate.clear()  # the refresh waits until the stale answers are in
    clock.advance(5.0)  # stale, not yet too stale

    async def on_loop() -> tuple[list[int], int]:
        stale = [view.available_escrow("0xa") for _ in range(3)]
        (future,) = view._loading.values()  # one refresh for all three
        chain.gate.set()
        await asyncio.wrap_future(future)
        return stale, view.available_escrow("0xa")

    try:
        assert asyncio.run(on_loop()) == ([ESCROW] * 3, ESCROW + 5)
        assert len(chain.queries) == 2
    finally:
        view.close()


def test_on_the_event_loop_a_value_past_max_stale_is_waited_for():
    chain, clock = CountingChain(), FakeClock()
    view = ChainView(chain, "0xnode", ttl=1.0, max_stale=10.0, clock=clock)  # type: ignore[arg-type]
    view.available_escrow("0xa")
    chain.extra = 5
    clock.advance(10.0)

    async def on_loop() -> int:
        with pytest.raises(ReadPending) as pending:
            view.available_escrow("0xa")
        await pending.value.wait()
        return view.available_escrow("0xa")

    try:
        assert asyncio.run(on_loop()) == ESCROW + 5
    finally:
        view.close()
