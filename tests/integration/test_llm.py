"""Issue 10 on a live 4-validator devnet: LLM inference (SmolLM2-135M GGUF through llama.cpp) with
the clients people already use — the official `openai` package, unmodified, paying with an API
key from `haca allowance create`, and the official `x402` package with HACA's scheme registered —
settling in tee mode as `verified`, the fee exactly usage x the manifest's per-token prices, the
settlement fee burned; bad requests get OpenAI error objects and the node keeps serving."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from typing import Any

import httpx
import openai
import pytest
from langchain_core.tools import tool as lc_tool
from langchain_openai import ChatOpenAI
from llama_cpp import Llama
from openai.lib._parsing._completions import type_to_response_format_param
from pydantic import BaseModel
from x402 import x402Client
from x402.http.clients.httpx import x402_httpx_transport

from haca.client.sdk import Client
from haca.client.x402 import HacaEscrowScheme
from haca.devnet.services import EXAMPLE_LLM, EXAMPLE_LLM_TERMS
from haca.runtime.llm import smollm2_path
from haca.types.llm import parse_request, text_hash
from haca.types.payment import PaymentAuthorization
from haca.types.receipt import SignedReceipt
from haca.types.registry import token_fee
from haca.types.x402 import PAYMENT_RESPONSE_HEADER, PAYMENT_SIGNATURE_HEADER, caip2_network
from tests.integration.helpers import assert_devnet_supply_holds, settlement_fee

pytestmark = pytest.mark.devnet
PROMPT_PRICE, COMPLETION_PRICE, CONTEXT = EXAMPLE_LLM_TERMS
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


class Net:
    def __init__(self, handle: Any) -> None:
        self.handle, self.home = handle, handle.home
        self.chain = handle.client
        node = handle.config.extra["nodes"][0]
        self.node, self.url = str(node["address"]), str(node["url"])

    def haca(self, *args: str) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "haca.cli.main", *args, "--home", str(self.home), "--json"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return dict(json.loads(done.stdout))

    def escrow(self, client: str) -> int:
        return int(self.chain.query("/inference/escrow", f"{client}/{self.node}".encode())["escrow"])

    def openai(self, api_key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=60)

    def wait_node_settled(self, timeout: float = 90) -> None:
        """Until node0 has settled everything it served (escrow then moves only for what follows)."""
        deadline = time.monotonic() + timeout
        while httpx.get(self.url + "/healthz").json()["pending_receipts"]:
            assert time.monotonic() < deadline, "node0 did not settle its receipts"
            time.sleep(0.3)

    def wait_record(self, receipt_id: str, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return dict(self.chain.query("/inference/receipt", receipt_id.encode()))
            except Exception:
                time.sleep(0.5)
        raise AssertionError(f"receipt {receipt_id} did not settle within {timeout} s")


@pytest.fixture(scope="module")
def net(inference_devnet) -> Net:
    return Net(inference_devnet)


@pytest.fixture(scope="module")
def api_key(net: Net) -> str:
    """dev1's escrow for node0 and an allowance API key from the CLI."""
    net.haca("deposit", str(10**9), "--node", net.node, "--from", "dev1")
    created = net.haca("allowance", "create", "--node", net.node, "--max", str(10**8), "--from", "dev1")
    return str(created["api_key"])


@pytest.fixture(scope="module")
def llama() -> Llama:
    """llama-cpp-python itself, the node's model and settings: what the node must answer."""
    return Llama(str(smollm2_path()), n_ctx=CONTEXT, n_threads=os.cpu_count() or 1, verbose=False, seed=0)


