"""The explorer's server: it serves the built page and its config (chain id, trusted validators),
passes read-only JSON-RPC calls through to the first chain RPC that answers, and refuses anything
else with a 4xx JSON error; with no RPC answering, a 502 JSON error."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from haca.client.config import ClientConfig
from haca.explorer.server import MAX_RPC_BODY, create_app

VALIDATORS = [
    {"address": "AB" * 20, "pub_key": {"type": "tendermint/PubKeyEd25519", "value": "x"}, "voting_power": "10"}
]


@pytest.fixture
def assets(tmp_path: Path) -> Path:
    (tmp_path / "index.html").write_text("<!doctype html><title>HACA explorer</title>")
    (tmp_path / "app.js").write_text("console.log('page')")
    return tmp_path


def config(rpc: list[str]) -> ClientConfig:
    node = {"name": "node0", "url": "http://127.0.0.1:9", "address": "0x" + "11" * 20}
    return ClientConfig("haca-unit", rpc, validators=VALIDATORS, extra={"nodes": [node]})


class FakeRpc:
    """Stands for CometBFT: the first URL is down, the second answers and records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "down.invalid":
            raise httpx.ConnectError("refused", request=request)
        call = json.loads(request.content)
        self.calls.append((str(request.url), call))
        return httpx.Response(200, json={"jsonrpc": "2.0", "id": call["id"], "result": {"echo": call["method"]}})


@pytest.fixture
def rpc() -> FakeRpc:
    return FakeRpc()


@pytest.fixture
def client(assets: Path, rpc: FakeRpc) -> TestClient:
    app = create_app(config(["http://down.invalid:1", "http://up.invalid:2"]), assets, httpx.MockTransport(rpc))
    return TestClient(app)


def test_the_page_and_its_assets_are_served(client: TestClient) -> None:
    assert client.get("/").text.startswith("<!doctype html>")
    assert client.get("/app.js").text == "console.log('page')"
    assert client.get("/healthz").json() == {"ok": True}


def test_config_gives_the_chain_id_and_the_trusted_validators(client: TestClient) -> None:
    doc = client.get("/config.json").json()
    assert doc["chain_id"] == "haca-unit"
    assert doc["validators"] == VALIDATORS
    assert doc["nodes"] == [{"address": "0x" + "11" * 20, "url": "http://127.0.0.1:9"}]


def test_a_read_call_passes_through_to_the_first_rpc_that_answers(client: TestClient, rpc: FakeRpc) -> None:
    call = {"jsonrpc": "2.0", "id": 7, "method": "abci_query", "params": {"path": "/bank/supply"}}
    answer = client.post("/rpc", json=call)
    assert answer.status_code == 200
    assert answer.json() == {"jsonrpc": "2.0", "id": 7, "result": {"echo": "abci_query"}}
    assert rpc.calls == [("http://up.invalid:2", call)]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (
            json.dumps({"jsonrpc": "2.0", "id": 1, "method": "broadcast_tx_sync", "params": {}}),
            403,
            "method_not_allowed",
        ),
        (json.dumps({"jsonrpc": "2.0", "id": 1, "method": "unsafe_flush_mempool"}), 403, "method_not_allowed"),
        ("{not json", 400, "invalid_json"),
        (json.dumps([{"method": "status"}]), 400, "invalid_call"),
        (json.dumps({"id": 1}), 400, "invalid_call"),
        (json.dumps({"id": 1, "method": "status", "params": "x"}), 400, "invalid_call"),
        (json.dumps({"method": "status", "pad": "x" * MAX_RPC_BODY}), 413, "too_large"),
    ],
    ids=["broadcast", "unsafe", "not-json", "batch", "no-method", "bad-params", "too-large"],
)
def test_a_bad_or_writing_call_is_refused_and_never_reaches_the_chain(
    client: TestClient, rpc: FakeRpc, body: str, status: int, code: str
) -> None:
    answer = client.post("/rpc", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status
    assert answer.json()["error"]["code"] == code
    assert rpc.calls == []


def test_the_chain_gets_the_checked_call_only(client: TestClient, rpc: FakeRpc) -> None:
    """CometBFT reads JSON keys case-insensitively: a second "Method" must not ride along."""
    body = '{"jsonrpc": "2.0", "id": 3, "method": "status", "Method": "broadcast_tx_sync", "params": {}}'
    assert client.post("/rpc", content=body, headers={"content-type": "application/json"}).status_code == 200
    assert rpc.calls == [("http://up.invalid:2", {"jsonrpc": "2.0", "id": 3, "method": "status", "params": {}})]


def test_no_rpc_answering_is_a_502_json_error(assets: Path) -> None:
    app = create_app(config(["http://down.invalid:1"]), assets, httpx.MockTransport(FakeRpc()))
    answer = TestClient(app).post("/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "status"})
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "chain_unavailable"


def test_an_unknown_file_is_a_404_json_error(client: TestClient) -> None:
    answer = client.get("/secrets.txt")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "not_found"


def test_an_unbuilt_explorer_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make setup"):
        create_app(config(["http://up.invalid:2"]), tmp_path / "missing")
