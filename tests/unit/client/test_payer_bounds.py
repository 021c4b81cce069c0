"""Every payer is bounded by the chain's price, read with a proof. The attacks: a registered node
offers iris at 10**18 (the chain's price is 10,000) to an x402 client whose HacaEscrowScheme has no
max_fee (x402's own cap is 10**18: it paid); and an RPC answers haca.Client's unproven terms read
with a price of 10**18 (the node asks that much; the client paid). Now the scheme and the SDK read
the model's terms in effect with state proofs, and only an explicit max fee pays above them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from x402 import x402ClientSync
from x402.http.utils import decode_payment_required_header, encode_payment_signature_header
from x402.schemas import PaymentPayload, PaymentRequired

from haca.client.chain import ChainClient
from haca.client.errors import ProofInvalid, QueryFailed
from haca.client.payment import PaymentRequiredError
from haca.client.sdk import AsyncClient, Client
from haca.client.x402 import HacaEscrowScheme
from haca.crypto.keys import PrivateKey
from haca.node.x402v2 import decode_payment_signature, payment_required_header
from haca.types.payment import PaymentAuthorization
from haca.types.x402 import caip2_network
from tests.unit.client.chainfake import CHAIN_ID, VALIDATORS, FakeChain, RpcServer

NETWORK = caip2_network(CHAIN_ID)
KEY = PrivateKey.from_seed("bounded client")
NODE = PrivateKey.from_seed("greedy node").address
IRIS = "sha256:" + "1a" * 32
PRICE, OVERCHARGE = 10_000, 10**18  # the chain's price; the node's ask (x402's default cap: "$1")
TERMS_HEIGHT = 20  # the fake chain's tip: what its proven answers are for
URL = "http://node.test/v1/infer"
IRIS_INPUT = [[5.1, 3.5, 1.4, 0.2]]


def manifest(price: int = PRICE, price_unit: str = "request", max_rows: int = 8, **extra: Any) -> dict[str, Any]:
    """The model's terms in effect, as the chain stores them."""
    llm = extra.get("kind") == "gguf"
    return {
        "name": "iris",
        "model_id": IRIS,
        "version": 1,
        "modes": ["vanilla"],
        "price": str(price),
        "price_unit": price_unit,
        "max_rows": max_rows,
        "circuit": None,
        "kind": "onnx",
        "completion_price": "0",
        "owner": "0x" + "77" * 20,
        "height": 1,
        "effective_height": 1,
        "input_schema": {} if llm else {"x": {"dtype": "float32", "shape": [-1, 4]}},
        "output_schema": {} if llm else {"y": {"dtype": "float32", "shape": [-1, 3]}},
        **extra,
    }


REGISTRATION = {
    "address": NODE,
    "endpoint": "http://node.test",
    "modes": ["vanilla"],
    "models": ["iris"],
    "price": "0",
    "height": 1,
}


@dataclass
class ProvenTerms:
    """A fake of the proven reads the scheme makes (ChainClient.query_proven_value)."""

    manifest: dict[str, Any] = field(default_factory=manifest)
    node: dict[str, Any] = field(default_factory=lambda: dict(REGISTRATION))
    height: int = TERMS_HEIGHT
    chain_id: str = CHAIN_ID
    reads: list[str] = field(default_factory=list)

    def query_proven_value(self, path: str, data: bytes = b"") -> tuple[dict[str, Any], int]:
        self.reads.append(path)
        if path == "/registry/model_in_effect":
            return self.manifest, self.height
        if path == "/registry/node":
            return self.node, self.height
        raise QueryFailed(path)


def accept(amount: int, price_unit: str = "request", terms_height: int = TERMS_HEIGHT) -> dict[str, Any]:
    """A node's x402 v1 accept for iris (as PaymentGate._accept builds it)."""
    return {
        "scheme": "haca-escrow",
        "network": CHAIN_ID,
        "asset": "opg",
        "maxAmountRequired": str(amount),
        "payTo": NODE,
        "resource": URL,
        "description": "inference on iris (vanilla)",
        "mimeType": "application/json",
        "maxTimeoutSeconds": 60,
        "extra": {
            "model_id": IRIS,
            "model": "iris",
            "mode": "vanilla",
            "price": str(amount),
            "price_unit": price_unit,
            "completion_price": "0",
            "max_rows": 8,
            "terms_height": terms_height,
            "height": terms_height,
            "min_expiry": terms_height + 5,
            "suggested_expiry": terms_height + 100,
        },
    }