def test_the_openai_client_chats_completes_streams_and_lists_models_with_llama_cpps_text(net, api_key, llama):
    client = net.openai(api_key)
    listed = {m.id: m.model_extra for m in client.models.list()}  # id: the name a request uses
    smollm2 = net.chain.query("/registry/model", EXAMPLE_LLM.encode())
    assert listed[EXAMPLE_LLM]["model_id"] == smollm2["model_id"] and smollm2["kind"] == "gguf"

    params: dict[str, Any] = {"max_tokens": 24, "temperature": 0, "seed": 7}
    chat = client.chat.completions.create(model=EXAMPLE_LLM, messages=MESSAGES, **params)  # type: ignore[arg-type]
    expected = llama.create_chat_completion(messages=MESSAGES, stream=False, **params)  # type: ignore[arg-type]
    assert chat.choices[0].message.content == expected["choices"][0]["message"]["content"]
    assert chat.usage is not None and chat.usage.completion_tokens == expected["usage"]["completion_tokens"]
    assert chat.usage.prompt_tokens == expected["usage"]["prompt_tokens"]

    stream = client.chat.completions.create(model=EXAMPLE_LLM, messages=MESSAGES, stream=True, **params)  # type: ignore[arg-type]
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == chat.choices[0].message.content
    assert (chunks[-1].model_extra or {})["haca"]["receipt"]["completion_tokens"] == chat.usage.completion_tokens

    completion = client.completions.create(model=EXAMPLE_LLM, prompt="The sky is", **params)
    bare = llama.create_completion("The sky is", **params)
    assert completion.choices[0].text == bare["choices"][0]["text"]


def test_an_api_key_with_a_maximum_per_request_stops_a_long_generation_there_and_is_charged_no_more(net, api_key):
    """The attack an agent's key invites: one request that takes the whole cap. The key allows the
    prompt and 6 completion tokens per request; asked for 64, the node generates at most 6 and the
    chain settles that fee — the rest of the escrow stays the client's."""
    prompt_price, completion_price, _ = EXAMPLE_LLM_TERMS
    probe = net.openai(api_key).chat.completions.create(model=EXAMPLE_LLM, messages=MESSAGES, max_tokens=1)
    assert probe.usage is not None
    most = token_fee(prompt_price, completion_price, probe.usage.prompt_tokens, 6)
    created = net.haca(
        "allowance", "create", "--node", net.node, "--max", str(10**8), "--per-request", str(most), "--from", "dev1"
    )
    assert created["max_per_request"] == most
    key = net.handle.keys.get("dev1").key
    net.wait_node_settled()
    escrow_before = net.escrow(key.address)
    chat = net.openai(str(created["api_key"])).chat.completions.create(
        model=EXAMPLE_LLM, messages=MESSAGES, max_tokens=64, temperature=0
    )
    receipt = SignedReceipt.from_json((chat.model_extra or {})["haca"]["receipt"]).receipt
    assert chat.usage is not None and chat.usage.completion_tokens <= 6
    assert receipt.fee == token_fee(prompt_price, completion_price, receipt.prompt_tokens, receipt.completion_tokens)
    assert receipt.fee <= most
    net.wait_node_settled()
    assert net.escrow(key.address) == escrow_before - receipt.fee - settlement_fee(net.chain, receipt.fee)
    assert_devnet_supply_holds(net.handle)


def test_a_tee_chat_settles_verified_charging_usage_times_price_and_burning_the_settlement_fee(net, api_key):
    key = net.handle.keys.get("dev1").key
    net.wait_node_settled()
    escrow_before, burned_before = net.escrow(key.address), net.chain.supply()["burned"]
    chat = net.openai(api_key).chat.completions.create(model=EXAMPLE_LLM, messages=MESSAGES, max_tokens=16)
    haca = (chat.model_extra or {})["haca"]
    receipt = SignedReceipt.from_json(haca["receipt"]).receipt
    assert haca["mode"] == receipt.mode == "tee"  # the node's preferred mode for an LLM
    assert chat.usage is not None
    fee = chat.usage.prompt_tokens * PROMPT_PRICE + chat.usage.completion_tokens * COMPLETION_PRICE
    assert receipt.fee == fee
    assert (receipt.prompt_tokens, receipt.completion_tokens) == (
        chat.usage.prompt_tokens,
        chat.usage.completion_tokens,
    )
    with Client.from_home(net.home, "dev1") as client:
        verification = client.wait_verified(haca["receipt"]["id"], timeout=90)
    assert verification.verified and verification.chain_status == "verified", verification.reason
    record = net.chain.query("/inference/receipt", haca["receipt"]["id"].encode())
    assert int(record["fee"]) == fee and record["payment"] == "allowance"
    burned = settlement_fee(net.chain, fee)
    assert net.escrow(key.address) == escrow_before - fee - burned
    assert net.chain.supply()["burned"] >= burned_before + burned
    assert_devnet_supply_holds(net.handle)


