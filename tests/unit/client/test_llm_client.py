"""The client side of an LLM answer (haca.client.llm): the offers read from a 402's PAYMENT-REQUIRED
header, the fee a client authorises (a bound on what the request may cost, refused above --max-fee
or, by default, when the node's per-token prices are above the model's on chain), and the checks
an answer must pass, each refusal naming its reason; then the SDK (sync and async, streamed or not)
against a real node serving SmolLM2, refusing answers changed on the way."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import tests.unit.node.nodehelpers as node_helpers
import tests.unit.node.test_openai_routes as routes
from haca.client.errors import QueryFailed
from haca.client.llm import (
    LlmOffer,
    LlmReceiptInvalid,
    ModelNotOffered,
    llm_max_fee,
    llm_offers,
    prompt_token_bound,
    select_offer,
    verify_llm_answer,
)
from haca.client.payment import InputInvalid, PaymentRequiredError, ReceiptInvalid, sign_payment
from haca.client.sdk import AsyncClient, Client, LlmResult
from haca.crypto.keys import PrivateKey
from haca.node.payments import Quote
from haca.node.x402v2 import payment_required_header
from haca.proofs.verifier import EnclaveStanding
from haca.runtime.llm import LlmModel, smollm2_path
from haca.types.llm import LlmRequest, parse_request, text_hash
from haca.types.payment import PaymentAuthorization
from haca.types.receipt import Receipt, SignedReceipt
from haca.types.registry import ModelManifest, NodeRegistration, PriceUnit
from haca.types.x402 import caip2_network
from tests.unit.node.nodehelpers import manifest as chain_manifest

CHAIN_ID = "haca-test"
NODE, CLIENT, OTHER = PrivateKey.from_seed("node"), PrivateKey.from_seed("client"), PrivateKey.from_seed("other")
ENCLAVE = PrivateKey.from_seed("enclave")
MODEL_ID = "sha256:" + "5e" * 32
PROMPT_PRICE, COMPLETION_PRICE, CONTEXT = 100, 200, 2048
MANIFEST = chain_manifest("smollm2", price=PROMPT_PRICE, price_unit="token", kind="gguf", completion_price=200)
TEXT = "Blue is a colour."
USAGE = {"prompt_tokens": 30, "completion_tokens": 6, "total_tokens": 36}


def offer(
    mode: str = "vanilla", prompt_price: int = PROMPT_PRICE, completion_price: int = COMPLETION_PRICE
) -> LlmOffer:
    return LlmOffer(
        CHAIN_ID, NODE.address, prompt_price, "token", CONTEXT, MODEL_ID, "smollm2", mode, 500, 100, completion_price
    )


def chat(content: str = "Name a colour.", max_tokens: int = 16, **params: Any) -> LlmRequest:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
    return parse_request({**body, **params}, "chat")


def accept(model: str, mode: str, price_unit: str = "token", price: int = PROMPT_PRICE) -> dict[str, Any]:
    """One accepts[] entry as the node's PaymentGate writes it (x402 v1 shape)."""
    return {
        "scheme": "haca-escrow",
        "network": CHAIN_ID,
        "asset": "opg",
        "maxAmountRequired": "409600",
        "payTo": NODE.address,
        "resource": "http://node/v1/chat/completions",
        "description": "",
        "mimeType": "application/json",
        "maxTimeoutSeconds": 60,
        "extra": {
            "model_id": MODEL_ID if price_unit == "token" else "sha256:" + "ab" * 32,
            "model": model,
            "mode": mode,
            "price": str(price),
            "price_unit": price_unit,
            "completion_price": str(COMPLETION_PRICE if price_unit == "token" else 0),
            "max_rows": CONTEXT if price_unit == "token" else 16,
            "terms_height": 100,
            "height": 101,
            "min_expiry": 106,
            "suggested_expiry": 201,
        },
    }


# --- offers ---------------------------------------------------------------------------------------


