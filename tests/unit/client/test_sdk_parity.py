"""`Client` and `AsyncClient` drive the same flows (haca.client.core): the same node answers reach
the same results and the same typed errors in both, and no AsyncClient method blocks the event loop
(no sync HTTP, no chain read on the loop's thread)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

import haca.client.core as core
from haca.client.chain import TxOutcome
from haca.client.errors import (
    HacaError,
    NodeError,
    NodeNotFound,
    NodeRejected,
    NodeUnavailable,
    NotFound,
    PaymentRequiredError,
    node_error,
)
from haca.client.results import LlmOptions
from haca.client.sdk import AsyncClient, Client
from haca.crypto.keys import PrivateKey
from haca.types.inference import EscrowAnswer, EscrowLane
from haca.types.modes import Status
from haca.types.settlement import SettlementRecord

KEY = PrivateKey.from_seed("parity client")
NODE = PrivateKey.from_seed("parity node").address
RID = "0x" + "ab" * 32
EVIDENCE = b"proof from the node"


def off_loop() -> None:
    """Fails when called on a thread running an asyncio event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise AssertionError("a blocking call ran on the event loop's thread")


class StubChain:
    """A chain whose every read refuses to run on the event loop's thread."""

    chain_id = "haca-test"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.rpc = SimpleNamespace(height=lambda: self._seen("height", 100))

    def _seen(self, what: str, value: Any) -> Any:
        off_loop()
        self.calls.append(what)
        return value

    def query(self, path: str, data: bytes) -> dict[str, Any]:
        if path == "/inference/escrow":
            lane = EscrowLane(NODE, 7, 0, 7, ())
            return self._seen(path, EscrowAnswer(KEY.address, 7, (lane,)).to_json())  # type: ignore[no-any-return]
        assert path == "/inference/receipt", path
        record = SettlementRecord(
            data.decode(), Status.SETTLED, 9, NODE, KEY.address, RID, "sha256:" + "1" * 64, "vanilla", 5, 1, "allowance"
        )
        return self._seen(path, record.to_json())  # type: ignore[no-any-return]

    def send_msgs(self, key: PrivateKey, msgs: tuple[Any, ...]) -> TxOutcome:
        return self._seen("send_msgs", TxOutcome("0xtx", 5, 0, "", []))  # type: ignore[no-any-return]

    def close(self) -> None:
        pass


def node(status: int = 200, body: Any = None) -> Callable[[httpx.Request], httpx.Response]:
    """A node answering /healthz with its address and /v1/receipts/<id> with `status` and `body`."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(200, json={"node": NODE})
        return httpx.Response(status, json=body if body is not None else {"receipt": {}, "evidence": "0x"})

    return answer


def both(handler: Callable[[httpx.Request], httpx.Response], call: Callable[[Any], Any], **kw: Any) -> list[Any]:
    """`call(client)` on a Client and on an AsyncClient (awaited) over the same node: their outcomes
    (the value, or the exception's type and message)."""

    def outcome(run: Callable[[], Any]) -> Any:
        try:
            return run()
        except HacaError as exc:
            return type(exc), str(exc)

    def sync() -> Any:
        with Client("http://node.test", KEY, StubChain(), **kw) as client:  # type: ignore[arg-type]
            client.http = httpx.Client(transport=httpx.MockTransport(handler))
            return call(client)

    async def run_async() -> Any:
        async with AsyncClient("http://node.test", KEY, StubChain(), **kw) as client:  # type: ignore[arg-type]
            client.http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
            return await call(client)

    return [outcome(sync), outcome(lambda: asyncio.run(run_async()))]


def test_a_404_is_not_found_in_both_clients() -> None:
    missing = node(404, {"error": {"code": "receipt_not_found", "message": "no such receipt"}})
    for call in (lambda c: c.node_receipt(RID), lambda c: c.verify_receipt(RID), lambda c: c.prove_batched(RID)):
        sync, async_ = both(missing, call)
        assert sync == async_ and sync[0] is NodeNotFound and issubclass(sync[0], NotFound)
    sync, async_ = both(node(404, {}), lambda c: c.node_receipt(RID))  # a bare 404 too
    assert sync == async_ and issubclass(sync[0], NotFound)


def zkml_receipt(monkeypatch: pytest.MonkeyPatch, from_chain: bytes) -> list[bytes]:
    """A zkml receipt whose proof is `from_chain` on chain (b"": none); the proofs verified, listed."""
    verified: list[bytes] = []
    signed = SimpleNamespace(id=RID, receipt=SimpleNamespace(mode="zkml"))
    monkeypatch.setattr(core, "checked_receipt", lambda stored, rid: signed)
    monkeypatch.setattr(core, "proof_from_chain", lambda chain, rid: (off_loop(), from_chain)[1])

    def verify(chain: Any, receipt: Any, proof: bytes, srs_dir: Any) -> str:
        off_loop()
        verified.append(proof)
        return "verified"

    monkeypatch.setattr(core, "verify_zkml_receipt", verify)
    return verified


@pytest.mark.parametrize("from_chain", [b"proof from the settlement tx", b""])
def test_verify_receipt_reads_the_zkml_proof_from_the_same_place_in_both(
    monkeypatch: pytest.MonkeyPatch, from_chain: bytes
) -> None:
    verified = zkml_receipt(monkeypatch, from_chain)
    answer = node(200, {"receipt": {}, "evidence": "0x" + EVIDENCE.hex()})
    assert both(answer, lambda c: c.verify_receipt(RID)) == ["verified", "verified"]
    assert verified == [from_chain or EVIDENCE] * 2  # the chain's settlement tx first, else the node's record


def test_async_prove_batched_exists_and_matches_the_sync_one(monkeypatch: pytest.MonkeyPatch) -> None:
    signed = SimpleNamespace(id=RID, receipt="the receipt")
    monkeypatch.setattr(core, "checked_receipt", lambda stored, rid: signed)
    monkeypatch.setattr(core, "prove_batched_receipt", lambda chain, receipt: (off_loop(), ("included", receipt))[1])
    assert inspect.iscoroutinefunction(AsyncClient.prove_batched)
    assert both(node(), lambda c: c.prove_batched(RID)) == [("included", "the receipt")] * 2


def test_both_clients_have_the_same_methods_and_every_async_one_is_a_coroutine() -> None:
    def public(cls: type) -> set[str]:
        return {
            n for n, v in vars(cls).items() if (callable(v) or isinstance(v, classmethod)) and not n.startswith("_")
        }

    assert public(Client) - {"close"} == public(AsyncClient) - {"aclose"}
    for name in public(AsyncClient) - {"from_home"}:
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)), name
    assert not [
        n
        for n in dir(AsyncClient)
        if not n.startswith("_") and n not in public(AsyncClient) and callable(getattr(AsyncClient, n))
    ]  # no blocking method inherited