def payment_required(amount: int, **kwargs: Any) -> PaymentRequired:
    body = {"x402Version": 1, "error": "payment required", "accepts": [accept(amount, **kwargs)]}
    decoded = decode_payment_required_header(payment_required_header(body, URL))
    assert isinstance(decoded, PaymentRequired)
    return decoded


def signed_fee(scheme: HacaEscrowScheme, amount: int, **kwargs: Any) -> int:
    """What the official x402 client signs with `scheme` for a node asking `amount`."""
    payload = x402ClientSync().register(NETWORK, scheme).create_payment_payload(payment_required(amount, **kwargs))
    assert isinstance(payload, PaymentPayload)
    inner = decode_payment_signature(encode_payment_signature_header(payload), CHAIN_ID)
    return PaymentAuthorization.from_json(inner["authorization"]).max_fee


# --- the x402 scheme against a fake proven reader ----------------------------------------------


def test_the_x402_scheme_without_a_max_fee_refuses_an_offer_above_the_chains_price() -> None:
    chain = ProvenTerms()
    with pytest.raises(PaymentRequiredError, match=f"node asks {OVERCHARGE}, more than the model's terms on chain"):
        signed_fee(HacaEscrowScheme(KEY, chain=chain), OVERCHARGE)
    assert chain.reads == ["/registry/model_in_effect", "/registry/node"]
    assert signed_fee(HacaEscrowScheme(KEY, chain=chain), PRICE) == PRICE  # at the chain's price it pays


def test_an_explicit_max_fee_pays_up_to_it_and_no_more() -> None:
    chain = ProvenTerms()
    assert signed_fee(HacaEscrowScheme(KEY, max_fee=OVERCHARGE, chain=chain), OVERCHARGE) == OVERCHARGE
    assert chain.reads == []  # the caller's maximum replaces the chain's bound
    assert signed_fee(HacaEscrowScheme(KEY, max_fee=OVERCHARGE), OVERCHARGE) == OVERCHARGE
    with pytest.raises(PaymentRequiredError, match=f"more than the max fee {OVERCHARGE - 1}"):
        signed_fee(HacaEscrowScheme(KEY, max_fee=OVERCHARGE - 1), OVERCHARGE)


def test_a_scheme_with_no_bound_at_all_cannot_be_made() -> None:
    with pytest.raises(ValueError, match="needs a bound"):
        HacaEscrowScheme(KEY)


@pytest.mark.parametrize(
    ("terms", "price_unit", "bound"),
    [
        (manifest(100, "row"), "row", 800),  # 8 rows at 100
        (manifest(100, "token", 2048, completion_price="200", kind="gguf"), "token", 2048 * 200),
    ],
)
def test_the_bound_is_the_most_one_request_costs_at_the_chains_terms(
    terms: dict[str, Any], price_unit: str, bound: int
) -> None:
    scheme = HacaEscrowScheme(KEY, chain=ProvenTerms(manifest=terms))
    assert signed_fee(scheme, bound, price_unit=price_unit) == bound
    with pytest.raises(PaymentRequiredError, match=f"allow \\({bound} for one request\\)"):
        signed_fee(scheme, bound + 1, price_unit=price_unit)


@pytest.mark.parametrize(
    ("chain", "kwargs", "message"),
    [
        (ProvenTerms(node={**REGISTRATION, "modes": ["tee"]}), {}, "not registered on chain for mode 'vanilla'"),
        (ProvenTerms(chain_id="haca-other"), {}, "not 'haca-other'"),
        (ProvenTerms(), {"terms_height": TERMS_HEIGHT - 6}, "quotes the terms of height 14"),
        (ProvenTerms(manifest=manifest(price_unit="ounce")), {}, "the chain's model manifest is malformed: price_unit"),
    ],
)
def test_an_offer_the_chain_does_not_back_is_refused(chain: ProvenTerms, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(PaymentRequiredError, match=message):
        signed_fee(HacaEscrowScheme(KEY, chain=chain), PRICE, **kwargs)


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        (ProvenTerms(manifest=manifest(model_id="sha256:" + "9" * 64)), "answered the terms of model sha256:9999"),
        (ProvenTerms(manifest=manifest(effective_height=TERMS_HEIGHT + 1)), "takes effect at height 21, after 20"),
        (ProvenTerms(node={**REGISTRATION, "address": "0x" + "66" * 20}), "the proven registration is for 0x6666"),
    ],
)
def test_a_proven_record_that_is_not_the_one_asked_for_is_refused(chain: ProvenTerms, message: str) -> None:
    """A proof shows a stored record, not that the RPC picked the right one: the client checks."""
    with pytest.raises(ProofInvalid, match=message):
        signed_fee(HacaEscrowScheme(KEY, chain=chain), PRICE)


