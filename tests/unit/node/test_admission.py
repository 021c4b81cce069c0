"""Issue 19: cheap ways to make a node work for nothing. An unfunded X-PAYMENT replayed costs at
most one chain read per negative-cache interval (a deposit is still noticed the interval after);
the same X-PAYMENT sent while it is being served, or again after its work began, is a 409 before
its body is read; and the gate's minimum expiry and zkml admission follow its measured times."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from haca.client.payment import sign_payment
from haca.node.chainview import RECHECK, ChainView
from haca.node.errors import Overloaded, PaymentRequired
from haca.node.payments import CLAIM_SAFETY, PaymentGate, ProvingLoad, Quote
from haca.node.receipts import ReceiptStore
from haca.runtime.onnx import OnnxModel
from haca.types.registry import ModelManifest
from haca.types.tensor import Tensor
from tests.unit.node.nodehelpers import (
    CHAIN_ID,
    CLIENT,
    DENOM,
    HEIGHT,
    MODEL_ID,
    NODE,
    OTHER,
    FakeView,
    escrow_answer,
    x_payment,
)
from tests.unit.node.test_api import PRICE, Node, assert_error, body, make_node, offer_of
from tests.unit.node.test_payments import authorization


class FakeChain:
    """What ChainView reads, from dicts, counting the escrow queries."""

    def __init__(self, manifest: ModelManifest) -> None:
        self.manifest = manifest
        self.escrows: dict[str, int] = {}
        self.escrow_reads: list[str] = []
        self.rpc = self

    def height(self) -> int:
        return HEIGHT

    def query(self, path: str, data: bytes = b"") -> dict[str, Any]:
        if path == "/inference/escrow":
            client = data.decode().split("/")[0]
            self.escrow_reads.append(client)
            return escrow_answer(self.escrows.get(client, 0))
        if path == "/inference/params":
            return {"settlement_fee": "3", "settlement_fee_bps": "100", "claim_deadline": 50}
        assert path == "/registry/model_in_effect", path
        return self.manifest.to_json()

    def query_with_height(self, path: str, data: bytes = b"") -> tuple[dict[str, Any], int]:
        return self.query(path, data), HEIGHT


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def chain_node(tmp_path: Path) -> Iterator[tuple[Node, FakeChain, Clock]]:
    node = make_node(tmp_path)
    chain, clock = FakeChain(node.manifest), Clock()
    view = ChainView(chain, NODE.address, clock=clock)  # type: ignore[arg-type]
    node.app.state.context.gate.chain = view
    try:
        yield node, chain, clock
    finally:
        view.close()


def test_an_unfunded_payment_replayed_costs_one_chain_read_per_interval(chain_node):
    node, chain, clock = chain_node
    header = {"X-PAYMENT": sign_payment(OTHER, offer_of(node), PRICE)[1]}  # OTHER has no escrow here

    async def replay(times: int) -> list[int]:
        transport = httpx.ASGITransport(app=node.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            return [(await http.post("/v1/infer", json=body(), headers=header)).status_code for _ in range(times)]

    assert asyncio.run(replay(20)) == [402] * 20
    assert chain.escrow_reads == [OTHER.address]  # one read, then the negative cache
    clock.now += RECHECK + 0.1
    assert asyncio.run(replay(10)) == [402] * 10
    assert chain.escrow_reads == [OTHER.address] * 2  # at most one more per interval
    chain.escrows[OTHER.address] = 10**6  # a deposit: noticed at the next interval
    clock.now += RECHECK + 0.1
    assert asyncio.run(replay(1)) == [200]


class GatedModel(OnnxModel):
    """Holds each run until `release` is set."""

    release = threading.Event()

    def run(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        assert self.release.wait(10), "never released"
        return super().run(inputs)


def test_a_payment_replayed_while_it_is_served_is_refused_before_its_body_is_read(tmp_path: Path, monkeypatch):
    node = make_node(tmp_path, GatedModel)
    monkeypatch.setattr(GatedModel, "release", threading.Event())
    header = {"X-PAYMENT": sign_payment(CLIENT, offer_of(node), PRICE)[1]}

    async def both() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=node.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            first = asyncio.create_task(http.post("/v1/infer", json=body(), headers=header))
            while node.app.state.context.gate.holds.idle():  # the first one is charged and running
                await asyncio.sleep(0.01)
            # a body that is not even JSON: a 409, not a 400, means it was never parsed
            replay = await http.post("/v1/infer", content=b"{" * 100_000, headers=header)
            GatedModel.release.set()
            return await first, replay

    first, replay = asyncio.run(both())
    assert first.status_code == 200
    assert_error(replay, 409, "request_conflict")


class FailingModel(OnnxModel):
    def run(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        raise RuntimeError("the model failed")


def test_a_payment_whose_work_began_is_never_served_again_even_without_a_receipt(tmp_path: Path):
    node = make_node(tmp_path, FailingModel)
    node.client = type(node.client)(node.app, raise_server_exceptions=False)
    header = {"X-PAYMENT": sign_payment(CLIENT, offer_of(node), PRICE)[1]}
    assert node.client.post("/v1/infer", json=body(), headers=header).status_code == 500
    assert_error(node.client.post("/v1/infer", content=b"not json", headers=header), 409, "request_conflict")
    assert node.store.unsettled_count() == 0


def test_a_payment_refused_before_the_work_may_be_sent_again(node_with_bad_body):
    node, header = node_with_bad_body
    assert_error(node.client.post("/v1/infer", content=b"not json", headers=header), 400, "invalid_request")
    assert node.client.post("/v1/infer", json=body(), headers=header).status_code == 200


@pytest.fixture
def node_with_bad_body(tmp_path: Path) -> tuple[Node, dict[str, str]]:
    node = make_node(tmp_path)
    return node, {"X-PAYMENT": sign_payment(CLIENT, offer_of(node), PRICE)[1]}


# --- the gate's clocks ---------------------------------------------------------------------------

ZK_QUOTE = Quote(MODEL_ID, "double", "zkml", 100, "request", 1, HEIGHT)
LLM_QUOTE = Quote(MODEL_ID, "smol", "vanilla", 3, "token", 512, HEIGHT, 7)


class TimedView(FakeView):
    def __init__(self, block: float, claim_deadline: int = 50) -> None:
        super().__init__()
        self.block, self.deadline = block, claim_deadline
        self.escrows[CLIENT.address] = 10**9

    def block_interval(self) -> float:
        return self.block

    def claim_deadline(self) -> int:
        return self.deadline


def zk_gate(tmp_path: Path, backlog: int, proof_seconds: float, block: float = 1.0) -> PaymentGate:
    store = ReceiptStore(tmp_path / "receipts.db")
    load = ProvingLoad(lambda: backlog, workers=1, proof_seconds=proof_seconds)
    load.observe(proof_seconds)
    return PaymentGate(NODE.address, CHAIN_ID, DENOM, TimedView(block), store, proving=load)  # type: ignore[arg-type]


def test_the_zkml_min_expiry_covers_the_backlog_this_proof_and_the_settle_margin(tmp_path: Path):
    gate = zk_gate(tmp_path, backlog=2, proof_seconds=4.0, block=2.0)
    # the settle margin, then twice the proofs ahead and this one (seconds) in blocks
    assert gate.min_expiry(ZK_QUOTE, HEIGHT) == HEIGHT + 5 + 2 * (2 + 1) * 4 // 2
    (offer,) = gate.requirements([ZK_QUOTE], "payment required", "r")["accepts"]
    assert offer["extra"]["min_expiry"] == HEIGHT + 17
    short = authorization(mode="zkml", expiry=HEIGHT + 16)
    with pytest.raises(PaymentRequired, match="needs an expiry of at least 117"):
        gate.check({"x-payment": x_payment(short)}, {(MODEL_ID, "zkml"): ZK_QUOTE})
    assert gate.check(
        {"x-payment": x_payment(authorization(mode="zkml", expiry=HEIGHT + 17))}, {(MODEL_ID, "zkml"): ZK_QUOTE}
    )


def test_zkml_work_past_the_claim_deadline_is_refused_with_a_retry_after(tmp_path: Path):
    # 50 blocks of 1 s, 80 % planned, less 5 blocks to settle: 35 s; 3 proofs of 10 s ahead + this one: 40 s
    gate = zk_gate(tmp_path, backlog=3, proof_seconds=10.0)
    assert 50 * 1.0 * CLAIM_SAFETY - 5 == 35
    with pytest.raises(Overloaded) as info:
        gate.check(
            {"x-payment": x_payment(authorization(mode="zkml", expiry=HEIGHT + 1000))}, {(MODEL_ID, "zkml"): ZK_QUOTE}
        )
    assert info.value.status == 503 and info.value.retry_after == 5
    assert zk_gate(tmp_path / "b", backlog=2, proof_seconds=10.0).check(
        {"x-payment": x_payment(authorization(mode="zkml", expiry=HEIGHT + 1000))}, {(MODEL_ID, "zkml"): ZK_QUOTE}
    )


def test_an_llm_authorisation_must_leave_time_to_generate_and_bounds_the_generation(tmp_path: Path):
    store = ReceiptStore(tmp_path / "receipts.db")
    gate = PaymentGate(NODE.address, CHAIN_ID, DENOM, TimedView(0.5), store, llm_seconds=10.0)  # type: ignore[arg-type]
    assert gate.min_expiry(LLM_QUOTE, HEIGHT) == HEIGHT + 5 + 20
    assert gate.seconds_left(HEIGHT + 25) == 10.0 and gate.seconds_left(HEIGHT + 3) == 0.0