def test_no_async_method_blocks_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    send = httpx.Client.send

    def guarded(self: httpx.Client, *args: Any, **kwargs: Any) -> httpx.Response:
        off_loop()
        return send(self, *args, **kwargs)

    monkeypatch.setattr(httpx.Client, "send", guarded)
    monkeypatch.setattr(httpx, "get", lambda *a, **k: pytest.fail("module-level httpx.get"))
    zkml_receipt(monkeypatch, b"")
    monkeypatch.setattr(core, "prove_batched_receipt", lambda chain, receipt: off_loop())
    chain = StubChain()

    async def run() -> list[Any]:
        async with AsyncClient("http://node.test", KEY, chain) as client:  # type: ignore[arg-type]
            client.http = httpx.AsyncClient(transport=httpx.MockTransport(node()))
            return [
                await client.node_address(),
                await client.escrow(),
                await client.deposit(5),
                await client.withdraw(5),
                await client.create_api_key(NODE, 10, 100, 1),
                await client.receipt_status(RID),
                await client.wait_settled(RID),
                await client.node_receipt(RID),
                await client.verify_receipt(RID),
                await client.prove_batched(RID),
                await client.wait_verified(RID),
            ]

    results = asyncio.run(run())
    assert results[0] == NODE.lower() and results[1] == 7 and results[6].status == "settled" and results[6].fee == 5
    assert "send_msgs" in chain.calls and "height" in chain.calls


def test_the_node_error_codes_map_to_typed_exceptions() -> None:
    def error(status: int, code: str = "", message: str = "m") -> HacaError:
        return node_error(status, {"error": {"code": code, "message": message}})

    assert type(error(404, "receipt_not_found")) is NodeNotFound and isinstance(error(404), NotFound)
    assert type(error(503, "enclave_unavailable")) is NodeUnavailable and type(error(429)) is NodeUnavailable
    assert type(error(422, "invalid_input")) is NodeRejected and type(error(500)) is NodeError
    refused = node_error(402, {"error": "insufficient escrow"})
    assert isinstance(refused, PaymentRequiredError) and "insufficient escrow" in str(refused)
    unreadable = node_error(500, None, "<html>bad gateway</html>")
    assert isinstance(unreadable, NodeError) and unreadable.status == 500 and "bad gateway" in str(unreadable)
    assert error(409, "request_conflict").node_code == "request_conflict"  # type: ignore[attr-defined]


def test_llm_options_may_be_given_as_one_or_as_keywords() -> None:
    assert LlmOptions.of(None, {"max_tokens": 8, "stop": "\n"}) == LlmOptions(max_tokens=8, stop="\n")
    assert LlmOptions.of(LlmOptions(max_tokens=8), {"seed": 1}) == LlmOptions(max_tokens=8, seed=1)
    with pytest.raises(TypeError, match="unknown LLM option"):
        LlmOptions.of(None, {"max_token": 8})
    request = LlmOptions(max_tokens=8, stop="\n").request("completion", "smollm2", "Hi", False)
    assert request.to_openai()["stop"] == ["\n"] and request.to_openai()["max_tokens"] == 8
