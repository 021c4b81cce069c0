"""The node's read-only view of the chain: short-lived caches over RPC queries, so the request
path does not wait on the chain for every inference."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from haca.client.chain import ChainClient
from haca.client.errors import QueryFailed
from haca.types.encoding import canonical_json
from haca.types.payment import SpendingAllowance

CACHE_ENTRIES = 100_000  # least recently used entries beyond this are dropped (one per client / allowance)


class ChainView:
    def __init__(self, chain: ChainClient, node: str, ttl: float = 1.0, max_entries: int = CACHE_ENTRIES) -> None:
        self.chain = chain
        self.node = node  # escrow is read for this node's lanes
        self.ttl = ttl
        self.max_entries = max_entries
        # bounded: every client or API key ever seen would otherwise stay in memory for good
        self._cache: OrderedDict[tuple[str, str], tuple[float, Any]] = OrderedDict()
        self._manifests: dict[str, tuple[int, dict[str, Any] | None]] = {}
        self._lock = threading.Lock()

    def _cached(self, key: tuple[str, str], load: Callable[[], Any], fresh: bool = False) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
        if hit is not None and now - hit[0] < self.ttl and not fresh:
            return hit[1]
        value = load()
        self._put(key, now, value)
        return value

    def _put(self, key: tuple[str, str], at: float, value: Any) -> None:
        with self._lock:
            self._cache[key] = (at, value)
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)

    def height(self) -> int:
        return int(self._cached(("height", ""), self.chain.rpc.height))

    def note_height(self, height: int) -> None:
        """The latest height, read just now by someone else (the chain follower): cached as fresh."""
        self._put(("height", ""), time.monotonic(), height)

    def available_escrow(self, client: str, fresh: bool = False) -> int:
        """The client's escrow for this node less what it is withdrawing: funds being withdrawn
        are paid out after the chain's delay, so the node never serves against them. `fresh`:
        read the chain now, not the cached value (before refusing a client that may just have
        deposited)."""

        def load() -> int:
            (lane,) = self.chain.query("/inference/escrow", f"{client}/{self.node}".encode())["lanes"]
            return int(lane["available"])

        return int(self._cached(("escrow", client), load, fresh))

    def allowance(self, allowance: SpendingAllowance) -> tuple[int, int]:
        """(spent on chain, height its revocation takes effect or 0) for an allowance."""

        def load() -> tuple[int, int]:
            answer = self.chain.query("/inference/allowance", canonical_json(allowance.to_json()))
            return int(answer["spent"]), int(answer["revoked_from"])

        spent, revoked_from = self._cached(("allowance", allowance.id), load)
        return spent, revoked_from

    def manifest_in_effect(self, model_id: str, height: int) -> dict[str, Any] | None:
        """The model's terms in effect at `height` (None before its first registration)."""

        with self._lock:
            hit = self._manifests.get(model_id)
        if hit is not None and hit[0] == height:  # one entry per model: the terms at the latest height asked
            return hit[1]
        try:
            manifest: dict[str, Any] | None = self.chain.query(
                "/registry/model_in_effect", f"{model_id}@{height}".encode()
            )
        except QueryFailed:
            manifest = None
        with self._lock:
            self._manifests[model_id] = (height, manifest)
        return manifest

    def settlement_fee(self, fees: int, count: int = 1) -> int:
        """What the chain burns from a client's escrow on top of `count` fees totalling `fees`
        (an upper bound when count > 1: per-receipt rounding only lowers it). Params cached."""
        params = self._cached(("params", ""), lambda: self.chain.query("/inference/params"))
        return count * int(params["settlement_fee"]) + fees * int(params["settlement_fee_bps"]) // 10_000

    def receipt_record(self, receipt_id: str) -> dict[str, Any] | None:
        """The chain's settlement record of a receipt settled alone (uncached), or None."""
        try:
            return self.chain.query("/inference/receipt", receipt_id.encode())
        except QueryFailed:
            return None

    def request_record(self, client: str, request_id: str) -> dict[str, Any] | None:
        """How the chain settled a client's request (uncached), or None: receipt_id, status and
        height, alone or in a batch (then also batch and index)."""
        try:
            return self.chain.query("/inference/request", f"{client}/{request_id}".encode())
        except QueryFailed:
            return None

    def forget(self, client: str, allowance_id: str | None = None) -> None:
        """Drop cached chain state a settlement just changed, so the next request sees it."""
        with self._lock:
            self._cache.pop(("escrow", client), None)
            if allowance_id:
                self._cache.pop(("allowance", allowance_id), None)