# --- proven reads through a fake RPC: the scheme, haca.Client and haca.AsyncClient ----------------

MODEL_KEY, NODE_KEY = b"registry/model/iris/1", b"registry/node/" + NODE.encode()


def chain_state(height: int) -> dict[bytes, bytes]:
    return {MODEL_KEY: json.dumps(manifest()).encode(), NODE_KEY: json.dumps(REGISTRATION).encode()}


def overpriced(path: str, answer: dict[str, Any]) -> dict[str, Any]:
    """An RPC's lie: the model's price is the node's ask (its proof still shows the real one)."""
    return {**answer, "price": str(OVERCHARGE)} if path == "/registry/model_in_effect" else answer


@pytest.fixture
def rpc() -> Iterator[Callable[..., ChainClient]]:
    started: list[tuple[RpcServer, ChainClient]] = []

    def start(**settings: Any) -> ChainClient:
        routes = {"/registry/model_in_effect": (MODEL_KEY, json.loads), "/registry/node": (NODE_KEY, json.loads)}
        server = RpcServer(FakeChain(chain_state, routes, **settings))  # type: ignore[arg-type]
        started.append((server, ChainClient([server.url], CHAIN_ID, VALIDATORS)))
        return started[-1][1]

    yield start
    for server, chain in started:
        chain.close()
        server.close()


def test_the_scheme_reads_the_chains_price_with_a_proof(rpc: Callable[..., ChainClient]) -> None:
    honest = rpc()
    with pytest.raises(PaymentRequiredError, match="more than the model's terms on chain"):
        signed_fee(HacaEscrowScheme(KEY, chain=honest), OVERCHARGE)
    assert signed_fee(HacaEscrowScheme(KEY, chain=honest), PRICE) == PRICE
    with pytest.raises(ProofInvalid, match="not the value the proof shows"):
        signed_fee(HacaEscrowScheme(KEY, chain=rpc(lie=overpriced)), OVERCHARGE)


class GreedyNode:
    """A node asking OVERCHARGE for iris; it records every payment it is sent."""

    def __init__(self) -> None:
        self.payments: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if "x-payment" in request.headers:
            self.payments.append(request.headers["x-payment"])
            return httpx.Response(500, json={"error": "not reached in these tests"})
        return httpx.Response(
            402, json={"x402Version": 1, "error": "payment required", "accepts": [accept(OVERCHARGE)]}
        )


def test_the_sdk_bounds_the_fee_by_the_proven_price_not_the_rpcs_answer(rpc: Callable[..., ChainClient]) -> None:
    node = GreedyNode()
    with Client("http://node.test", KEY, rpc(lie=overpriced), node_address=NODE) as client:
        client.http = httpx.Client(transport=httpx.MockTransport(node))
        with pytest.raises(ProofInvalid, match="not the value the proof shows"):
            client.infer("iris", IRIS_INPUT)
    with Client("http://node.test", KEY, rpc(), node_address=NODE) as client:
        client.http = httpx.Client(transport=httpx.MockTransport(node))
        with pytest.raises(PaymentRequiredError, match="more than the model's price on chain"):
            client.infer("iris", IRIS_INPUT)
    assert node.payments == []


def test_the_async_sdk_bounds_the_fee_likewise(rpc: Callable[..., ChainClient]) -> None:
    node = GreedyNode()

    async def infer() -> None:
        async with AsyncClient("http://node.test", KEY, rpc(lie=overpriced), node_address=NODE) as client:
            client.http = httpx.AsyncClient(transport=httpx.MockTransport(node))
            await client.infer("iris", IRIS_INPUT)

    with pytest.raises(ProofInvalid, match="not the value the proof shows"):
        asyncio.run(infer())
    assert node.payments == []


def test_a_receipt_whose_height_hint_is_not_the_quoted_height_is_refused():
    """A node signing with an old height hint would leave its client little of the claim window."""
    from haca.client.payment import TERMS_LAG_BLOCKS, ReceiptInvalid, check_height_hint

    check_height_hint(100 - TERMS_LAG_BLOCKS, 100)
    check_height_hint(100 + TERMS_LAG_BLOCKS, 100)
    with pytest.raises(ReceiptInvalid, match="height hint 94 is not the quoted height 100"):
        check_height_hint(100 - TERMS_LAG_BLOCKS - 1, 100)