def test_an_x402_client_with_the_haca_scheme_registered_pays_and_its_receipt_settles(net):
    key = net.handle.keys.get("dev2").key
    net.haca("deposit", str(10**9), "--node", net.node, "--from", "dev2")
    net.wait_node_settled()
    escrow_before = net.escrow(key.address)
    wire = RecordingTransport()

    async def pay() -> httpx.Response:
        x402 = x402Client()
        # bounded by the model's price on chain, read with proofs
        x402.register(caip2_network(net.handle.config.chain_id), HacaEscrowScheme(key, chain=net.chain))
        async with httpx.AsyncClient(transport=x402_httpx_transport(x402, wire), timeout=60) as http:
            body = {"model": EXAMPLE_LLM, "messages": MESSAGES, "max_tokens": 12}
            return await http.post(net.url + "/v1/chat/completions", json=body)

    answer = asyncio.run(pay())
    assert answer.status_code == 200, answer.text
    assert [status for _, status in wire.exchanges] == [402, 200]  # the 402, then the paid retry
    paid = wire.exchanges[1][0]
    assert PAYMENT_SIGNATURE_HEADER in paid.headers and PAYMENT_RESPONSE_HEADER in answer.headers
    receipt = SignedReceipt.from_json(answer.json()["haca"]["receipt"]).receipt
    assert receipt.client == key.address and receipt.mode == "tee"
    usage = answer.json()["usage"]
    assert receipt.fee == usage["prompt_tokens"] * PROMPT_PRICE + usage["completion_tokens"] * COMPLETION_PRICE
    record = net.wait_record(answer.json()["haca"]["receipt"]["id"])
    assert record["status"] == "verified" and record["payment"] == "request"
    assert net.escrow(key.address) == escrow_before - receipt.fee - settlement_fee(net.chain, receipt.fee)
    # what was signed is a bound (the context's worth of tokens), what is charged is the usage
    header = paid.headers[PAYMENT_SIGNATURE_HEADER]
    signed = json.loads(base64.b64decode(header))["payload"]["authorization"]
    assert receipt.fee <= PaymentAuthorization.from_json(signed).max_fee


class RecordingTransport(httpx.AsyncHTTPTransport):
    """The wire under x402's transport: every request it sends and the status it got."""

    def __init__(self) -> None:
        super().__init__()
        self.exchanges: list[tuple[httpx.Request, int]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        self.exchanges.append((request, response.status_code))
        return response


def test_bad_requests_get_openai_errors_with_the_right_status_and_the_node_keeps_serving(net, api_key):
    client = net.openai(api_key)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as role:
        client.chat.completions.create(model=EXAMPLE_LLM, messages=[{"role": "wizard", "content": "hi"}])  # type: ignore[list-item]
    assert role.value.param == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as context:
        client.chat.completions.create(model=EXAMPLE_LLM, messages=MESSAGES, max_tokens=CONTEXT * 2)
    assert context.value.code == "context_length_exceeded"
    malformed = httpx.post(
        net.url + "/v1/chat/completions",
        content=b'{"model": "smollm2", "messages": [',
        headers={"Authorization": f"Bearer {api_key}", "content-type": "application/json"},
    )
    assert malformed.status_code == 400 and malformed.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.APIStatusError) as unpaid:
        net.openai("sk-not-a-haca-key").chat.completions.create(model=EXAMPLE_LLM, messages=MESSAGES)
    assert unpaid.value.status_code == 402 and unpaid.value.code == "payment_required"
    ok = client.chat.completions.create(model=EXAMPLE_LLM, messages=MESSAGES, max_tokens=4)
    assert ok.choices[0].message.content


