"""Issue 19 (6): one stalled chain RPC must not freeze the node. The node reads the chain through a
real ChainView and CometRpc against a fake CometBFT RPC server; once the server stalls (accepts,
never answers), `/healthz` still answers at once and a client whose escrow was read before is
served from the cache (stale while it revalidates), while a client never seen waits at most the
view's read bound and gets a JSON 503."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from haca.client.chain import ChainClient
from haca.client.payment import PaymentOffer, sign_payment
from haca.client.rpc import CometRpc
from haca.node.api import create_app
from haca.node.chainview import ChainView
from haca.node.context import NodeContext, ServedModel
from haca.node.payments import PaymentGate
from haca.node.receipts import ReceiptStore
from haca.runtime.onnx import OnnxModel
from haca.types.registry import ModelManifest
from tests.unit.fakeclock import FakeClock
from tests.unit.node.nodehelpers import CHAIN_ID, CLIENT, DENOM, HEIGHT, NODE, OTHER, escrow_answer
from tests.unit.node.nodehelpers import manifest as chain_manifest
from tests.unit.node.test_api import INPUT, MAX_ROWS, OUTPUT_SCHEMA, PRICE, SCHEMA, build_double

RPC_TIMEOUT = 5.0  # what one stalled read holds a worker thread for
READ_WAIT = 1.0  # what a request may wait for a read it cannot do without


class FakeRpc:
    """A CometBFT JSON-RPC endpoint answering `status` and the node's ABCI queries from dicts;
    `stall()` makes it accept every request and never answer (until `close()`)."""

    def __init__(self, manifest: ModelManifest) -> None:
        self.manifest = manifest
        self.escrows: dict[str, int] = {}
        self.queries: list[str] = []
        self.stalled = threading.Event()
        self.closing = threading.Event()
        rpc = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if rpc.stalled.is_set():
                    rpc.closing.wait(30)  # accepted, never answered (until the test ends)
                    return
                body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": rpc.answer(request)}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        if request["method"] == "status":
            return {"sync_info": {"latest_block_height": str(HEIGHT)}}
        path, data = request["params"]["path"], bytes.fromhex(request["params"]["data"]).decode()
        self.queries.append(path)
        value: dict[str, Any]
        if path == "/inference/escrow":
            client = data.split("/")[0]
            value = escrow_answer(self.escrows.get(client, 0))
        elif path == "/inference/params":
            value = {"settlement_fee": "3", "settlement_fee_bps": "100", "claim_deadline": 50}
        elif path == "/registry/model_in_effect":
            value = self.manifest.to_json()
        else:
            raise AssertionError(f"unexpected query {path}")
        return {"response": {"code": 0, "value": base64.b64encode(json.dumps(value).encode()).decode()}}

    def stall(self) -> None:
        self.stalled.set()

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Node:
    app: Any
    rpc: FakeRpc
    view: ChainView
    store: ReceiptStore


@contextlib.contextmanager
def node_over_fake_rpc(
    work: Path, escrow: int, read_wait: float = READ_WAIT, clock: Callable[[], float] = time.monotonic
) -> Iterator[Node]:
    """The node's app (a real ChainView and CometRpc) over a FakeRpc, CLIENT holding `escrow`
    (bench/stalled_rpc.py measures the same node). `clock`: the view's and the RPC client's."""
    path = work / "double.onnx"
    model_id = build_double(path)
    manifest = chain_manifest(
        model_id=model_id, price=PRICE, max_rows=MAX_ROWS, input_schema=SCHEMA, output_schema=OUTPUT_SCHEMA
    )
    rpc = FakeRpc(manifest)
    rpc.escrows[CLIENT.address] = escrow
    chain = ChainClient([rpc.url], CHAIN_ID)
    chain.rpc.close()
    chain.rpc = CometRpc(rpc.url, timeout=RPC_TIMEOUT, clock=clock)
    view = ChainView(chain, NODE.address, ttl=0.2, read_wait=read_wait, clock=clock)
    store = ReceiptStore(work / "receipts.db")
    gate = PaymentGate(NODE.address, CHAIN_ID, DENOM, view, store)
    served = ServedModel(manifest, OnnxModel(path))
    ctx = NodeContext(NODE, CHAIN_ID, {"double": served, model_id: served}, ("vanilla",), gate, store)
    try:
        yield Node(create_app(ctx), rpc, view, store)
    finally:
        rpc.close()
        view.close()
        chain.close()
        store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def node(tmp_path: Path, clock: FakeClock) -> Iterator[Node]:
    with node_over_fake_rpc(tmp_path, 10**6, clock=clock) as built:
        yield built


def test_a_stalled_rpc_leaves_healthz_and_known_clients_served_from_the_cache(node: Node, clock: FakeClock):
    async def scenario() -> dict[str, tuple[int, float, dict[str, Any]]]:
        transport = httpx.ASGITransport(app=node.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as http:

            async def timed(name: str, method: str, url: str, **kw: Any) -> tuple[str, tuple[int, float, Any]]:
                started = time.monotonic()
                response = await http.request(method, url, **kw)
                return name, (response.status_code, time.monotonic() - started, response.json())

            async def pay(signer: Any) -> dict[str, str]:
                required = (await http.post("/v1/infer", json={"model": "double"})).json()
                offer = PaymentOffer.from_402(required, "double", "vanilla")
                return {"X-PAYMENT": sign_payment(signer, offer, PRICE)[1]}

            known, first = await pay(CLIENT), await pay(CLIENT)
            stranger = await pay(OTHER)
            _, warm = await timed("warm", "POST", "/v1/infer", json={"model": "double", "input": INPUT}, headers=first)
            assert warm[0] == 200, warm  # the client's escrow is read and cached
            node.rpc.stall()
            clock.advance(0.3)  # past the TTL: every cached read is stale now
            body = {"model": "double", "input": INPUT}
            answers = await asyncio.gather(
                timed("stranger", "POST", "/v1/infer", json=body, headers=stranger),
                timed("healthz", "GET", "/healthz"),
                timed("known", "POST", "/v1/infer", json=body, headers=known),
            )
            return dict(answers)

    answers = asyncio.run(scenario())
    status, took, _ = answers["healthz"]
    assert status == 200 and took < RPC_TIMEOUT / 5, answers  # milliseconds in practice
    status, took, doc = answers["known"]
    assert status == 200 and took < RPC_TIMEOUT / 5, answers  # served from the (stale) cache
    assert doc["receipt"]["client"] == CLIENT.address
    status, took, doc = answers["stranger"]  # never read before: it waits for the read, boundedly
    assert status == 503 and doc["error"]["code"] == "chain_unavailable", answers
    assert took < RPC_TIMEOUT, answers
    assert node.store.unsettled_count() == 2
