"""The node's OpenAI-compatible routes over the real SmolLM2 GGUF (llama-cpp-python), a real
receipt store and a PaymentGate over a fake chain view, served by a real uvicorn server: answers
and streams in the OpenAI shape with a receipt charging usage x price, OpenAI-style errors, the
budget a payment covers, 429 past the queue, and a client that leaves mid-stream."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from haca.client.payment import create_api_key
from haca.node.api import create_app
from haca.node.context import NodeContext, ServedModel
from haca.node.payments import PaymentGate
from haca.node.receipts import ReceiptStore
from haca.runtime.llm import LlmModel, smollm2_path
from haca.types.llm import LlmRequest, parse_request, text_hash
from haca.types.payment import PaymentAuthorization
from haca.types.receipt import SignedReceipt
from haca.types.x402 import PAYMENT_REQUIRED_HEADER
from tests.metricshelpers import samples, value
from tests.unit.node.nodehelpers import CHAIN_ID, CLIENT, DENOM, HEIGHT, NODE, FakeView, x_payment
from tests.unit.node.nodehelpers import manifest as chain_manifest

PROMPT_PRICE, COMPLETION_PRICE, CONTEXT = 3, 7, 512
TIMEOUT = 120  # seconds: the suite runs on a loaded 2-core machine
MODEL_ID = "sha256:" + "5e" * 32  # the test does not load the model from a hub: any id
CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 12}


@dataclass
class Node:
    url: str
    store: ReceiptStore
    view: FakeView
    llm: LlmModel
    api_key: str


@pytest.fixture(scope="module")
def llm() -> LlmModel:
    return LlmModel(smollm2_path(), context=CONTEXT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TimedView(FakeView):
    """A chain whose blocks come every `block` seconds (as the node's chain view measures them)."""

    def __init__(self, block: float) -> None:
        super().__init__()
        self.block = block

    def block_interval(self) -> float:
        return self.block


def serve(
    tmp_path: Path, llm: LlmModel, queue: int = 8, view: FakeView | None = None, **gate_options: Any
) -> Iterator[Node]:
    manifest = chain_manifest(
        name="smollm2",
        model_id=MODEL_ID,
        price=PROMPT_PRICE,
        price_unit="token",
        max_rows=CONTEXT,
        modes=("vanilla",),
        kind="gguf",
        completion_price=COMPLETION_PRICE,
    )
    served = ServedModel(manifest, llm)
    store = ReceiptStore(tmp_path / "receipts.db")
    view = view or FakeView()
    view.escrows[CLIENT.address] = 10**9
    view.manifests[MODEL_ID] = manifest
    gate = PaymentGate(NODE.address, CHAIN_ID, DENOM, view, store, **gate_options)  # type: ignore[arg-type]
    ctx = NodeContext(NODE, CHAIN_ID, {"smollm2": served, MODEL_ID: served}, ("vanilla",), gate, store)
    ctx.llm_queue = queue
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ctx), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    api_key = create_api_key(CLIENT, CHAIN_ID, NODE.address, 10**8, HEIGHT + 1000, 1)
    try:
        yield Node(f"http://127.0.0.1:{port}", store, view, llm, api_key)
    finally:
        server.should_exit = True
        thread.join(10)
        store.close()


@pytest.fixture
def node(tmp_path: Path, llm: LlmModel) -> Iterator[Node]:
    yield from serve(tmp_path, llm)


def module_node(tmp_path_factory: pytest.TempPathFactory, tag: str) -> Iterator[Node]:
    """A node serving smollm2 for a whole test module (its own model instance and store)."""
    yield from serve(Path(tmp_path_factory.mktemp(tag)), LlmModel(smollm2_path(), context=CONTEXT))


def openai_client(node: Node) -> openai.OpenAI:
    """The official client, unmodified, paying `node` with its API key."""
    return openai.OpenAI(base_url=node.url + "/v1", api_key=node.api_key, max_retries=0, timeout=120)


