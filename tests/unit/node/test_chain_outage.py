"""When no chain RPC answers, /v1/infer is a JSON 503 `chain_unavailable` (never a plain-text 500)
and queues nothing; once the chain answers again the node serves as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from haca.client.errors import ChainUnavailable, QueryFailed, RpcError
from tests.unit.node.test_api import Node, assert_error, body, make_node, paid_headers

CHAIN_READS = (
    "height",
    "available_escrow",
    "allowance",
    "settlement_fee",
    "receipt_record",
    "request_record",
    "manifest_in_effect",
)


def fail_chain_reads(monkeypatch: pytest.MonkeyPatch, node: Node, error: Exception) -> None:
    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise error

    for name in CHAIN_READS:
        monkeypatch.setattr(node.view, name, unreachable)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return make_node(tmp_path)


def test_a_chain_outage_is_a_json_503_and_the_node_serves_again_when_the_chain_is_back(node, monkeypatch):
    _, headers = paid_headers(node)
    outage = ChainUnavailable("abci_query: no chain RPC endpoint answered (http://127.0.0.1:1: refused)")
    fail_chain_reads(monkeypatch, node, outage)
    for _ in range(3):
        response = node.client.post("/v1/infer", json=body(), headers=headers)
        message = assert_error(response, 503, "chain_unavailable")
        assert "127.0.0.1" not in message  # the node's own RPC endpoints are not told to callers
        assert response.headers["retry-after"]
    assert node.store.unsettled_count() == 0
    assert node.client.get("/healthz").status_code == 200
    assert 'haca_requests_rejected_total{status="503"} 3.0' in node.client.get("/metrics").text

    monkeypatch.undo()  # the chain answers again
    response = node.client.post("/v1/infer", json=body(), headers=headers)
    assert response.status_code == 200, response.text
    assert node.store.unsettled_count() == 1


@pytest.mark.parametrize("error", [RpcError("abci_query: Internal error"), QueryFailed("/inference/escrow: boom")])
def test_any_other_chain_error_is_a_json_502_not_a_plain_text_500(node, monkeypatch, error):
    _, headers = paid_headers(node)
    fail_chain_reads(monkeypatch, node, error)
    assert_error(node.client.post("/v1/infer", json=body(), headers=headers), 502, "chain_error")
    assert node.store.unsettled_count() == 0
