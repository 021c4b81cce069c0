"""The node's read-only view of the chain: short-lived caches over RPC queries, so the request
path does not wait on the chain for every inference."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from haca.client.chain import ChainClient
from haca.client.errors import QueryFailed
from haca.types.encoding import canonical_json
from haca.types.payment import SpendingAllowance


class ChainView:
    def __init__(self, chain: ChainClient, ttl: float = 1.0) -> None:
        self.chain = chain
        self.ttl = ttl
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def _cached(self, key: tuple[str, str], load: Callable[[], Any]) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        value = load()
        with self._lock:
            self._cache[key] = (now, value)
        return value

    def height(self) -> int:
        return int(self._cached(("height", ""), self.chain.rpc.height))

    def escrow(self, client: str) -> int:
        return int(
            self._cached(
                ("escrow", client), lambda: int(self.chain.query("/inference/escrow", client.encode())["escrow"])
            )
        )

    def allowance(self, allowance: SpendingAllowance) -> tuple[int, bool]:
        """(spent on chain, revoked) for an allowance."""

        def load() -> tuple[int, bool]:
            answer = self.chain.query("/inference/allowance", canonical_json(allowance.to_json()))
            return int(answer["spent"]), bool(answer["revoked"])

        spent, revoked = self._cached(("allowance", allowance.id), load)
        return spent, revoked

    def settlement_fee(self, fees: int, count: int = 1) -> int:
        """What the chain burns from a client's escrow on top of `count` fees totalling `fees`
        (an upper bound when count > 1: per-receipt rounding only lowers it). Params cached."""
        params = self._cached(("params", ""), lambda: self.chain.query("/inference/params"))
        return count * int(params["settlement_fee"]) + fees * int(params["settlement_fee_bps"]) // 10_000

    def receipt_record(self, receipt_id: str) -> dict[str, Any] | None:
        """The chain's settlement record of a receipt (uncached), or None."""
        try:
            return self.chain.query("/inference/receipt", receipt_id.encode())
        except QueryFailed:
            return None

    def forget(self, client: str, allowance_id: str | None = None) -> None:
        """Drop cached chain state a settlement just changed, so the next request sees it."""
        with self._lock:
            self._cache.pop(("escrow", client), None)
            if allowance_id:
                self._cache.pop(("allowance", allowance_id), None)
