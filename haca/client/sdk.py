"""`haca.Client` and `haca.AsyncClient`: pay for inferences, check receipts, follow settlement.

Both share the protocol logic in haca.client.payment; they differ only in HTTP transport.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from haca.client.batch import BatchInclusion, prove_batched_receipt
from haca.client.chain import ChainClient, TxOutcome
from haca.client.config import ClientConfig, KeyStore, connect, resolve_home
from haca.client.errors import HacaError, NotFound, QueryFailed
from haca.client.llm import LlmOffer, LlmReceiptInvalid, llm_max_fee, llm_offers, select_offer, verify_llm_answer
from haca.client.payment import (
    InputInvalid,
    PaymentOffer,
    PaymentRequiredError,
    ReceiptInvalid,
    accept_fee,
    chain_terms,
    check_height_hint,
    create_api_key,
    input_rows,
    sign_payment,
    verify_answer,
)
from haca.client.tee import ReceiptVerification, enclave_lookup, verify_tee_receipt
from haca.client.zk import proof_from_chain, verify_zkml_receipt
from haca.crypto.keys import PrivateKey
from haca.types.inference import MsgDeposit, MsgWithdraw
from haca.types.llm import LlmRequest, LlmRequestError, parse_request
from haca.types.modes import Mode, Status
from haca.types.payment import PaymentAuthorization
from haca.types.receipt import Receipt, SignedReceipt
from haca.types.x402 import PAYMENT_REQUIRED_HEADER


class NodeError(HacaError):
    """The node refused the request (4xx/5xx other than 402)."""

    code = "node_error"

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InferenceResult:
    output: dict[str, Any]  # {name: {"dtype", "shape", "data"}}
    receipt: SignedReceipt
    status: str
    node_url: str

    @property
    def receipt_id(self) -> str:
        return self.receipt.id

    def to_json(self) -> dict[str, Any]:
        return {"output": self.output, "receipt": self.receipt.to_json(), "status": self.status}


Messages = Sequence[Mapping[str, Any] | tuple[str, str]]  # [{"role", "content"}] or [(role, content)]
CHAT_PATH, COMPLETION_PATH = "/v1/chat/completions", "/v1/completions"


@dataclass(frozen=True)
class LlmResult:
    """A verified LLM answer: the text, why it ended, the tokens used and the receipt charging them."""

    text: str
    finish_reason: str
    usage: dict[str, int]  # prompt_tokens, completion_tokens, total_tokens
    receipt: SignedReceipt
    mode: str
    status: str
    body: dict[str, Any]  # the node's answer (non-streamed) or its last chunk (streamed)
    node_url: str

    @property
    def receipt_id(self) -> str:
        return self.receipt.id

    @property
    def fee(self) -> int:
        return self.receipt.receipt.fee

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "receipt_id": self.receipt_id,
            "fee": self.fee,
            "mode": self.mode,
            "status": self.status,
            "receipt": self.receipt.to_json(),
        }


@dataclass(frozen=True)
class _LlmCall:
    """One LLM request on its way: what is sent, on what offer, under which authorisation."""

    request: LlmRequest
    offer: LlmOffer
    manifest: dict[str, Any]
    auth: PaymentAuthorization
    header: str  # X-PAYMENT
    url: str


def _llm_request(kind: str, model: str, content: Messages | str, stream: bool, **params: Any) -> LlmRequest:
    """The request as the node will read it (checked as the node checks it, before paying)."""
    body: dict[str, Any] = {"model": model, "stream": stream}
    body.update({k: v for k, v in params.items() if v is not None})
    try:
        if kind == "chat":
            if isinstance(content, str):
                raise TypeError("messages must be a list of {role, content} or (role, content)")
            body["messages"] = [_message(m) for m in content]
        else:
            body["prompt"] = content
        return parse_request(body, kind)
    except (LlmRequestError, TypeError, ValueError) as exc:
        raise InputInvalid(str(exc)) from exc


def _message(message: Mapping[str, Any] | tuple[str, str]) -> dict[str, Any]:
    if isinstance(message, Mapping):
        return {"role": message.get("role"), "content": message.get("content")}
    role, content = message
    return {"role": role, "content": content}


class _StreamReader:
    """Reads a node's server-sent events: the text pieces, then the last chunk's usage and receipt."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.pieces: list[str] = []
        self.last: dict[str, Any] | None = None
        self.finish_reason = ""
        self.done = False

    def feed(self, line: str) -> str | None:
        """The text piece a line carries, if any."""
        if self.done or not line.startswith("data:"):
            return None
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return None
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as exc:
            raise NodeError(f"node sent a malformed stream chunk: {exc}") from exc
        if not isinstance(chunk, dict):
            raise NodeError("node sent a malformed stream chunk")
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise NodeError(f"node failed mid-stream: {message}")
        choice = (chunk.get("choices") or [{}])[0]
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])
        if "haca" in chunk:
            self.last = chunk
        piece = choice.get("delta", {}).get("content") if self.kind == "chat" else choice.get("text")
        if isinstance(piece, str) and piece:
            self.pieces.append(piece)
            return piece
        return None

    def answer(self) -> tuple[str, dict[str, Any], str]:
        """(text, last chunk, finish reason) once the stream is over."""
        if self.last is None:
            raise NodeError("the stream ended without its receipt")
        return "".join(self.pieces), self.last, self.finish_reason


