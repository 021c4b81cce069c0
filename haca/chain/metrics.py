"""Prometheus metrics of one validator's app, counted from committed blocks only (a proposal that
never commits changes nothing here). Side effects outside the state machine: nothing here is read
back by it, so metrics can never make validators disagree.

Served by `python -m haca.chain.main` when the validator's `app/app.json` names a metrics port
(the devnet does); see README "Metrics".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from haca.chain.events import Event
from haca.chain.tx import TxResult
from haca.proofs.verifier import VerdictCache


class _VerdictCacheCollector(Collector):
    """The verifiers' shared verdict cache (CheckTx, proposals and blocks all use it)."""

    def __init__(self, cache: VerdictCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "haca_chain_verdict_cache", "verdict cache lookups (signature and proof checks)", labels=["result"]
        )
        family.add_metric(["hit"], self.cache.hits)
        family.add_metric(["miss"], self.cache.misses)
        yield family


class ChainMetrics:
    def __init__(self, cache: VerdictCache | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.height = Gauge("haca_chain_height", "last committed height", registry=r)
        self.txs = Counter("haca_chain_txs", "txs in committed blocks", ["result"], registry=r)
        self.checktx = Counter("haca_chain_checktx", "CheckTx answers", ["result"], registry=r)
        self.settled = Counter(
            "haca_chain_receipts_settled", "receipts settled, by mode and status", ["mode", "status"], registry=r
        )
        self.batch_rejected = Counter(
            "haca_chain_batch_items_rejected", "batch items skipped and recorded as rejected", registry=r
        )
        self.batches = Counter("haca_chain_batches", "settlement batches committed", ["mode"], registry=r)
        self.slashes = Counter("haca_chain_slashes", "slashes, by reason", ["reason"], registry=r)
        self.slashed = Counter("haca_chain_slashed_tokens", "tokens slashed, by reason", ["reason"], registry=r)
        self.burned = Gauge("haca_chain_burned_tokens", "tokens burned since genesis (supply)", registry=r)
        self.finalize_seconds = Histogram(
            "haca_chain_finalize_block_seconds",
            "FinalizeBlock time (execution reused from the proposal when it matched)",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        if cache is not None:
            r.register(_VerdictCacheCollector(cache))

    def committed(self, height: int, results: Iterable[TxResult], block_events: Iterable[Event], burned: int) -> None:
        """A block committed: count its txs and what their events say."""
        self.height.set(height)
        self.burned.set(burned)
        events = list(block_events)
        for result in results:
            self.txs.labels("ok" if result.ok else "failed").inc()
            if result.ok:
                events += result.events
        for event in events:
            attrs = event.attributes
            if event.type == "settle":
                self.settled.labels(attrs.get("mode", ""), attrs.get("status", "")).inc()
            elif event.type == "settle_batch":
                mode = attrs.get("mode", "")
                self.batches.labels(mode).inc()
                status = "verified" if mode == "tee" else "settled"
                self.settled.labels(mode, status).inc(int(attrs.get("settled", "0")))
                self.batch_rejected.inc(int(attrs.get("rejected", "0")))
            elif event.type == "slash":
                reason = attrs.get("reason", "")
                self.slashes.labels(reason).inc()
                self.slashed.labels(reason).inc(int(attrs.get("slashed", "0")))
