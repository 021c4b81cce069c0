"""The node's Prometheus metrics (`GET /metrics`), one registry per node: requests and latency,
LLM requests, tokens, time to first token and queue depth, zkml proving time, and settlement
(receipts settled by status, settlement txs by kind, the lag from answer to settled)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SLOW_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.inferences = Counter("haca_inferences", "inferences served", ["model", "mode"], registry=r)
        self.latency = Histogram("haca_inference_seconds", "time to answer /v1/infer", registry=r)
        self.rejected = Counter("haca_requests_rejected", "requests refused", ["status"], registry=r)
        self.pending = Gauge("haca_receipts_pending", "receipts not yet settled", registry=r)
        self.bodies_parsed = Counter(
            "haca_request_bodies_parsed",
            "request bodies parsed (only paid requests get that far)",
            ["size"],
            registry=r,
        )
        # LLMs (the OpenAI routes)
        self.llm_requests = Counter(
            "haca_llm_requests", "LLM requests answered, by how they ended", ["model", "mode", "finish"], registry=r
        )
        self.llm_tokens = Counter("haca_llm_tokens", "LLM tokens charged", ["model", "kind"], registry=r)
        self.llm_first_token = Histogram(
            "haca_llm_first_token_seconds", "request to first token", buckets=LATENCY_BUCKETS, registry=r
        )
        self.llm_queue = Gauge("haca_llm_queue_depth", "LLM requests running or waiting for a slot", registry=r)
        # zkml
        self.proving = Histogram("haca_proof_seconds", "zkml proof generation time", buckets=SLOW_BUCKETS, registry=r)
        # settlement
        self.settled = Counter(
            "haca_receipts_settled", "receipts whose settlement ended, by status", ["status"], registry=r
        )
        self.settlement_txs = Counter("haca_settlement_txs", "settlement txs sent, by kind", ["kind"], registry=r)
        self.settlement_lag = Histogram(
            "haca_settlement_lag_seconds",
            "answer (receipt timestamp) to settled on chain",
            buckets=SLOW_BUCKETS,
            registry=r,
        )