_Finish = Callable[[str, dict[str, Any], str], "LlmResult"]  # (text, last chunk, finish reason) -> checked


class LlmStream:
    """The text of a streamed answer, piece by piece; `result` (verified) once it is exhausted."""

    def __init__(self, response: httpx.Response, kind: str, finish: _Finish) -> None:
        self._response, self._reader, self._finish = response, _StreamReader(kind), finish
        self.result: LlmResult | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            for line in self._response.iter_lines():
                piece = self._reader.feed(line)
                if piece is not None:
                    yield piece
                if self._reader.done:
                    break
        finally:
            self._response.close()
        self.result = self._finish(*self._reader.answer())

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> LlmStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncLlmStream:
    """As LlmStream, for AsyncClient: `async for piece in stream`, then `stream.result`."""

    def __init__(self, response: httpx.Response, kind: str, finish: _Finish) -> None:
        self._response, self._reader, self._finish = response, _StreamReader(kind), finish
        self.result: LlmResult | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            async for line in self._response.aiter_lines():
                piece = self._reader.feed(line)
                if piece is not None:
                    yield piece
                if self._reader.done:
                    break
        finally:
            await self._response.aclose()
        text, last, finish_reason = self._reader.answer()
        self.result = await asyncio.to_thread(self._finish, text, last, finish_reason)

    async def aclose(self) -> None:
        await self._response.aclose()