def test_the_llm_offers_are_read_from_the_payment_required_header_and_per_request_ones_left_out() -> None:
    accepts = [accept("smollm2", "tee"), accept("smollm2", "vanilla"), accept("iris", "vanilla", "request")]
    header = payment_required_header({"x402Version": 1, "error": "payment required", "accepts": accepts}, "http://n")
    offers = llm_offers(header)
    assert [(o.model, o.mode) for o in offers] == [("smollm2", "tee"), ("smollm2", "vanilla")]
    tee = offers[0]
    assert tee.chain_id == CHAIN_ID  # from the CAIP-2 network haca:<chain id>
    assert (tee.node, tee.model_id, tee.prompt_price, tee.completion_price, tee.context) == (
        NODE.address,
        MODEL_ID,
        PROMPT_PRICE,
        COMPLETION_PRICE,
        CONTEXT,
    )
    assert (tee.expiry, tee.terms_height) == (201, 100)
    assert select_offer(offers, "smollm2") is tee  # no mode: the node's first (preferred) one
    assert select_offer(offers, MODEL_ID, "vanilla") is offers[1]  # by id
    with pytest.raises(ModelNotOffered, match=r"no LLM 'iris'.*smollm2 \(tee\)"):
        select_offer(offers, "iris")
    with pytest.raises(ModelNotOffered, match="in mode 'zkml'"):
        select_offer(offers, "smollm2", "zkml")


@pytest.mark.parametrize("header", ["not base64!", "e30=", "eyJhY2NlcHRzIjogN30="])  # junk, {}, {"accepts": 7}
def test_a_402_without_usable_requirements_is_refused(header: str) -> None:
    with pytest.raises(PaymentRequiredError, match="without usable requirements"):
        llm_offers(header)


def test_the_signed_authorisation_is_for_the_offers_chain_node_model_and_mode() -> None:
    auth, _ = sign_payment(CLIENT, offer("tee"), 1234)
    assert (auth.chain_id, auth.node, auth.model_id, auth.mode, auth.max_fee, auth.expiry) == (
        CHAIN_ID,
        NODE.address,
        MODEL_ID,
        "tee",
        1234,
        500,
    )
    assert caip2_network(auth.chain_id) == "haca:haca-test"


# --- the fee to authorise --------------------------------------------------------------------------


def test_the_fee_bounds_the_prompt_by_its_bytes_plus_the_template_and_adds_max_tokens() -> None:
    request = chat("Name a colour.", max_tokens=16)
    bound = len("user") + len("Name a colour.") + 8 + 64
    assert prompt_token_bound(request) == bound
    assert llm_max_fee(offer(), request, None, MANIFEST) == bound * PROMPT_PRICE + 16 * COMPLETION_PRICE
    completion = parse_request({"model": "smollm2", "prompt": "The sky is", "max_tokens": 4}, "completion")
    assert llm_max_fee(offer(), completion, None, MANIFEST) == (10 + 64) * PROMPT_PRICE + 4 * COMPLETION_PRICE


def test_the_prompt_bound_counts_utf8_bytes_and_every_message() -> None:
    request = parse_request(
        {
            "model": "smollm2",
            "messages": [{"role": "system", "content": "Sé breve."}, {"role": "user", "content": "¿Qué color? 🎨"}],
        },
        "chat",
    )
    text = len("system") + len("Sé breve.".encode()) + len("user") + len("¿Qué color? 🎨".encode())
    assert prompt_token_bound(request) == text + 2 * 8 + 64


def test_the_prompt_bound_never_exceeds_what_the_context_leaves_and_the_node_holds_at_least_as_much() -> None:
    request = chat("word " * 5000, max_tokens=48)
    fee = llm_max_fee(offer(), request, None, MANIFEST)
    assert fee == (CONTEXT - 48) * PROMPT_PRICE + 48 * COMPLETION_PRICE
    quote = Quote(MODEL_ID, "smollm2", "vanilla", PROMPT_PRICE, "token", CONTEXT, 100, COMPLETION_PRICE)
    assert fee == quote.token_fee(CONTEXT - 48, 48)  # the most the node would hold: never less than we sign
    assert llm_max_fee(offer(), chat(max_tokens=48), None, MANIFEST) < fee


