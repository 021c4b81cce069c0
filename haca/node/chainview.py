"""The node's read-only view of the chain: caches over RPC queries, so the request path does not
wait on the chain for every inference, and never waits on it inline on the event loop.

A read is *fresh* for `ttl` seconds. After that, and for up to `max_stale` seconds, the cached
value is still answered (stale-while-revalidate) while one refresh runs in a worker thread. A read
that has no usable value — a miss, or a caller asking for a value newer than `recheck` seconds —
is done in a worker thread too: on the event loop it raises `ReadPending`, which the caller awaits
(`PaymentGate.check_async` and the routes do) and then asks again; off the loop (the settler, the
follower, tools) it is read inline as before. One read per key is in flight at a time, so many
requests missing the same entry share it, and `recheck` bounds how often a client whose escrow
does not cover a request makes the node read it again (the negative cache).

Reads of a client's escrow and allowance never go back in height. Each key has a *floor*: the
height of the last answer cached for it, raised by `forget(..., height)` to the block a settlement
committed in and by a client naming the height its payment depends on (`at_least`: its deposit's
block). An RPC answering a state below the floor (a validator a block or more behind) is asked
again, then another endpoint, for up to `LAG_WAIT` seconds, and its answer is never cached: a
settled receipt's fee cannot come back as spendable escrow, and a deposit the client has seen
committed is not refused by a node reading a lagging validator.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

from haca.client.chain import ChainClient
from haca.client.errors import ChainUnavailable, QueryFailed
from haca.client.records import parse_answer
from haca.types.batch import BatchMark
from haca.types.encoding import canonical_json
from haca.types.inference import EscrowAnswer
from haca.types.payment import SpendingAllowance
from haca.types.registry import ModelManifest
from haca.types.settlement import SettlementRecord, request_settlement

CACHE_ENTRIES = 100_000  # least recently used entries beyond this are dropped (one per client / allowance)
MAX_STALE = 30.0  # seconds a cached value is still served while the chain does not answer a refresh
RECHECK = 2.0  # seconds before a value that refused a request may be read again (the negative cache)
READ_WAIT = 3.0  # seconds a request waits for a chain read before it is a 503
READ_THREADS = 4
MAX_PENDING_READS = 512  # reads queued past this are refused at once (503), not piled up behind a stall
DEFAULT_BLOCK_SECONDS = 0.5  # until two heights were seen; short is the safe side (deadlines in blocks)
BLOCK_SAMPLES = 32
LAG_WAIT = 2.0  # seconds a read waits for an RPC to reach a key's floor before it is a 503
LAG_POLL = 0.05


class Cached(NamedTuple):
    at: float  # when the read began
    value: Any
    head: int  # the head height this view knew then
    state_height: int  # the height of the state the answer was read from (0: not known)


class ReadPending(Exception):
    """A chain read the event loop must not wait for inline: it runs in a worker thread; await
    `wait()` (bounded by `timeout`), then ask the view again."""

    def __init__(self, future: Future[Any], timeout: float) -> None:
        super().__init__("chain read pending")
        self.future, self.timeout = future, timeout

    async def wait(self) -> None:
        """Wait for the read; its error (ChainUnavailable, QueryFailed...) is raised here."""
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self.future)), self.timeout)
        except TimeoutError:
            raise ChainUnavailable(f"a chain read took longer than {self.timeout:g}s") from None


def on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class ChainView:
    def __init__(
        self,
        chain: ChainClient,
        node: str,
        ttl: float = 1.0,
        max_entries: int = CACHE_ENTRIES,
        max_stale: float = MAX_STALE,
        recheck: float = RECHECK,
        read_wait: float = READ_WAIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.chain = chain
        self.node = node  # escrow is read for this node's lanes
        self.ttl, self.max_stale, self.recheck, self.read_wait = ttl, max(ttl, max_stale), recheck, read_wait
        self.max_entries = max_entries
        self.clock = clock
        # bounded: every client or API key ever seen would otherwise stay in memory for good
        self._cache: OrderedDict[tuple[str, str], Cached] = OrderedDict()
        self._floors: OrderedDict[tuple[str, str], int] = OrderedDict()  # key -> least height an answer may have
        self._manifests: dict[str, tuple[int, ModelManifest | None]] = {}
        self._loading: dict[tuple[str, str], Future[Any]] = {}  # key -> the one read in flight for it
        self._lock = threading.Lock()
        self._reads = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="chain-read")
        self._heights: deque[tuple[int, float]] = deque(maxlen=BLOCK_SAMPLES)  # (height, when first seen)

    def close(self) -> None:
        self._reads.shutdown(wait=False, cancel_futures=True)

    # --- the cache ----------------------------------------------------------------------------------

    def _cached(
        self, key: tuple[str, str], load: Callable[[], tuple[Any, int]], fresh: bool = False, at_least: int = 0
    ) -> Any:
        """The value of `key`: cached when fresh enough, else read (see the module doc). `fresh`:
        a value read within `recheck` seconds, not merely within the TTL, and since the last new
        block the view has seen (a deposit lands in a block: one read per client per block at most).
        `at_least`: a value of the state at this height or later (else read, however fresh).
        `load` returns (value, the height of the state it was read from)."""
        now = self.clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
        age = now - hit.at if hit is not None else float("inf")
        usable = hit is not None and hit.state_height >= at_least and (not fresh or hit.head >= self._head())
        if usable and age < (self.recheck if fresh else self.ttl):
            assert hit is not None
            return hit.value
        if not on_event_loop():  # a worker thread may wait: read inline
            head = self._head()
            value, height = load()
            self._put(key, now, value, head, height)
            return value
        future = self._load(key, load)
        if not fresh and hit is not None and age < self.max_stale and hit.state_height >= at_least:
            return hit.value  # stale while it revalidates
        raise ReadPending(future, self.read_wait)

    def _load(self, key: tuple[str, str], load: Callable[[], tuple[Any, int]]) -> Future[Any]:
        """Start reading `key` in a worker thread unless a read of it is in flight already."""
        with self._lock:
            future = self._loading.get(key)
            if future is not None:
                return future
            if len(self._loading) >= MAX_PENDING_READS:
                failed: Future[Any] = Future()
                failed.set_exception(ChainUnavailable("too many chain reads are waiting for the chain"))
                return failed
            future = Future()
            self._loading[key] = future
        started, head = self.clock(), self._head()

        def run() -> None:
            try:
                value, height = load()
            except BaseException as exc:
                with self._lock:
                    if self._loading.get(key) is future:
                        del self._loading[key]
                future.set_exception(exc)
                return
            with self._lock:
                current = self._loading.get(key) is future  # not forgotten meanwhile (a settlement)
                if current:
                    del self._loading[key]
            if current:
                self._put(key, started, value, head, height)  # as old as the moment the read began
            future.set_result(value)

        try:
            self._reads.submit(run)
        except RuntimeError as exc:  # the pool is shut down (the node is stopping)
            with self._lock:
                self._loading.pop(key, None)
            future.set_exception(ChainUnavailable(f"the node is stopping: {exc}"))
        return future

    def _head(self) -> int:
        """The highest height this view has seen (0 before any): no read."""
        with self._lock:
            return self._heights[-1][0] if self._heights else 0

    def _put(self, key: tuple[str, str], at: float, value: Any, head: int = 0, state_height: int = 0) -> None:
        with self._lock:
            old = self._cache.get(key)
            if old is not None and (old.at > at or old.state_height > state_height):
                return  # a newer value arrived while this read was on its way
            self._cache[key] = Cached(at, value, head, state_height)
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)

    # --- floors: reads that never go back in height -------------------------------------------------

    def _raise_floor(self, key: tuple[str, str], height: int) -> None:
        with self._lock:
            if height > self._floors.get(key, 0):
                self._floors[key] = height
            if key in self._floors:
                self._floors.move_to_end(key)
            while len(self._floors) > self.max_entries:
                self._floors.popitem(last=False)

    def _query_at_least(self, key: tuple[str, str], path: str, data: bytes, at_least: int) -> tuple[Any, int]:
        """An answer read from the state at the key's floor or later; an RPC that answers an older
        state is asked again (another endpoint after a few tries) for up to `LAG_WAIT` seconds,
        then the read fails (ChainUnavailable: a 503, never a stale answer). A height a client
        names (`at_least`) is not waited for — anyone can name one, and a read thread held for it
        is a thread the node's own reads lack: an answer below it fails at once (503, retry)."""
        with self._lock:
            floor = self._floors.get(key, 0)
        deadline = time.monotonic() + LAG_WAIT
        tries = 0
        while True:
            answer, height = self.chain.query_with_height(path, data)
            if height >= floor:
                if height < at_least:
                    raise ChainUnavailable(
                        f"{path}: this node's chain RPC is at height {height}, before the height {at_least}"
                        " the payment names: retry in a moment"
                    )
                self._raise_floor(key, height)
                return answer, height
            tries += 1
            if time.monotonic() >= deadline:
                raise ChainUnavailable(
                    f"{path}: the chain RPC answers the state of height {height}, but this read needs"
                    f" height {floor} or later (a lagging validator)"
                )
            if tries % 4 == 0:
                self.chain.rpc.rotate()  # this endpoint is stuck behind: ask the next one
            time.sleep(LAG_POLL)

    # --- reads --------------------------------------------------------------------------------------

    def height(self) -> int:
        def load() -> tuple[int, int]:
            height = self.chain.rpc.height()
            self._saw_height(height)
            return height, height

        return int(self._cached(("height", ""), load))

    def note_height(self, height: int) -> None:
        """The latest height, read just now by someone else (the chain follower): cached as fresh."""
        self._saw_height(height)
        self._put(("height", ""), self.clock(), height, state_height=height)

    def _saw_height(self, height: int) -> None:
        now = self.clock()
        with self._lock:
            if not self._heights or height > self._heights[-1][0]:
                self._heights.append((height, now))

    def block_interval(self) -> float:
        """Seconds per block, measured over the heights seen lately (the follower sees each one)."""
        with self._lock:
            if len(self._heights) < 2:
                return DEFAULT_BLOCK_SECONDS
            (h0, t0), (h1, t1) = self._heights[0], self._heights[-1]
        return max((t1 - t0) / (h1 - h0), 0.01)

    def available_escrow(self, client: str, fresh: bool = False, at_least: int = 0) -> int:
        """The client's escrow for this node less what it is withdrawing: funds being withdrawn
        are paid out after the chain's delay, so the node never serves against them. `fresh`:
        a value read within `recheck` seconds (before refusing a client that may just have
        deposited; at most one read per client per `recheck`, however often it is refused).
        `at_least`: read from the state at this height or later (the block of the client's deposit)."""
        key = ("escrow", client)

        def load() -> tuple[int, int]:
            answer, height = self._query_at_least(key, "/inference/escrow", f"{client}/{self.node}".encode(), at_least)
            (lane,) = parse_answer(EscrowAnswer.from_json, answer, "escrow").lanes
            return lane.available, height

        return int(self._cached(key, load, fresh, at_least))

    def allowance(self, allowance: SpendingAllowance) -> tuple[int, int]:
        """(spent on chain, height its revocation takes effect or 0) for an allowance."""
        key = ("allowance", allowance.id)

        def load() -> tuple[tuple[int, int], int]:
            data = canonical_json(allowance.to_json())
            answer, height = self._query_at_least(key, "/inference/allowance", data, 0)
            return (int(answer["spent"]), int(answer["revoked_from"])), height

        spent, revoked_from = self._cached(key, load)
        return spent, revoked_from

    def manifest_in_effect(self, model_id: str, height: int) -> ModelManifest | None:
        """The model's terms in effect at `height` (None before its first registration)."""

        with self._lock:
            hit = self._manifests.get(model_id)
        if hit is not None and hit[0] == height:  # one entry per model: the terms at the latest height asked
            return hit[1]

        def load() -> tuple[ModelManifest | None, int]:
            try:
                answer = self.chain.query("/registry/model_in_effect", f"{model_id}@{height}@{self.node}".encode())
                manifest: ModelManifest | None = parse_answer(ModelManifest.from_json, answer, "model manifest")
            except QueryFailed:
                manifest = None
            with self._lock:
                self._manifests[model_id] = (height, manifest)
            return manifest, 0

        if not on_event_loop():
            return load()[0]
        raise ReadPending(self._load(("manifest", f"{model_id}@{height}"), load), self.read_wait)

    def params(self) -> dict[str, Any]:
        """The inference module's params (cached like any read)."""
        params: dict[str, Any] = self._cached(("params", ""), lambda: self.chain.query_with_height("/inference/params"))
        return params

    def settlement_fee(self, fees: int, count: int = 1) -> int:
        """What the chain burns from a client's escrow on top of `count` fees totalling `fees`
        (an upper bound when count > 1: per-receipt rounding only lowers it). Params cached."""
        params = self.params()
        return count * int(params["settlement_fee"]) + fees * int(params["settlement_fee_bps"]) // 10_000

    def claim_deadline(self) -> int:
        """Blocks a node has to settle a claimed receipt (the chain's `claim_deadline`)."""
        return int(self.params()["claim_deadline"])

    def receipt_record(self, receipt_id: str) -> SettlementRecord | None:
        """The chain's settlement record of a receipt settled alone (uncached), or None."""
        try:
            answer = self.chain.query("/inference/receipt", receipt_id.encode())
            return parse_answer(SettlementRecord.from_json, answer, "settlement record")
        except QueryFailed:
            return None

    def request_record(self, client: str, request_id: str) -> SettlementRecord | BatchMark | None:
        """How the chain settled a client's request (uncached), or None: the receipt's record, or
        its request's mark in the batch it settled in."""
        try:
            answer = self.chain.query("/inference/request", f"{client}/{request_id}".encode())
            return parse_answer(request_settlement, answer, "request settlement")
        except QueryFailed:
            return None

    def follow_settlement(self, key: tuple[str, str], height: int) -> None:
        """A settlement committed at `height` changed `key` (("escrow", client) or ("allowance",
        id)): made by another worker of this node, it is known from the shared store. As after
        `forget`, once: reads wait (a little) for that height, never use what was cached before."""
        with self._lock:
            if self._floors.get(key, 0) >= height:
                return
        self._raise_floor(key, height)
        with self._lock:
            self._cache.pop(key, None)
            self._loading.pop(key, None)

    def forget(self, client: str, allowance_id: str | None = None, height: int = 0) -> None:
        """Drop cached chain state a settlement committed at `height` changed, so the next request
        sees it: a read in flight began before the settlement (its answer is not cached), and the
        next read must be of that height's state or later (an RPC behind it still shows the fee
        as escrow)."""
        keys = [("escrow", client)] + ([("allowance", allowance_id)] if allowance_id else [])
        for key in keys:
            self._raise_floor(key, height)
        with self._lock:
            for key in keys:
                self._cache.pop(key, None)
                self._loading.pop(key, None)