def post(url: str, **kw: Any) -> httpx.Response:
    return httpx.post(url, timeout=TIMEOUT, **kw)


def stream(url: str, **kw: Any) -> Any:
    return httpx.stream("POST", url, timeout=TIMEOUT, **kw)


def bearer(node: Node) -> dict[str, str]:
    return {"Authorization": f"Bearer {node.api_key}"}


def stored_receipt(node: Node, receipt_id: str) -> SignedReceipt:
    stored = node.store.get(receipt_id)
    assert stored is not None
    return SignedReceipt.from_json(stored.to_json()["receipt"])


def assert_receipt_charges_usage(receipt: SignedReceipt, usage: dict[str, int], request: dict[str, Any], text: str):
    r = receipt.receipt
    assert (r.prompt_tokens, r.completion_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert r.fee == usage["prompt_tokens"] * PROMPT_PRICE + usage["completion_tokens"] * COMPLETION_PRICE
    assert r.input_hash == parse_request(request, "chat" if "messages" in request else "completion").hash(MODEL_ID)
    assert r.output_hash == text_hash(text)
    assert r.signer(receipt.signature) == NODE.address


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[6:]))
    return events


def test_a_chat_answer_is_openai_shaped_with_a_receipt_charging_tokens_used_times_price(node: Node):
    response = post(node.url + "/v1/chat/completions", json={**CHAT, "temperature": 0}, headers=bearer(node))
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["object"] == "chat.completion" and doc["model"] == "smollm2"
    (choice,) = doc["choices"]
    text = choice["message"]["content"]
    assert choice["message"]["role"] == "assistant" and text
    assert choice["finish_reason"] == "length"  # greedy decoding of this prompt runs past max_tokens (12)
    usage = doc["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    receipt = SignedReceipt.from_json(doc["haca"]["receipt"])
    assert_receipt_charges_usage(receipt, usage, {**CHAT, "temperature": 0}, text)
    header = json.loads(base64.urlsafe_b64decode(response.headers["x-haca-receipt"]))
    assert SignedReceipt.from_json(header).id == receipt.id == stored_receipt(node, receipt.id).id
    # what llama-cpp-python itself answers for the same request
    outcome = node.llm.generate(parse_request({**CHAT, "temperature": 0}, "chat"), lambda _: None)
    assert (outcome.text, outcome.prompt_tokens, outcome.completion_tokens) == (
        text,
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )


def test_a_streamed_chat_sends_the_same_text_and_its_receipt_in_the_last_chunk(node: Node):
    request = {**CHAT, "temperature": 0}
    plain = post(node.url + "/v1/chat/completions", json=request, headers=bearer(node)).json()
    with stream(node.url + "/v1/chat/completions", json={**request, "stream": True}, headers=bearer(node)) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert text == plain["choices"][0]["message"]["content"]
    last = events[-1]
    assert last["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert last["usage"] == plain["usage"]
    assert_receipt_charges_usage(SignedReceipt.from_json(last["haca"]["receipt"]), last["usage"], request, text)


def test_a_text_completion_is_answered_and_charged_likewise(node: Node):
    request = {"model": "smollm2", "prompt": "The sky is", "max_tokens": 8, "temperature": 0}
    doc = post(node.url + "/v1/completions", json=request, headers=bearer(node)).json()
    assert doc["object"] == "text_completion"
    text = doc["choices"][0]["text"]
    assert_receipt_charges_usage(SignedReceipt.from_json(doc["haca"]["receipt"]), doc["usage"], request, text)
    expected = node.llm.generate(
        LlmRequest("completion", "smollm2", prompt="The sky is", max_tokens=8, temperature=0.0), lambda _: None
    )
    assert text == expected.text


@pytest.mark.parametrize(
    ("path", "request_body", "status", "code", "param"),
    [
        ("/v1/chat/completions", {**CHAT, "model": "gpt-9"}, 404, "model_not_found", "model"),
        (
            "/v1/chat/completions",
            {**CHAT, "messages": [{"role": "wizard", "content": "hi"}]},
            400,
            "invalid_request",
            "messages[0].role",
        ),
        ("/v1/chat/completions", {**CHAT, "max_tokens": CONTEXT}, 400, "context_length_exceeded", "max_tokens"),
        (
            "/v1/chat/completions",
            {**CHAT, "messages": [{"role": "user", "content": "word " * 600}]},
            400,
            "context_length_exceeded",
            "messages",
        ),
        ("/v1/chat/completions", {**CHAT, "temperature": 3}, 400, "invalid_request", "temperature"),
        ("/v1/chat/completions", {**CHAT, "n": 2}, 400, "invalid_request", "n"),
        ("/v1/chat/completions", {**CHAT, "logit_bias": {"50256": -100}}, 400, "invalid_request", "logit_bias"),
        ("/v1/chat/completions", {**CHAT, "frequency_penalty": 2.5}, 400, "invalid_request", "frequency_penalty"),
        (
            "/v1/chat/completions",
            {
                **CHAT,
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}},
            },
            400,
            "invalid_request",
            "response_format.json_schema.schema",
        ),
        (
            "/v1/chat/completions",
            {**CHAT, "response_format": {"type": "yaml"}},
            400,
            "invalid_request",
            "response_format",
        ),
        ("/v1/completions", {"model": "smollm2", "prompt": 5}, 400, "invalid_request", "prompt"),
    ],
)
def test_bad_requests_get_an_openai_error_object_and_change_nothing(
    node: Node, path, request_body, status, code, param
):
    response = post(node.url + path, json=request_body, headers=bearer(node))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param) and error["message"] and error["type"]
    assert node.store.unsettled_count() == 0
    # and the node keeps serving
    assert post(node.url + "/v1/chat/completions", json=CHAT, headers=bearer(node)).status_code == 200