def test_a_bound_above_the_max_fee_is_refused_and_one_within_it_is_signed() -> None:
    request = chat(max_tokens=16)
    fee = llm_max_fee(offer(), request, None, MANIFEST)
    assert llm_max_fee(offer(), request, fee, MANIFEST) == fee
    with pytest.raises(PaymentRequiredError, match=f"may cost up to {fee}.*more than the max fee {fee - 1}"):
        llm_max_fee(offer(), request, fee - 1, MANIFEST)


@pytest.mark.parametrize("prices", [(101, COMPLETION_PRICE), (PROMPT_PRICE, 201)])
def test_by_default_per_token_prices_above_the_models_on_chain_are_refused(prices: tuple[int, int]) -> None:
    greedy = offer("vanilla", *prices)
    with pytest.raises(PaymentRequiredError, match="more than the model's prices on chain"):
        llm_max_fee(greedy, chat(), None, MANIFEST)
    explicit = llm_max_fee(greedy, chat(), 10**9, MANIFEST)  # only with an explicit max fee
    assert explicit == greedy.token_fee(prompt_token_bound(chat()), 16)
    cheaper = offer("vanilla", PROMPT_PRICE - 1, COMPLETION_PRICE - 1)  # a node may charge less
    assert llm_max_fee(cheaper, chat(), None, MANIFEST) < llm_max_fee(offer(), chat(), None, MANIFEST)


def test_max_tokens_that_fill_the_context_and_a_model_not_priced_per_token_are_refused() -> None:
    with pytest.raises(InputInvalid, match="context is 2048"):
        llm_max_fee(offer(), chat(max_tokens=CONTEXT), 10**12, MANIFEST)
    with pytest.raises(PaymentRequiredError, match="not priced per token"):
        llm_max_fee(offer(), chat(), None, dataclasses.replace(MANIFEST, price_unit=PriceUnit.REQUEST))


# --- checking the answer ---------------------------------------------------------------------------


def authorization(
    mode: str = "vanilla", max_fee: int = 10**6, request_id: str = "0x" + "0a" * 32
) -> PaymentAuthorization:
    return PaymentAuthorization(CHAIN_ID, CLIENT.address, NODE.address, request_id, MODEL_ID, mode, max_fee, 500)


def receipt(
    auth: PaymentAuthorization,
    request: LlmRequest,
    text: str = TEXT,
    tokens: tuple[int, int] = (30, 6),
    fee: int | None = None,
    signer: PrivateKey = NODE,
    **overrides: Any,
) -> dict[str, Any]:
    """The receipt JSON an honest node signs for this request and text (fields replaceable)."""
    r = Receipt(
        auth.chain_id,
        NODE.address,
        auth.client,
        auth.request_id,
        auth.model_id,
        auth.mode,
        request.hash(MODEL_ID),
        text_hash(text),
        PROMPT_PRICE * tokens[0] + COMPLETION_PRICE * tokens[1] if fee is None else fee,
        100,
        0,
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
    )
    r = dataclasses.replace(r, **overrides)
    return SignedReceipt(r, r.sign(signer)).to_json()


def refused(reason: str, receipt_json: Any, **kwargs: Any) -> LlmReceiptInvalid:
    args: dict[str, Any] = {"request": chat(), "text": TEXT, "usage": USAGE, "offer": offer(), "auth": authorization()}
    args.update(kwargs)
    with pytest.raises(LlmReceiptInvalid) as caught:
        verify_llm_answer(receipt_json, **args)
    assert caught.value.reason == reason, caught.value
    assert isinstance(caught.value, ReceiptInvalid) and caught.value.code == "receipt_invalid"
    return caught.value


def test_an_honest_answer_verifies() -> None:
    auth = authorization()
    signed = verify_llm_answer(receipt(auth, chat()), chat(), TEXT, USAGE, offer(), auth)
    assert signed.receipt.fee == 30 * PROMPT_PRICE + 6 * COMPLETION_PRICE
    assert (signed.receipt.prompt_tokens, signed.receipt.completion_tokens) == (30, 6)


