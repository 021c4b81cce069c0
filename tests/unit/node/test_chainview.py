"""The node's chain view: reads cached for its TTL (a fresh read on demand), and the cache bounded
(least recently used entries dropped), so a node seeing many clients does not grow without limit."""

from __future__ import annotations

from typing import Any

from haca.node.chainview import ChainView


class CountingChain:
    """A chain client answering escrow queries and counting them."""

    def __init__(self) -> None:
        self.queries: list[bytes] = []

    def query(self, path: str, data: bytes = b"") -> dict[str, Any]:
        self.queries.append(data)
        return {"lanes": [{"available": str(len(data))}]}


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