class _Base:
    def __init__(self, node_url: str, key: PrivateKey, chain: ChainClient, node_address: str | None = None) -> None:
        self.node_url = node_url.rstrip("/")
        self.key = key
        self.chain = chain
        self._node_address = node_address.lower() if node_address else None
        self.srs_dir: Path | None = None  # zkml: the network's genesis SRS files, to verify proofs locally

    def _terms(self, offer: PaymentOffer) -> dict[str, Any]:
        """The chain's terms for the offer: the manifest in effect at the quoted height (which
        must be the model the node names, and a height near the chain's own), for a node the
        chain has registered in that mode; read with state proofs (haca.client.payment.chain_terms),
        so that the RPC cannot raise the price the fee is bounded by."""
        return chain_terms(self.chain, offer.model_id, offer.model, offer.mode, offer.node, offer.terms_height)

    def _payment(self, input: Any, offer: PaymentOffer, max_fee: int | None) -> tuple[dict[str, Any], int]:
        manifest = self._terms(offer)
        return manifest, accept_fee(offer, input_rows(input, manifest["input_schema"]), max_fee, manifest)

    def _offer(self, first: httpx.Response, model: str, mode: str) -> PaymentOffer:
        """The node's answer to an unpaid request must be a 402 with its payment requirements."""
        if first.status_code != 402:
            raise (
                self._error(first) if first.status_code >= 400 else PaymentRequiredError("node did not ask to be paid")
            )
        return PaymentOffer.from_402(first.json(), model, mode)

    def _result(
        self,
        paid: httpx.Response,
        input: Any,
        manifest: dict[str, Any],
        offer: PaymentOffer,
        auth: PaymentAuthorization,
    ) -> InferenceResult:
        """Check the paid answer's receipt locally before handing it out."""
        if paid.status_code != 200:
            raise self._error(paid)
        answer = paid.json()
        enclave = None
        if offer.mode == Mode.TEE:  # the key that signed must be one the chain attested for this node
            hint = answer.get("receipt", {}).get("height_hint") if isinstance(answer, dict) else None
            if not isinstance(hint, int):
                raise ReceiptInvalid("answer does not verify: the receipt has no height hint")
            enclave = enclave_lookup(self.chain, manifest["name"], hint)
        circuit = manifest.get("circuit") if offer.mode == Mode.ZKML else None
        signed = verify_answer(answer, input, manifest["input_schema"], offer.node, auth, enclave, circuit)
        check_height_hint(signed.receipt.height_hint, offer.terms_height)
        return InferenceResult(answer["output"], signed, answer.get("status", Status.PENDING), self.node_url)

    # --- LLMs (the node's OpenAI-compatible routes) -------------------------------------------

    def _llm_offer(self, probe: httpx.Response, model: str, mode: str | None) -> LlmOffer:
        """The node's answer to an unpaid LLM request must be a 402 with its PAYMENT-REQUIRED header."""
        if probe.status_code != 402:
            raise (
                self._error(probe) if probe.status_code >= 400 else PaymentRequiredError("node did not ask to be paid")
            )
        header = probe.headers.get(PAYMENT_REQUIRED_HEADER)
        if not header:
            raise PaymentRequiredError(f"node answered 402 without a {PAYMENT_REQUIRED_HEADER} header")
        return select_offer(llm_offers(header), model, mode)

    def _llm_pay(self, request: LlmRequest, offer: LlmOffer, max_fee: int | None, path: str) -> _LlmCall:
        """Check the offer against the chain, bound the fee and sign the authorisation for it."""
        manifest = self._terms(offer)
        fee = llm_max_fee(offer, request, max_fee, manifest)
        auth, header = sign_payment(self.key, offer, fee)
        return _LlmCall(request, offer, manifest, auth, header, f"{self.node_url}{path}")

    def _llm_checked(
        self, call: _LlmCall, text: str, body: dict[str, Any], finish_reason: str, receipt_header: str | None = None
    ) -> LlmResult:
        """Check the answer's receipt locally (tee: the enclave key's standing on chain) before handing it out."""
        haca = body.get("haca")
        usage = body.get("usage")
        if not isinstance(haca, dict) or not isinstance(usage, dict):
            raise LlmReceiptInvalid("format", "answer carries no receipt or no usage")
        receipt = haca.get("receipt")
        if receipt_header is not None:
            try:
                in_header = json.loads(base64.urlsafe_b64decode(receipt_header))
            except (binascii.Error, ValueError) as exc:
                raise LlmReceiptInvalid("format", f"x-haca-receipt header is malformed: {exc}") from exc
            if not isinstance(receipt, dict) or in_header != receipt:
                raise LlmReceiptInvalid("format", "the x-haca-receipt header and the body carry different receipts")
        enclave = None
        if call.offer.mode == Mode.TEE:  # the key that signed must be one the chain attested for this node
            hint = receipt.get("height_hint") if isinstance(receipt, dict) else None
            if not isinstance(hint, int):
                raise LlmReceiptInvalid("format", "the receipt has no height hint")
            enclave = enclave_lookup(self.chain, call.manifest["name"], hint)
        signed = verify_llm_answer(receipt, call.request, text, usage, call.offer, call.auth, enclave)
        check_height_hint(signed.receipt.height_hint, call.offer.terms_height)
        counts = {k: int(usage.get(k, 0)) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        status = str(haca.get("status", Status.PENDING))
        return LlmResult(text, finish_reason, counts, signed, signed.receipt.mode, status, body, self.node_url)

    def _llm_answer(self, call: _LlmCall, paid: httpx.Response) -> LlmResult:
        """A non-streamed answer, checked."""
        if paid.status_code != 200:
            raise self._error(paid)
        try:
            body = paid.json()
            choice = body["choices"][0]
            text = choice["message"]["content"] if call.request.kind == "chat" else choice["text"]
            finish_reason = str(choice.get("finish_reason") or "")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise NodeError(f"node answered a malformed completion: {exc}") from exc
        if not isinstance(text, str) or not isinstance(body, dict):
            raise NodeError("node answered a malformed completion")
        return self._llm_checked(call, text, body, finish_reason, paid.headers.get("x-haca-receipt"))

    def _llm_stream_finish(self, call: _LlmCall) -> _Finish:
        def finish(text: str, last: dict[str, Any], finish_reason: str) -> LlmResult:
            return self._llm_checked(call, text, last, finish_reason)

        return finish

    def _error(self, response: httpx.Response) -> HacaError:
        try:
            error = response.json()["error"]
            message = error if isinstance(error, str) else error["message"]  # x402 bodies carry a string
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        if response.status_code == 402:
            return PaymentRequiredError(f"node refused the payment: {message}")
        return NodeError(f"node answered {response.status_code}: {message}", response.status_code)

    def receipt_status(self, receipt_id: str, receipt: Receipt | None = None) -> dict[str, Any]:
        """The chain's settlement record if settled, else {"status": "pending"}. A receipt settled
        in a batch has no record of its own, only its request's mark (found with the receipt's
        client and request id): pass `receipt` to find it."""
        try:
            return self.chain.query("/inference/receipt", receipt_id.encode())
        except QueryFailed:
            pass
        if receipt is not None:
            try:
                mark = self.chain.query("/inference/request", f"{receipt.client}/{receipt.request_id}".encode())
            except QueryFailed:
                mark = {}
            if mark.get("receipt_id") == receipt_id and "batch" in mark:
                return {**mark, "node": receipt.node, "client": receipt.client, "fee": str(receipt.fee)}
        return {"receipt_id": receipt_id, "status": Status.PENDING.value}

    def node_address(self) -> str:
        """The node's account: from the client's config, else as the node reports it."""
        if self._node_address is None:
            try:
                self._node_address = str(httpx.get(f"{self.node_url}/healthz", timeout=10).json()["node"]).lower()
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                raise NodeError(f"cannot learn the node's address from {self.node_url}/healthz: {exc}") from exc
        return self._node_address

    def deposit(self, amount: int, node: str | None = None) -> TxOutcome:
        """Escrow `amount` for `node` (default: this client's node); only that node is paid from it."""
        outcome = self.chain.send_msgs(self.key, (MsgDeposit(node or self.node_address(), amount),))
        assert isinstance(outcome, TxOutcome)
        return outcome

    def withdraw(self, amount: int, node: str | None = None) -> TxOutcome:
        outcome = self.chain.send_msgs(self.key, (MsgWithdraw(node or self.node_address(), amount),))
        assert isinstance(outcome, TxOutcome)
        return outcome

    def escrow(self, node: str | None = None) -> int:
        """What this client holds in escrow for `node` (default: this client's node)."""
        data = f"{self.key.address}/{node or self.node_address()}"
        return int(self.chain.query("/inference/escrow", data.encode())["escrow"])

    def create_api_key(self, node: str, cap: int, expires_in: int, nonce: int | None = None) -> str:
        expiry = self.chain.rpc.height() + expires_in
        return create_api_key(self.key, self.chain.chain_id, node, cap, expiry, nonce if nonce is not None else expiry)


class Client(_Base):
    """Synchronous client. `Client.from_home()` reads a CLI home (config + keys)."""

    def __init__(
        self,
        node_url: str,
        key: PrivateKey,
        chain: ChainClient,
        timeout: float = 30.0,
        node_address: str | None = None,
    ) -> None:
        super().__init__(node_url, key, chain, node_address)
        self.http = httpx.Client(timeout=timeout)

    @classmethod
    def from_home(cls, home: Path | str | None = None, key: str | None = None, node_url: str | None = None) -> Client:
        node_url, stored, chain, address, srs_dir = _from_home(home, key, node_url)
        client = cls(node_url, stored, chain, node_address=address)
        client.srs_dir = srs_dir
        return client

    def close(self) -> None:
        self.http.close()
        self.chain.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def infer(self, model: str, input: Any, mode: str = Mode.VANILLA, max_fee: int | None = None) -> InferenceResult:
        """Run `model` on `input`, paying the node's quote when it is at most `max_fee` (default:
        at most the price published on chain); the receipt is checked before returning."""
        probe = self.http.post(f"{self.node_url}/v1/infer", json={"model": model, "mode": mode})
        offer = self._offer(probe, model, mode)
        manifest, fee = self._payment(input, offer, max_fee)
        auth, header = sign_payment(self.key, offer, fee)
        body = {"model": model, "mode": mode, "input": input}
        paid = self.http.post(f"{self.node_url}/v1/infer", json=body, headers={"X-PAYMENT": header})
        return self._result(paid, input, manifest, offer, auth)

    def chat(
        self,
        model: str,
        messages: Messages,
        *,
        mode: str | None = None,
        max_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        max_fee: int | None = None,
    ) -> LlmResult:
        """A chat completion from `model` (in `mode`, default the node's preferred one), paid with
        an authorisation for at most what it may cost (within `max_fee`, or by default at the
        model's per-token prices on chain); the receipt is checked against the text before returning."""
        request = _llm_request("chat", model, messages, False, **_params(max_tokens, temperature, top_p, seed, stop))
        return self._llm(request, mode, max_fee, CHAT_PATH)

    def completion(
        self,
        model: str,
        prompt: str,
        *,
        mode: str | None = None,
        max_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        max_fee: int | None = None,
    ) -> LlmResult:
        """A text completion of `prompt`; as `chat`."""
        request = _llm_request(
            "completion", model, prompt, False, **_params(max_tokens, temperature, top_p, seed, stop)
        )
        return self._llm(request, mode, max_fee, COMPLETION_PATH)

    def chat_stream(
        self,
        model: str,
        messages: Messages,
        *,
        mode: str | None = None,
        max_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        max_fee: int | None = None,
    ) -> LlmStream:
        """`chat`, streamed: iterate the returned LlmStream for the text pieces as they come; its
        `result` is set (verified from the last chunk's receipt) once the stream is exhausted."""
        request = _llm_request("chat", model, messages, True, **_params(max_tokens, temperature, top_p, seed, stop))
        return self._llm_stream(request, mode, max_fee, CHAT_PATH)

    def completion_stream(
        self,
        model: str,
        prompt: str,
        *,
        mode: str | None = None,
        max_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        max_fee: int | None = None,
    ) -> LlmStream:
        """`completion`, streamed; as `chat_stream`."""
        request = _llm_request("completion", model, prompt, True, **_params(max_tokens, temperature, top_p, seed, stop))
        return self._llm_stream(request, mode, max_fee, COMPLETION_PATH)

    def _llm_prepare(self, request: LlmRequest, mode: str | None, max_fee: int | None, path: str) -> _LlmCall:
        probe = self.http.post(f"{self.node_url}{path}", json={"model": request.model})
        return self._llm_pay(request, self._llm_offer(probe, request.model, mode), max_fee, path)

    def _llm(self, request: LlmRequest, mode: str | None, max_fee: int | None, path: str) -> LlmResult:
        call = self._llm_prepare(request, mode, max_fee, path)
        paid = self.http.post(call.url, json=request.to_openai(), headers={"X-PAYMENT": call.header})
        return self._llm_answer(call, paid)

    def _llm_stream(self, request: LlmRequest, mode: str | None, max_fee: int | None, path: str) -> LlmStream:
        call = self._llm_prepare(request, mode, max_fee, path)
        sent = self.http.build_request("POST", call.url, json=request.to_openai(), headers={"X-PAYMENT": call.header})
        response = self.http.send(sent, stream=True)
        if response.status_code != 200:
            response.read()
            response.close()
            raise self._error(response)
        return LlmStream(response, request.kind, self._llm_stream_finish(call))

    def node_receipt(self, receipt_id: str) -> dict[str, Any]:
        response = self.http.get(f"{self.node_url}/v1/receipts/{receipt_id}")
        if response.status_code == 404:
            raise NotFound(f"node has no receipt {receipt_id}")
        if response.status_code != 200:
            raise self._error(response)
        answer: dict[str, Any] = response.json()
        return answer

    def wait_settled(self, receipt_id: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        receipt: Receipt | None = None
        while True:
            record = self.receipt_status(receipt_id, receipt)
            if record["status"] != Status.PENDING:
                return record
            if receipt is None:  # it may settle in a batch: its request's mark is found by the receipt
                receipt = _checked_receipt(self.node_receipt(receipt_id), receipt_id).receipt
            if time.monotonic() > deadline:
                raise HacaError(f"receipt {receipt_id} not settled within {timeout:.0f}s")
            time.sleep(0.3)

    def verify_receipt(self, receipt: str | SignedReceipt) -> ReceiptVerification:
        """Re-verify a receipt (by id: fetched from the node) against proven chain state: the
        enclave key's attestation and standing, the policy, the signature (see haca.client.tee)."""
        stored = None if isinstance(receipt, SignedReceipt) else self.node_receipt(receipt)
        signed = receipt if isinstance(receipt, SignedReceipt) else _checked_receipt(stored or {}, receipt)
        if signed.receipt.mode == Mode.ZKML:  # the proof from the chain's settlement tx, else from the node
            proof = proof_from_chain(self.chain, signed.id)
            if not proof:
                stored = stored or self.node_receipt(signed.id)
                proof = bytes.fromhex((stored.get("evidence") or "0x")[2:])
            return verify_zkml_receipt(self.chain, signed, proof, self.srs_dir)
        return verify_tee_receipt(self.chain, signed)

    def prove_batched(self, receipt: str | SignedReceipt) -> BatchInclusion:
        """Prove, from the chain alone, that a receipt settled in a batch: its request's mark and
        the batch root with state proofs, and its inclusion path to that root (haca.client.batch)."""
        if not isinstance(receipt, SignedReceipt):
            receipt = _checked_receipt(self.node_receipt(receipt), receipt)
        return prove_batched_receipt(self.chain, receipt.receipt)

    def wait_verified(self, receipt_id: str, timeout: float = 60.0) -> ReceiptVerification:
        """Wait for the chain to settle the receipt, then verify it locally."""
        self.wait_settled(receipt_id, timeout)
        return self.verify_receipt(receipt_id)


class AsyncClient(_Base):
    """asyncio client with the same behaviour; chain calls run in a worker thread."""

    def __init__(
        self,
        node_url: str,
        key: PrivateKey,
        chain: ChainClient,
        timeout: float = 30.0,
        node_address: str | None = None,
    ) -> None:
        super().__init__(node_url, key, chain, node_address)
        self.http = httpx.AsyncClient(timeout=timeout)

    @classmethod
    def from_home(
        cls, home: Path | str | None = None, key: str | None = None, node_url: str | None = None
    ) -> AsyncClient:
        node_url, stored, chain, address, srs_dir = _from_home(home, key, node_url)
        client = cls(node_url, stored, chain, node_address=address)
        client.srs_dir = srs_dir
        return client

    async def aclose(self) -> None:
        await self.http.aclose()
        self.chain.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def infer(
        self, model: str, input: Any, mode: str = Mode.VANILLA, max_fee: int | None = None
    ) -> InferenceResult:
        probe = await self.http.post(f"{self.node_url}/v1/infer", json={"model": model, "mode": mode})
        offer = self._offer(probe, model, mode)
        manifest, fee = await asyncio.to_thread(self._payment, input, offer, max_fee)
        auth, header = sign_payment(self.key, offer, fee)
        body = {"model": model, "mode": mode, "input": input}
        paid = await self.http.post(f"{self.node_url}/v1/infer", json=body, headers={"X-PAYMENT": header})
        return await asyncio.to_thread(self._result, paid, input, manifest, offer, auth)  # tee reads the chain

    async def chat(
        self,
        model: str,
        messages: Messages,
        *,
        mode: str | None = None,
        max_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        max_fee: int | None = None,
    ) -> LlmResult:
        """As Client.chat."""
        request = _llm_request("chat", model, messages, False, **_params(max_tokens, temperature, top_p, seed, stop))
        return await self._llm(request, mode, max_fee, CHAT_PATH)

    async def completion(
        self,
        model: str,
        prompt: str,
        *,
        mode: str | None = None,
        max_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        max_fee: int | None = None,
    ) -> LlmResult:
        """As Client.completion."""
        request = _llm_request(
            "completion", model, prompt, False, **_params(max_tokens, temperature, top_p, seed, stop)
        )
        return await self._llm(request, mode, max_fee, COMPLETION_PATH)

    async def chat_stream(
        self,
        model: str,
        messages: Messages,
        *,
        mode: str | None = None,
        max_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        max_fee: int | None = None,
    ) -> AsyncLlmStream:
        """As Client.chat_stream: `async for piece in await client.chat_stream(...)`, then `.result`."""
        request = _llm_request("chat", model, messages, True, **_params(max_tokens, temperature, top_p, seed, stop))
        return await self._llm_stream(request, mode, max_fee, CHAT_PATH)

    async def completion_stream(
        self,
        model: str,
        prompt: str,
        *,
        mode: str | None = None,
        max_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        max_fee: int | None = None,
    ) -> AsyncLlmStream:
        """As Client.completion_stream."""
        request = _llm_request("completion", model, prompt, True, **_params(max_tokens, temperature, top_p, seed, stop))
        return await self._llm_stream(request, mode, max_fee, COMPLETION_PATH)

    async def _llm_prepare(self, request: LlmRequest, mode: str | None, max_fee: int | None, path: str) -> _LlmCall:
        probe = await self.http.post(f"{self.node_url}{path}", json={"model": request.model})
        offer = self._llm_offer(probe, request.model, mode)
        return await asyncio.to_thread(self._llm_pay, request, offer, max_fee, path)

    async def _llm(self, request: LlmRequest, mode: str | None, max_fee: int | None, path: str) -> LlmResult:
        call = await self._llm_prepare(request, mode, max_fee, path)
        paid = await self.http.post(call.url, json=request.to_openai(), headers={"X-PAYMENT": call.header})
        return await asyncio.to_thread(self._llm_answer, call, paid)  # tee reads the chain

    async def _llm_stream(
        self, request: LlmRequest, mode: str | None, max_fee: int | None, path: str
    ) -> AsyncLlmStream:
        call = await self._llm_prepare(request, mode, max_fee, path)
        sent = self.http.build_request("POST", call.url, json=request.to_openai(), headers={"X-PAYMENT": call.header})
        response = await self.http.send(sent, stream=True)
        if response.status_code != 200:
            await response.aread()
            await response.aclose()
            raise self._error(response)
        return AsyncLlmStream(response, request.kind, self._llm_stream_finish(call))

    async def wait_settled(self, receipt_id: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        receipt: Receipt | None = None
        while True:
            record = await asyncio.to_thread(self.receipt_status, receipt_id, receipt)
            if record["status"] != Status.PENDING:
                return record
            if receipt is None:  # it may settle in a batch: its request's mark is found by the receipt
                response = await self.http.get(f"{self.node_url}/v1/receipts/{receipt_id}")
                if response.status_code != 200:
                    raise self._error(response)
                receipt = _checked_receipt(response.json(), receipt_id).receipt
            if time.monotonic() > deadline:
                raise HacaError(f"receipt {receipt_id} not settled within {timeout:.0f}s")
            await asyncio.sleep(0.3)

    async def verify_receipt(self, receipt: str | SignedReceipt) -> ReceiptVerification:
        """As Client.verify_receipt (the chain reads and proofs run in a worker thread)."""
        if isinstance(receipt, SignedReceipt):
            signed = receipt
        else:
            response = await self.http.get(f"{self.node_url}/v1/receipts/{receipt}")
            if response.status_code != 200:
                raise self._error(response)
            signed = _checked_receipt(response.json(), receipt)
        if signed.receipt.mode == Mode.ZKML:
            stored = (await self.http.get(f"{self.node_url}/v1/receipts/{signed.id}")).json()
            proof = bytes.fromhex((stored.get("evidence") or "0x")[2:])
            return await asyncio.to_thread(verify_zkml_receipt, self.chain, signed, proof, self.srs_dir)
        return await asyncio.to_thread(verify_tee_receipt, self.chain, signed)

    async def wait_verified(self, receipt_id: str, timeout: float = 60.0) -> ReceiptVerification:
        await self.wait_settled(receipt_id, timeout)
        return await self.verify_receipt(receipt_id)


def _params(
    max_tokens: int, temperature: float, top_p: float, seed: int | None, stop: str | Sequence[str] | None
) -> dict[str, Any]:
    stops = [stop] if isinstance(stop, str) else list(stop) if stop is not None else None
    return {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "seed": seed, "stop": stops}


def _checked_receipt(stored: dict[str, Any], receipt_id: str) -> SignedReceipt:
    """The signed receipt a node returned for `receipt_id`, refused if it is another one."""
    signed = SignedReceipt.from_json(stored["receipt"])
    if signed.id != receipt_id.lower():
        raise ReceiptInvalid(f"the node returned receipt {signed.id} for {receipt_id}")
    return signed


def _from_home(
    home: Path | str | None, key: str | None, node_url: str | None
) -> tuple[str, PrivateKey, ChainClient, str | None, Path | None]:
    resolved = resolve_home(home)
    config = ClientConfig.load(resolved)
    stored = KeyStore(resolved).get(key or config.default_key)
    nodes = config.extra.get("nodes") or []
    url = node_url or (nodes[0]["url"] if nodes else "")
    if not url:
        raise HacaError("no node URL: pass node_url or run a devnet that lists its nodes in the config")
    address = next((n.get("address") for n in nodes if n.get("url", "").rstrip("/") == url.rstrip("/")), None)
    srs = config.extra.get("srs_dir")
    return url, stored.key, connect(config), address, Path(srs) if srs else None