def test_tampered_text_is_refused() -> None:
    error = refused("output_hash", receipt(authorization(), chat()), text=TEXT + " Or green.")
    assert "output hash is not the hash of the text received" in str(error)


def test_a_receipt_for_another_request_body_is_refused() -> None:
    # same request id, but the node ran (and committed to) another prompt or other sampling parameters
    refused("input_hash", receipt(authorization(), chat("Name a fruit.")))
    refused("input_hash", receipt(authorization(), chat(temperature=0.5)))


def test_a_wrong_fee_is_refused() -> None:
    error = refused("fee", receipt(authorization(), chat(), fee=30 * PROMPT_PRICE + 6 * COMPLETION_PRICE + 1))
    assert "its tokens at the quoted prices cost 4200" in str(error)
    cheaper_quote = offer(prompt_price=PROMPT_PRICE - 1)  # charged at other prices than the ones quoted
    refused("fee", receipt(authorization(), chat()), offer=cheaper_quote)


def test_usage_that_does_not_match_the_receipts_token_counts_is_refused() -> None:
    honest = receipt(authorization(), chat())
    error = refused("usage", honest, usage={**USAGE, "completion_tokens": 5})
    assert "receipt counts 30+6 tokens; the answer reports 30+5" in str(error)
    refused("usage", honest, usage={"total_tokens": 36})
    # counts and fee agree with each other but exceed what max_tokens allows
    too_many = receipt(authorization(), chat(), tokens=(30, 17))
    refused("usage", too_many, usage={"prompt_tokens": 30, "completion_tokens": 17})


def test_a_receipt_for_another_request_id_model_mode_or_client_is_refused() -> None:
    auth = authorization()
    refused("request", receipt(authorization(request_id="0x" + "0b" * 32), chat()), auth=auth)
    refused("request", receipt(auth, chat(), client=OTHER.address), auth=auth)
    refused("request", receipt(auth, chat(), chain_id="other-chain"), auth=auth)
    refused("request", receipt(auth, chat(), model_id="sha256:" + "77" * 32), auth=auth)
    tee_receipt = receipt(authorization("tee"), chat(), signer=ENCLAVE)
    refused("request", tee_receipt, auth=auth, enclave=lambda key: standing(key))  # authorised vanilla
    refused("request", receipt(auth, chat(), mode="zkml"), auth=auth)


def test_a_fee_above_the_authorised_max_is_refused() -> None:
    fee = 30 * PROMPT_PRICE + 6 * COMPLETION_PRICE
    auth = authorization(max_fee=fee - 1)
    error = refused("max_fee", receipt(auth, chat()), auth=auth)
    assert f"receipt charges {fee}; the client authorised at most {fee - 1}" in str(error)


def test_a_receipt_signed_by_another_key_is_refused() -> None:
    error = refused("signer", receipt(authorization(), chat(), signer=OTHER))
    assert OTHER.address in str(error)
    # the receipt names another node than the one the client paid
    refused("signer", receipt(authorization(), chat(), node=OTHER.address, signer=OTHER))


def standing(key: str, node: str = NODE.address, approved: bool = True, covered: bool = True) -> EnclaveStanding:
    return EnclaveStanding(key, node, "dev", "dev:00", True, covered, approved, "" if approved else "revoked")


def test_a_tee_answer_verifies_only_when_signed_by_an_enclave_key_the_chain_attests_for_the_node() -> None:
    auth, tee = authorization("tee"), offer("tee")
    attested = {ENCLAVE.address: standing(ENCLAVE.address)}
    signed = verify_llm_answer(receipt(auth, chat(), signer=ENCLAVE), chat(), TEXT, USAGE, tee, auth, attested.get)
    assert signed.receipt.mode == "tee"
    common: dict[str, Any] = {"offer": tee, "auth": auth}
    refused("signer", receipt(auth, chat(), signer=ENCLAVE), enclave=lambda key: None, **common)  # not attested
    refused("signer", receipt(auth, chat(), signer=NODE), enclave=attested.get, **common)  # the node's own key
    other_node = {ENCLAVE.address: standing(ENCLAVE.address, node=OTHER.address)}
    refused("signer", receipt(auth, chat(), signer=ENCLAVE), enclave=other_node.get, **common)
    revoked = {ENCLAVE.address: standing(ENCLAVE.address, approved=False)}
    refused("signer", receipt(auth, chat(), signer=ENCLAVE), enclave=revoked.get, **common)