def test_malformed_json_is_a_400_openai_error(node: Node):
    response = post(
        node.url + "/v1/chat/completions",
        content=b'{"model": "smollm2", "messages": [',
        headers={**bearer(node), "content-type": "application/json"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["type"] == "invalid_request_error"
    assert node.store.unsettled_count() == 0


def test_no_payment_is_a_402_with_an_openai_error_and_x402_v2_requirements_for_the_llm(node: Node):
    response = post(node.url + "/v1/chat/completions", json=CHAT)
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "payment_required"
    required = json.loads(base64.b64decode(response.headers[PAYMENT_REQUIRED_HEADER]))
    assert required["x402Version"] == 2
    (accept,) = required["accepts"]
    assert accept["network"] == f"haca:{CHAIN_ID}" and accept["payTo"] == NODE.address
    assert accept["extra"]["price_unit"] == "token"
    assert (accept["extra"]["price"], accept["extra"]["completion_price"]) == (str(PROMPT_PRICE), str(COMPLETION_PRICE))
    assert int(accept["amount"]) == CONTEXT * COMPLETION_PRICE


def test_generation_stops_at_what_the_authorisation_covers(node: Node):
    # Enough for the prompt and exactly 3 completion tokens: the answer stops there ("length").
    probe = post(node.url + "/v1/chat/completions", json=CHAT, headers=bearer(node)).json()
    prompt_tokens = probe["usage"]["prompt_tokens"]
    max_fee = prompt_tokens * PROMPT_PRICE + 3 * COMPLETION_PRICE + COMPLETION_PRICE - 1
    auth = PaymentAuthorization(
        CHAIN_ID, CLIENT.address, NODE.address, "0x" + "07" * 32, MODEL_ID, "vanilla", max_fee, HEIGHT + 100
    )
    response = post(
        node.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 50}, headers={"X-PAYMENT": x_payment(auth)}
    )
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["usage"]["completion_tokens"] == 3 and doc["choices"][0]["finish_reason"] == "length"
    receipt = SignedReceipt.from_json(doc["haca"]["receipt"]).receipt
    assert receipt.fee == prompt_tokens * PROMPT_PRICE + 3 * COMPLETION_PRICE <= max_fee
    assert receipt.request_id == auth.request_id


def test_a_client_that_leaves_mid_stream_frees_the_slot_and_pays_only_for_what_was_produced(node: Node):
    request = {**CHAT, "messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 300}
    with stream(node.url + "/v1/chat/completions", json={**request, "stream": True}, headers=bearer(node)) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]  # a few chunks, then hang up
    assert any(line.startswith("data: ") for line in received)
    deadline = time.monotonic() + 30
    while node.store.unsettled_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    (stored,) = node.store.unsettled(10)
    receipt = SignedReceipt.from_json(stored.to_json()["receipt"]).receipt
    assert 0 < receipt.completion_tokens < 300
    assert receipt.fee == receipt.prompt_tokens * PROMPT_PRICE + receipt.completion_tokens * COMPLETION_PRICE
    # the one slot is free again: the next request is served at once
    started = time.monotonic()
    assert post(node.url + "/v1/chat/completions", json=CHAT, headers=bearer(node)).status_code == 200
    assert time.monotonic() - started < 20


def test_requests_past_the_queue_get_429_and_the_rest_are_served(tmp_path: Path, llm: LlmModel):
    for node in serve(tmp_path, llm, queue=0):  # one slot, nobody may wait
        request = {
            **CHAT,
            "max_tokens": 400,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Write a long story."}],
        }
        first = stream(node.url + "/v1/chat/completions", json={**request, "stream": True}, headers=bearer(node))
        with first as response:
            lines = response.iter_lines()  # kept: dropping the iterator closes the stream (a hang-up)
            assert next(lines).startswith("data: ")  # the first one runs (seconds of generation left)
            refused = post(node.url + "/v1/chat/completions", json=CHAT, headers=bearer(node))
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        # the first one hung up: its slot frees at its next token (seconds on a loaded machine)
        deadline = time.monotonic() + 60
        while (after := post(node.url + "/v1/chat/completions", json=CHAT, headers=bearer(node))).status_code == 429:
            assert time.monotonic() < deadline, "the hung-up request's slot never freed"
            time.sleep(0.2)
        assert after.status_code == 200, after.text


def test_llm_requests_tokens_and_first_token_time_are_counted_in_the_metrics(node: Node):
    before = samples(httpx.get(node.url + "/metrics").text)
    response = post(node.url + "/v1/chat/completions", json={**CHAT, "temperature": 0}, headers=bearer(node))
    assert response.status_code == 200, response.text
    usage, finish = response.json()["usage"], response.json()["choices"][0]["finish_reason"]
    after = samples(httpx.get(node.url + "/metrics").text)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    mode = SignedReceipt.from_json(response.json()["haca"]["receipt"]).receipt.mode
    assert delta("haca_llm_requests_total", model="smollm2", mode=mode, finish=finish) == 1
    assert delta("haca_llm_tokens_total", model="smollm2", kind="prompt") == usage["prompt_tokens"]
    assert delta("haca_llm_tokens_total", model="smollm2", kind="completion") == usage["completion_tokens"]
    assert delta("haca_llm_first_token_seconds_count") == 1
    assert value(after, "haca_llm_queue_depth") == 0  # nothing running or waiting once it answered


def test_every_generation_runs_on_the_models_own_thread(tmp_path: Path, llm: LlmModel, monkeypatch):
    """llama.cpp keeps a team of compute threads per calling thread (an idle team spin-waits), so
    one slot's generations must all run on one thread, however requests arrive."""
    threads: list[str] = []
    generate = llm.generate

    def recording(*args: Any, **kw: Any) -> Any:
        threads.append(threading.current_thread().name)
        return generate(*args, **kw)

    monkeypatch.setattr(llm, "generate", recording)
    for node in serve(tmp_path, llm):
        url, headers = node.url + "/v1/chat/completions", bearer(node)

        def ask(_: int, url: str = url, headers: dict[str, str] = headers) -> httpx.Response:
            return post(url, json=CHAT, headers=headers)

        with concurrent.futures.ThreadPoolExecutor(3) as pool:  # a burst: two wait while one runs
            answers = list(pool.map(ask, range(3)))
        answers.append(ask(3))
        assert [a.status_code for a in answers] == [200] * 4
    assert len(threads) == 4
    assert set(threads) == {"llm_0"}


# --- issue 19: no work the node cannot be paid for ------------------------------------------------


def test_generation_stops_in_time_for_the_receipt_to_settle_before_the_authorisation_expires(
    tmp_path: Path, llm: LlmModel
):
    # Blocks of 0.1 s and 1 s of generation asked of an authorisation: the least expiry is
    # height + 5 (settle margin) + 10, and generation must stop 5 blocks before it.
    for node in serve(tmp_path, llm, view=TimedView(0.1), llm_seconds=1.0):
        required = json.loads(
            base64.b64decode(post(node.url + "/v1/chat/completions", json=CHAT).headers[PAYMENT_REQUIRED_HEADER])
        )
        least = required["accepts"][0]["extra"]["min_expiry"]
        assert least == HEIGHT + 5 + 10
        request = {**CHAT, "messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 400}

        def pay(n: int, expiry: int) -> dict[str, str]:
            auth = PaymentAuthorization(
                CHAIN_ID, CLIENT.address, NODE.address, "0x" + f"{n:064x}", MODEL_ID, "vanilla", 10**6, expiry
            )
            return {"X-PAYMENT": x_payment(auth)}

        refused = post(node.url + "/v1/chat/completions", json=request, headers=pay(1, least - 1))
        assert refused.status_code == 402 and refused.json()["error"]["code"] == "payment_required"
        response = post(node.url + "/v1/chat/completions", json=request, headers=pay(2, least))
        assert response.status_code == 200, response.text
        doc = response.json()
        assert doc["choices"][0]["finish_reason"] == "length" and doc["usage"]["completion_tokens"] < 400
        receipt = stored_receipt(node, SignedReceipt.from_json(doc["haca"]["receipt"]).id)
        text = doc["choices"][0]["message"]["content"]
        assert_receipt_charges_usage(receipt, doc["usage"], request, text)


def test_a_replayed_payment_whose_prompt_it_did_not_cover_is_refused_before_its_body_is_read(node: Node):
    # The least payment, with a prompt of hundreds of tokens: refused once the prompt is counted
    # (402); sent again, it is a 409 before the body is even parsed (here: not JSON at all).
    auth = PaymentAuthorization(
        CHAIN_ID, CLIENT.address, NODE.address, "0x" + "09" * 32, MODEL_ID, "vanilla", PROMPT_PRICE, HEIGHT + 100
    )
    header = {"X-PAYMENT": x_payment(auth)}
    request = {**CHAT, "messages": [{"role": "user", "content": "word " * 300}]}
    first = post(node.url + "/v1/chat/completions", json=request, headers=header)
    assert first.status_code == 402, first.text
    replay = post(node.url + "/v1/chat/completions", content=b"{" * 1000, headers=header)
    assert replay.status_code == 409 and replay.json()["error"]["code"] == "request_conflict"
    assert node.store.unsettled_count() == 0


def test_a_prompt_larger_than_any_context_could_hold_is_refused_before_it_is_read_or_tokenised(node: Node):
    """One cheap API-key payment replayed with a 1 MB prompt held the only slot for the tokeniser
    each time, uncharged (its tokens never fit the context): such a body is a 413 while it arrives."""
    request = {**CHAT, "messages": [{"role": "user", "content": "word " * 200_000}]}
    answer = post(node.url + "/v1/chat/completions", json=request, headers=bearer(node))
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "payload_too_large"
    assert node.store.unsettled_count() == 0
    # a prompt the context can hold is still served
    assert post(node.url + "/v1/chat/completions", json=CHAT, headers=bearer(node)).status_code == 200
