"""The node's chain view: reads cached for its TTL (a fresh read on demand), stale values answered
on the event loop while one refresh runs, and the cache bounded (least recently used entries
dropped), so a node seeing many clients does not grow without limit. Time is a FakeClock."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from haca.client.errors import ChainUnavailable
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

    def query_with_height(self, path: str, data: bytes = b"") -> tuple[dict[str, Any], int]:
        return self.query(path, data), 0


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


class LaggingChain:
    """Two RPC endpoints of one chain: the first answers the state of `behind_height` (a validator
    that has not seen the latest block), the second the latest. `rpc.rotate()` moves to the next."""

    def __init__(self, escrow_by_height: dict[int, int], behind_height: int) -> None:
        self.escrow_by_height = escrow_by_height
        self.latest = max(escrow_by_height)
        self.behind_height = behind_height
        self.current = 0  # the endpoint asked
        self.rotations = 0
        self.rpc = self

    def rotate(self) -> None:
        self.rotations += 1
        self.current = (self.current + 1) % 2

    def query_with_height(self, path: str, data: bytes = b"") -> tuple[dict[str, Any], int]:
        height = self.behind_height if self.current == 0 else self.latest
        return escrow_answer(self.escrow_by_height[height]), height


def test_after_a_settlement_a_lagging_rpc_never_refills_the_escrow_with_the_fee_already_paid():
    """The attack on the node: its receipts for 0xa settle in block 11 (escrow 1,000 → 400) and
    leave its unsettled count, then its RPC — a validator still at block 10 — answers 1,000 again.
    The view asks again, then another endpoint, and caches only the state of block 11."""
    chain = LaggingChain({10: 1000, 11: 400}, behind_height=10)
    view = ChainView(chain, "0xnode", ttl=60)  # type: ignore[arg-type]
    chain.current = 1
    assert view.available_escrow("0xa") == 400  # read at 11 (the settlement already in)
    chain.current = 0  # the node's RPC fails over to a lagging validator
    view.forget("0xa", None, height=11)
    assert view.available_escrow("0xa") == 400
    assert chain.rotations == 1  # asked the lagging endpoint four times, then the next one
    assert view._cache[("escrow", "0xa")].state_height == 11


def test_a_read_that_stays_behind_the_settlement_is_a_503_not_the_old_escrow(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("haca.node.chainview.LAG_WAIT", 0.2)
    chain = LaggingChain({10: 1000, 11: 400}, behind_height=10)
    chain.rotate = lambda: None  # type: ignore[method-assign]  # every endpoint is behind
    view = ChainView(chain, "0xnode", ttl=60)  # type: ignore[arg-type]
    view.forget("0xa", None, height=11)
    with pytest.raises(ChainUnavailable, match="answers the state of height 10, but this read needs height 11"):
        view.available_escrow("0xa")
    assert ("escrow", "0xa") not in view._cache


def test_escrow_reads_never_go_back_in_height_even_without_a_settlement():
    chain = LaggingChain({10: 1000, 11: 400}, behind_height=10)
    view = ChainView(chain, "0xnode", ttl=0)  # type: ignore[arg-type]
    chain.current = 1
    assert view.available_escrow("0xa") == 400
    chain.current = 0
    assert view.available_escrow("0xa") == 400  # the answer at 10 is refused: 11 was seen


def test_a_client_naming_its_deposit_block_is_read_from_that_block_or_later():
    """One block behind: the client deposited in block 11 and pays at once; the node's cached
    escrow (block 10) does not cover it, and a lagging RPC still shows block 10."""
    chain = LaggingChain({10: 0, 11: 5000}, behind_height=10)
    view = ChainView(chain, "0xnode", ttl=60, recheck=60)  # type: ignore[arg-type]
    assert view.available_escrow("0xa") == 0  # cached, at 10
    with pytest.raises(ChainUnavailable, match="at height 10, before the height 11 the payment names"):
        view.available_escrow("0xa", fresh=True, at_least=11)  # a 503 to retry, not a 402
    assert chain.rotations == 0  # a height a client names is never waited for nor rotated for
    chain.current = 1  # a moment later the RPC has block 11
    assert view.available_escrow("0xa", fresh=True, at_least=11) == 5000


def test_a_client_naming_a_height_far_ahead_holds_no_read_thread(monkeypatch: pytest.MonkeyPatch):
    """Anyone can name a height; the read answers at once (503) rather than polling for it."""
    slept: list[float] = []
    monkeypatch.setattr("haca.node.chainview.time.sleep", slept.append)
    chain = LaggingChain({10: 0, 11: 5000}, behind_height=10)
    view = ChainView(chain, "0xnode", ttl=60)  # type: ignore[arg-type]
    with pytest.raises(ChainUnavailable):
        view.available_escrow("0xa", fresh=True, at_least=10**9)
    assert slept == [] and chain.rotations == 0