def test_no_receipt_at_all_is_refused() -> None:
    refused("format", None)
    refused("format", {"fee": "1"})


# --- the SDK against a real node (SmolLM2 over llama.cpp, a fake chain view) ------------------------


class FakeChain:
    """What the SDK reads from the chain for an LLM offer, as proven reads at the node's height:
    the model's terms in effect and the node's registration."""

    def __init__(self, manifest: ModelManifest) -> None:
        self.manifest = manifest

    def query_proven_value(self, path: str, data: bytes = b"") -> tuple[dict[str, Any], int]:
        if path == "/registry/model_in_effect":
            return self.manifest.to_json(), node_helpers.HEIGHT
        if path == "/registry/node":
            registration = NodeRegistration(
                "http://node.test", ("vanilla",), ("smollm2",), 0, node_helpers.NODE.address, 1
            )
            return registration.to_json(), node_helpers.HEIGHT
        raise QueryFailed(path)

    def close(self) -> None:
        pass


class Tampering(httpx.HTTPTransport):
    """A node (or anyone on the way) rewriting paid non-streamed answers with `change`."""

    def __init__(self, change: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self.change = change

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if "x-payment" not in request.headers or response.status_code != 200:
            return response
        body = json.loads(response.read())
        self.change(body)
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
        return httpx.Response(200, headers=headers, content=json.dumps(body).encode())


@pytest.fixture(scope="module")
def llm() -> LlmModel:
    return LlmModel(smollm2_path(), context=routes.CONTEXT)


@pytest.fixture
def node(tmp_path: Path, llm: LlmModel) -> Iterator[routes.Node]:
    yield from routes.serve(tmp_path, llm)


def sdk(node: routes.Node, transport: httpx.BaseTransport | None = None) -> Client:
    chain = FakeChain(node.view.manifests[routes.MODEL_ID])
    client = Client(node.url, node_helpers.CLIENT, chain, node_address=node_helpers.NODE.address)  # type: ignore[arg-type]
    if transport is not None:
        client.http = httpx.Client(transport=transport, timeout=30)
    return client


def charged(result: LlmResult) -> int:
    return (
        result.usage["prompt_tokens"] * routes.PROMPT_PRICE
        + result.usage["completion_tokens"] * routes.COMPLETION_PRICE
    )


def test_the_sdk_pays_for_and_checks_chat_and_completion_answers_streamed_or_not(node: routes.Node) -> None:
    messages = [{"role": "user", "content": "Name a colour."}]
    with sdk(node) as client:
        plain = client.chat("smollm2", messages, max_tokens=8, temperature=0)
        assert plain.mode == "vanilla" and plain.status == "pending" and plain.text
        assert plain.fee == charged(plain) and plain.receipt.receipt.client == node_helpers.CLIENT.address
        assert node.store.get(plain.receipt_id) is not None
        stream = client.chat_stream("smollm2", [("user", "Name a colour.")], max_tokens=8, temperature=0)
        pieces = list(stream)
        assert stream.result is not None and len(pieces) > 1
        assert "".join(pieces) == stream.result.text == plain.text  # the same request, the same answer
        assert stream.result.usage == plain.usage and stream.result.receipt_id != plain.receipt_id
        text = client.completion("smollm2", "The sky is", max_tokens=6, temperature=0, stop=["\n"])
        assert text.fee == charged(text) and text.body["object"] == "text_completion"
        streamed = client.completion_stream("smollm2", "The sky is", max_tokens=6, temperature=0, stop="\n")
        assert "".join(streamed) == text.text and streamed.result is not None and streamed.result.fee == text.fee


def test_the_async_sdk_pays_for_and_checks_answers_likewise(node: routes.Node) -> None:
    async def run() -> tuple[LlmResult, list[str], LlmResult | None]:
        chain = FakeChain(node.view.manifests[routes.MODEL_ID])
        key = node_helpers.CLIENT
        async with AsyncClient(node.url, key, chain, node_address=node_helpers.NODE.address) as client:  # type: ignore[arg-type]
            plain = await client.chat("smollm2", [{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0)
            stream = await client.chat_stream("smollm2", [("user", "Hi")], max_tokens=6, temperature=0)
            return plain, [piece async for piece in stream], stream.result

    plain, pieces, result = asyncio.run(run())
    assert result is not None and "".join(pieces) == result.text == plain.text and result.fee == charged(plain)


@pytest.mark.parametrize(
    ("reason", "change"),
    [
        ("output_hash", lambda body: body["choices"][0]["message"].update(content="Tampered.")),
        ("usage", lambda body: body["usage"].update(completion_tokens=body["usage"]["completion_tokens"] - 1)),
        ("format", lambda body: body["haca"]["receipt"].update(fee="1")),  # the header's receipt differs
    ],
)
def test_the_sdk_refuses_an_answer_changed_on_the_way(
    node: routes.Node, reason: str, change: Callable[[dict[str, Any]], None]
) -> None:
    with sdk(node, Tampering(change)) as client, pytest.raises(LlmReceiptInvalid) as caught:
        client.chat("smollm2", [{"role": "user", "content": "Name a colour."}], max_tokens=6)
    assert caught.value.reason == reason


def test_the_sdk_refuses_a_max_fee_below_the_bound_before_paying(node: routes.Node) -> None:
    with sdk(node) as client, pytest.raises(PaymentRequiredError, match="more than the max fee 10"):
        client.chat("smollm2", [{"role": "user", "content": "Hi"}], max_tokens=6, max_fee=10)
    with sdk(node) as client, pytest.raises(InputInvalid, match="temperature"):
        client.chat("smollm2", [{"role": "user", "content": "Hi"}], temperature=3)
    assert node.store.unsettled_count() == 0  # nothing was sent with a payment


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
        },
    },
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_the_sdk_checks_a_tool_call_against_the_text_its_receipt_covers(node: routes.Node) -> None:
    with sdk(node) as client:
        result = client.chat(
            "smollm2", ASK_WEATHER, max_tokens=40, temperature=0, tools=[WEATHER], tool_choice="required"
        )
    (call,) = result.tool_calls
    assert call.name == "get_weather" and set(json.loads(call.arguments)) == {"city"}
    assert result.finish_reason == "tool_calls" and json.loads(result.text)["name"] == "get_weather"
    assert result.body["choices"][0]["message"]["tool_calls"] == [call.to_json()]


@pytest.mark.parametrize(
    ("reason", "change"),
    [
        # the same call written otherwise: the calls derived agree, the receipt's text hash does not
        (
            "output_hash",
            lambda body: body["haca"].update(output_text=json.dumps(json.loads(body["haca"]["output_text"]))),
        ),
        (
            "tool_calls",
            lambda body: body["choices"][0]["message"]["tool_calls"][0]["function"].update(arguments='{"city":"Oslo"}'),
        ),
    ],
)
def test_the_sdk_refuses_a_tool_call_changed_on_the_way(
    node: routes.Node, reason: str, change: Callable[[dict[str, Any]], None]
) -> None:
    with sdk(node, Tampering(change)) as client, pytest.raises(LlmReceiptInvalid) as caught:
        client.chat("smollm2", ASK_WEATHER, max_tokens=40, temperature=0, tools=[WEATHER], tool_choice="required")
    assert caught.value.reason == reason


def test_a_402_header_nested_too_deep_is_a_payment_required_error_not_a_crash() -> None:
    """Found while fuzzing: json.loads raises RecursionError for deep nesting, not a ValueError."""
    deep = base64.b64encode(b"[" * 5000 + b"]" * 5000).decode()
    with pytest.raises(PaymentRequiredError, match="without usable requirements"):
        llm_offers(deep)