def test_haca_model_create_registers_a_gguf_file_as_an_llm_priced_per_token(net, tmp_path):
    # Other bytes than smollm2's (a model id is registered under one name only).
    path = tmp_path / "other.gguf"
    path.write_bytes(smollm2_path().read_bytes() + b"\0")
    created = net.haca(
        "model", "create", "--name", "other-llm", "--file", str(path), "--modes", "tee,vanilla",
        "--price", "5", "--completion-price", "9", "--max-rows", "1024", "--from", "dev3",
    )  # fmt: skip
    assert (created["kind"], created["price_unit"], created["price"], created["completion_price"]) == (
        "gguf",
        "token",
        5,
        9,
    )
    manifest = net.chain.query("/registry/model", b"other-llm")
    assert manifest["kind"] == "gguf" and manifest["completion_price"] == "9" and manifest["max_rows"] == 1024
    assert manifest["input_schema"] == {} and manifest["output_schema"] == {}


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def test_agent_requests_settle_verified_and_their_receipts_commit_to_what_shaped_them(net, api_key):
    """Issue 22 on the devnet, tee (node0's preferred mode for an LLM): a tool call, a JSON-schema
    answer and a Responses API call by the unmodified openai client each settle `verified`; each
    receipt's input hash is the request as sent (tools, schema, Responses input) and its output hash
    the text generated, and `haca verify` re-verifies each from proven chain state."""
    client, model_id = net.openai(api_key), net.chain.query("/registry/model", EXAMPLE_LLM.encode())["model_id"]
    asked = {"model": EXAMPLE_LLM, "messages": MESSAGES, "max_tokens": 40, "temperature": 0}
    tool_body = {**asked, "tools": [WEATHER], "tool_choice": "required"}
    call = client.chat.completions.create(**tool_body)
    (made,) = call.choices[0].message.tool_calls
    assert made.function.name == "get_weather" and set(json.loads(made.function.arguments)) == {"city"}
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 40}}, "required": ["answer"]}
    format_body = {**asked, "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}}
    structured = client.chat.completions.create(**format_body)
    assert set(json.loads(structured.choices[0].message.content)) == {"answer"}
    responses_body = {"model": EXAMPLE_LLM, "input": "Name a colour.", "max_output_tokens": 12, "temperature": 0}
    response = client.responses.create(**responses_body)
    assert response.output_text
    answers = [
        (call.model_extra["haca"], parse_request(tool_body, "chat"), call.model_extra["haca"]["output_text"]),
        (structured.model_extra["haca"], parse_request(format_body, "chat"), structured.choices[0].message.content),
        (response.model_extra["haca"], parse_request(responses_body, "response"), response.output_text),
    ]
    with Client.from_home(net.home, "dev1") as sdk:
        for haca, request, text in answers:
            receipt = SignedReceipt.from_json(haca["receipt"]).receipt
            assert receipt.mode == "tee" and receipt.input_hash == request.hash(model_id)
            assert receipt.output_hash == text_hash(text)
            verification = sdk.wait_verified(haca["receipt"]["id"], timeout=120)
            assert verification.verified and verification.chain_status == "verified", verification.reason
    assert_devnet_supply_holds(net.handle)


class Colour(BaseModel):
    name: str


def _settles_verified(net: Net, receipt: dict[str, Any], request: Any, text: str) -> None:
    """The receipt commits to `request` (an LlmRequest) and `text`, and settles verified, re-verified
    by the SDK from proven chain state."""
    model_id = net.chain.query("/registry/model", EXAMPLE_LLM.encode())["model_id"]
    signed = SignedReceipt.from_json(receipt).receipt
    assert signed.input_hash == request.hash(model_id) and signed.output_hash == text_hash(text)
    with Client.from_home(net.home, "dev1") as sdk:
        verification = sdk.wait_verified(receipt["id"], timeout=120)
    assert verification.verified and verification.chain_status == "verified", verification.reason


def test_every_agent_feature_through_the_official_clients_settles_verified(net, api_key):
    """Issue 22's acceptance on the devnet: parse() with a Pydantic model, JSON mode, logprobs, a
    streamed tool call, a follow-up turn with the tool's result, a streamed Responses call, and
    LangChain's bind_tools and with_structured_output; each receipt commits to what was sent and
    generated and settles verified."""
    client = net.openai(api_key)
    base = {"model": EXAMPLE_LLM, "messages": MESSAGES, "max_tokens": 40, "temperature": 0}

    parsed = client.chat.completions.parse(**base, response_format=Colour)
    assert isinstance(parsed.choices[0].message.parsed, Colour)
    sent = {**base, "response_format": type_to_response_format_param(Colour)}
    _settles_verified(net, parsed.model_extra["haca"]["receipt"], parse_request(sent, "chat"),
                      parsed.choices[0].message.content)  # fmt: skip

    json_mode = {**base, "response_format": {"type": "json_object"}, "logprobs": True, "top_logprobs": 2}
    json_mode |= {
        "messages": [{"role": "user", "content": "Return a JSON object with a key colour naming one colour."}]
    }
    json_mode["max_tokens"] = 64
    answer = client.chat.completions.create(**json_mode)
    json.loads(answer.choices[0].message.content)
    assert "".join(t.token for t in answer.choices[0].logprobs.content) == answer.choices[0].message.content
    _settles_verified(net, answer.model_extra["haca"]["receipt"], parse_request(json_mode, "chat"),
                      answer.choices[0].message.content)  # fmt: skip

    tools = {**base, "tools": [WEATHER], "tool_choice": "required", "stream": True}
    chunks = list(client.chat.completions.create(**tools))
    ((call,),) = [c.choices[0].delta.tool_calls for c in chunks if c.choices[0].delta.tool_calls]
    haca = chunks[-1].model_extra["haca"]
    _settles_verified(net, haca["receipt"], parse_request(tools, "chat"), haca["output_text"])

    follow = {
        **base,
        "tools": [WEATHER],
        "tool_choice": "none",
        "messages": [
            *MESSAGES,
            {"role": "assistant", "content": None, "tool_calls": [{"id": call.id, "type": "function",
                                                                    "function": call.function.model_dump()}]},
            {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"},
        ],
    }  # fmt: skip
    answer = client.chat.completions.create(**follow)
    _settles_verified(net, answer.model_extra["haca"]["receipt"], parse_request(follow, "chat"),
                      answer.choices[0].message.content)  # fmt: skip

    responses = {"model": EXAMPLE_LLM, "input": "Name a colour.", "max_output_tokens": 12, "temperature": 0,
                 "stream": True}  # fmt: skip
    events = list(client.responses.create(**responses))
    done = events[-1].response
    _settles_verified(net, done.model_extra["haca"]["receipt"], parse_request(responses, "response"), done.output_text)

    tool = {"type": "function", **WEATHER["function"]}  # the Responses API's flat function tool
    called = {"model": EXAMPLE_LLM, "input": "Weather in Rome?", "tools": [tool], "tool_choice": "required",
              "max_output_tokens": 40, "temperature": 0}  # fmt: skip
    response = client.responses.create(**called)
    assert response.output[0].type == "function_call" and response.output[0].name == "get_weather"
    haca = response.model_extra["haca"]
    _settles_verified(net, haca["receipt"], parse_request(called, "response"), haca["output_text"])

    chat = ChatOpenAI(model=EXAMPLE_LLM, base_url=net.url + "/v1", api_key=api_key, temperature=0, max_tokens=40,
                      max_retries=0, include_response_headers=True)  # fmt: skip
    message = chat.bind_tools([get_weather], tool_choice="get_weather").invoke("What is the weather in Paris?")
    assert message.tool_calls[0]["name"] == "get_weather"
    receipt = json.loads(base64.urlsafe_b64decode(message.response_metadata["headers"]["x-haca-receipt"]))
    with Client.from_home(net.home, "dev1") as sdk:
        assert sdk.wait_verified(receipt["id"], timeout=120).verified
    structured = chat.with_structured_output(Colour, include_raw=True).invoke("Name a colour.")
    raw = structured["raw"]
    receipt = json.loads(base64.urlsafe_b64decode(raw.response_metadata["headers"]["x-haca-receipt"]))
    assert SignedReceipt.from_json(receipt).receipt.output_hash == text_hash(raw.content)
    with Client.from_home(net.home, "dev1") as sdk:
        assert sdk.wait_verified(receipt["id"], timeout=120).verified
    assert_devnet_supply_holds(net.handle)


@lc_tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"sunny in {city}"
