"""The SDK's logic, once for `Client` and `AsyncClient`: each public method's flow (haca.client.flows),
from the probe through the 402, the chain's terms, the signed payment and the paid request to the
local check of the receipt; receipt status, batch inclusion and verification; escrow."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from haca.client.batch import BatchInclusion, prove_batched_receipt
from haca.client.chain import ChainClient, TxOutcome
from haca.client.errors import (
    AnswerLost,
    HacaError,
    NodeError,
    NodeNotFound,
    PaymentRequiredError,
    QueryFailed,
    node_error,
)
from haca.client.flows import Flow, Send, Sleep, work
from haca.client.llm import LlmOffer, LlmReceiptInvalid, llm_max_fee, llm_offers, select_offer, verify_llm_answer
from haca.client.payment import (
    PaymentOffer,
    ReceiptInvalid,
    accept_fee,
    chain_terms,
    check_height_hint,
    create_api_key,
    input_rows,
    sign_payment,
    verify_answer,
)
from haca.client.records import parse_answer
from haca.client.results import (
    CHAT_PATH,
    COMPLETION_PATH,
    FetchedOutput,
    InferenceResult,
    LlmOptions,
    LlmResult,
    Messages,
    ReceiptStatus,
    Streamed,
)
from haca.client.tee import ReceiptVerification, enclave_lookup, verify_tee_receipt
from haca.client.zk import proof_from_chain, verify_zkml_receipt
from haca.crypto.keys import PrivateKey
from haca.types.batch import BatchMark
from haca.types.inference import EscrowAnswer, MsgDeposit, MsgWithdraw
from haca.types.llm import LlmRequest, text_hash
from haca.types.modes import Mode, Status
from haca.types.outputs import ANSWER_LOST, OUTPUT_SIGNATURE_HEADER, sign_output_request
from haca.types.payment import MIN_HEIGHT_HEADER, PaymentAuthorization
from haca.types.receipt import Receipt, SignedReceipt
from haca.types.registry import ModelManifest
from haca.types.settlement import SettlementRecord, request_settlement
from haca.types.tensor import TensorError, tensors_from_json, tensors_hash
from haca.types.tools import ToolCall, tool_calls_of
from haca.types.x402 import PAYMENT_REQUIRED_HEADER

LOST_ANSWER_TRIES = 3  # fetches of a lost answer's output, a second apart (its request may still run)


@dataclass(frozen=True)
class Paid:
    """A paid request's answer and what it was paid on: the offer, the chain's terms, the authorisation."""

    response: httpx.Response
    offer: PaymentOffer
    manifest: ModelManifest
    auth: PaymentAuthorization


def raise_for(response: httpx.Response) -> None:
    """The node's error answer as its typed exception (haca.client.errors.node_error)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    raise node_error(response.status_code, body, response.text)


def error_code(response: httpx.Response) -> str:
    """The `error.code` of a node's error answer ("" when it has none)."""
    try:
        body = response.json()
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else ""


def checked_receipt(stored: dict[str, Any], receipt_id: str) -> SignedReceipt:
    """The signed receipt a node returned for `receipt_id`, refused if it is another one."""
    signed = SignedReceipt.from_json(stored["receipt"])
    if signed.id != receipt_id.lower():
        raise ReceiptInvalid(f"the node returned receipt {signed.id} for {receipt_id}")
    return signed


class ClientCore:
    """State and flows shared by Client and AsyncClient; they only drive the flows."""

    def __init__(self, node_url: str, key: PrivateKey, chain: ChainClient, node_address: str | None = None) -> None:
        self.node_url = node_url.rstrip("/")
        self.key = key
        self.chain = chain
        self._node_address = node_address.lower() if node_address else None
        self.srs_dir: Path | None = None  # zkml: the network's genesis SRS files, to verify proofs locally
        self.min_height = 0  # the block of this client's last deposit: sent with payments (MIN_HEIGHT_HEADER)

    def _terms(self, offer: PaymentOffer) -> ModelManifest:
        """The chain's terms for the offer: the manifest in effect at the quoted height (which
        must be the model the node names, and a height near the chain's own), for a node the
        chain has registered in that mode; read with state proofs (haca.client.payment.chain_terms),
        so that the RPC cannot raise the price the fee is bounded by."""
        return chain_terms(self.chain, offer.model_id, offer.model, offer.mode, offer.node, offer.terms_height)

    def _enclave(self, mode: str, manifest: ModelManifest, receipt: Any, refuse: Exception) -> Any:
        """tee: the key that signed must be one the chain attested for this node (None otherwise)."""
        if mode != Mode.TEE:
            return None
        hint = receipt.get("height_hint") if isinstance(receipt, dict) else None
        if not isinstance(hint, int):
            raise refuse
        return enclave_lookup(self.chain, manifest.name, hint)

    # --- paying: probe -> 402 -> terms -> fee -> sign -> paid request ---------------------------

    def _pay_flow(
        self, url: str, probe: Any, body: Any, offer_of: Any, fee_of: Any, stream: bool = False
    ) -> Flow[Paid]:
        """Probe `url` with `probe`; read the offer from its 402 (`offer_of(response)`); read the
        chain's terms for it and bound the fee (`fee_of(offer, manifest)`, in a worker thread under
        asyncio); sign an authorisation for that fee and send `body` with it."""
        first = yield Send("POST", url, probe)
        if first.status_code != 402:
            if first.status_code >= 400:
                raise_for(first)
            raise PaymentRequiredError("node did not ask to be paid")
        offer = offer_of(first)
        manifest = yield work(self._terms, offer)
        fee = yield work(fee_of, offer, manifest)
        auth, header = sign_payment(self.key, offer, fee)
        try:
            paid = yield Send("POST", url, body, self._payment_headers(header), stream)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise  # the request never reached the node: nothing was served or charged
        except httpx.TransportError as exc:  # sent; the answer may be lost after the node queued the receipt
            paid = yield from self._lost_answer_flow(url, auth.request_id, exc)
        else:
            if paid.status_code == 502 and error_code(paid) == ANSWER_LOST:  # lost behind the node's front
                lost = NodeError(f"the node's front lost the worker serving it: {paid.text[:300]}", 502, ANSWER_LOST)
                paid = yield from self._lost_answer_flow(url, auth.request_id, lost)
        if paid.status_code != 200:
            raise_for(paid)
        return Paid(paid, offer, manifest, auth)

    def _payment_headers(self, x_payment: str) -> dict[str, str]:
        headers = {"X-PAYMENT": x_payment}
        if self.min_height:  # a node whose RPC has not seen our deposit yet reads it again first
            headers[MIN_HEIGHT_HEADER] = str(self.min_height)
        return headers

    def _lost_answer_flow(self, url: str, request_id: str, lost: Exception) -> Flow[httpx.Response]:
        """A tensor answer lost on the way is fetched again (GET /v1/outputs: the output and receipt
        the node kept, checked as any answer); an LLM's is left to `fetch_output` (AnswerLost)."""
        message = f"the answer to request {request_id} was lost ({lost!r}): if the node served it, fetch_output gets it"
        if not url.endswith("/v1/infer"):
            raise AnswerLost(message, request_id) from lost
        for attempt in range(LOST_ANSWER_TRIES):  # a slow request may still be running: its receipt comes
            try:
                fetched = yield from self._output_flow(request_id)
                break
            except NodeNotFound as exc:
                if attempt + 1 == LOST_ANSWER_TRIES:
                    raise AnswerLost(f"{message}; the node has no output for it: {exc}", request_id) from lost
                yield Sleep(1.0)
            except (HacaError, httpx.TransportError) as exc:
                raise AnswerLost(f"{message}; fetching it failed: {exc}", request_id) from lost
        answer = {**fetched.output, "receipt": fetched.receipt.to_json(), "status": fetched.status}
        return httpx.Response(200, json=answer, request=httpx.Request("POST", url))

    def _infer_flow(self, model: str, input: Any, mode: str, max_fee: int | None) -> Flow[InferenceResult]:
        def fee(offer: PaymentOffer, manifest: ModelManifest) -> int:
            return accept_fee(offer, input_rows(input, manifest.input_schema), max_fee, manifest)

        body = {"model": model, "mode": mode, "input": input}
        paid = yield from self._pay_flow(
            f"{self.node_url}/v1/infer",
            {"model": model, "mode": mode},
            body,
            lambda first: PaymentOffer.from_402(first.json(), model, mode),
            fee,
        )
        return (yield work(self._inference_result, paid, input))

    def _inference_result(self, paid: Paid, input: Any) -> InferenceResult:
        """Check the paid answer's receipt locally before handing it out."""
        answer = paid.response.json()
        receipt = answer.get("receipt") if isinstance(answer, dict) else None
        no_hint = ReceiptInvalid("answer does not verify: the receipt has no height hint")
        enclave = self._enclave(paid.offer.mode, paid.manifest, receipt, no_hint)
        circuit = paid.manifest.circuit if paid.offer.mode == Mode.ZKML else None
        schema = paid.manifest.input_schema
        signed = verify_answer(answer, input, schema, paid.offer.node, paid.auth, enclave, circuit)
        check_height_hint(signed.receipt.height_hint, paid.offer.terms_height)
        return InferenceResult(answer["output"], signed, answer.get("status", Status.PENDING), self.node_url)

    # --- LLMs (the node's OpenAI-compatible routes) -------------------------------------------

    def _llm_flow(self, kind: str, model: str, content: Messages | str, options: LlmOptions, stream: bool) -> Flow[Any]:
        """A chat or completion, paid for at most what it may cost; its answer checked (LlmResult)
        or, streamed, left to be read (Streamed) and checked once it ends."""
        request = options.request(kind, model, content, stream)
        path = CHAT_PATH if kind == "chat" else COMPLETION_PATH

        def offer_of(first: httpx.Response) -> LlmOffer:
            header = first.headers.get(PAYMENT_REQUIRED_HEADER)
            if not header:
                raise PaymentRequiredError(f"node answered 402 without a {PAYMENT_REQUIRED_HEADER} header")
            return select_offer(llm_offers(header), model, options.mode)

        def fee(offer: LlmOffer, manifest: ModelManifest) -> int:
            return llm_max_fee(offer, request, options.max_fee, manifest)

        url, body = f"{self.node_url}{path}", request.to_openai()
        paid = yield from self._pay_flow(url, {"model": model}, body, offer_of, fee, stream)
        if stream:
            return Streamed(
                paid.response, kind, lambda text, last, why: self._llm_checked(paid, request, text, last, why)
            )
        return (yield work(self._llm_answer, paid, request))

    def _llm_answer(self, paid: Paid, request: LlmRequest) -> LlmResult:
        """A non-streamed answer, checked."""
        try:
            body = paid.response.json()
            choice = body["choices"][0]
            text = choice["message"]["content"] if request.kind == "chat" else choice["text"]
            called = choice["message"].get("tool_calls") if request.kind == "chat" else None
            finish_reason = str(choice.get("finish_reason") or "")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise NodeError(f"node answered a malformed completion: {exc}") from exc
        if called and text is None:
            text = ""  # a call: the text the receipt covers is haca.output_text
        if not isinstance(text, str) or not isinstance(body, dict):
            raise NodeError("node answered a malformed completion")
        result = self._llm_checked(
            paid, request, text, body, finish_reason, paid.response.headers.get("x-haca-receipt")
        )
        if (called or []) != [c.to_json() for c in result.tool_calls]:
            raise LlmReceiptInvalid("tool_calls", "the answer's tool_calls are not the calls its generated text makes")
        return result

    def _llm_checked(
        self,
        paid: Paid,
        request: LlmRequest,
        text: str,
        body: dict[str, Any],
        finish_reason: str,
        receipt_header: str | None = None,
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
            except (binascii.Error, ValueError, RecursionError) as exc:
                raise LlmReceiptInvalid("format", f"x-haca-receipt header is malformed: {exc!r}") from exc
            if not isinstance(receipt, dict) or in_header != receipt:
                raise LlmReceiptInvalid("format", "the x-haca-receipt header and the body carry different receipts")
        no_hint = LlmReceiptInvalid("format", "the receipt has no height hint")
        enclave = self._enclave(paid.offer.mode, paid.manifest, receipt, no_hint)
        offer = paid.offer
        assert isinstance(offer, LlmOffer)
        calls: tuple[ToolCall, ...] = ()
        if "output_text" in haca:  # a tool call: the generated text is sent once, not as content
            text, calls = _called(request, offer, text, haca["output_text"])
        signed = verify_llm_answer(receipt, request, text, usage, offer, paid.auth, enclave)
        check_height_hint(signed.receipt.height_hint, offer.terms_height)
        counts = {k: int(usage.get(k, 0)) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        status = str(haca.get("status", Status.PENDING))
        mode = signed.receipt.mode
        return LlmResult(text, finish_reason, counts, signed, mode, status, body, self.node_url, calls)

    # --- receipts -------------------------------------------------------------------------------

    def _node_receipt_flow(self, receipt_id: str) -> Flow[dict[str, Any]]:
        """The node's record of a receipt; NotFound (NodeNotFound) if it has none."""
        response = yield Send("GET", f"{self.node_url}/v1/receipts/{receipt_id}")
        if response.status_code != 200:
            raise_for(response)
        answer: dict[str, Any] = response.json()
        return answer

    def _signed_flow(self, receipt: str | SignedReceipt) -> Flow[tuple[SignedReceipt, dict[str, Any] | None]]:
        """The signed receipt (by id: fetched from the node, with the node's record)."""
        if isinstance(receipt, SignedReceipt):
            return receipt, None
        stored = yield from self._node_receipt_flow(receipt)
        return checked_receipt(stored, receipt), stored

    def _receipt_status_now(self, receipt_id: str, receipt: Receipt | None = None) -> ReceiptStatus:
        """Client.receipt_status, blocking (chain reads): run it as a flow's `Work`."""
        answer = None
        with contextlib.suppress(QueryFailed):
            answer = self.chain.query("/inference/receipt", receipt_id.encode())
        if answer is not None:
            record = parse_answer(SettlementRecord.from_json, answer, "settlement record")
            return ReceiptStatus(receipt_id, record.status, record=record, receipt=receipt)
        if receipt is not None:
            with contextlib.suppress(QueryFailed):
                answer = self.chain.query("/inference/request", f"{receipt.client}/{receipt.request_id}".encode())
            found = parse_answer(request_settlement, answer, "request settlement") if answer is not None else None
            if isinstance(found, BatchMark) and found.receipt_id == receipt_id:
                return ReceiptStatus(receipt_id, Status(found.status), batch=found, receipt=receipt)
        return ReceiptStatus(receipt_id, Status.PENDING, receipt=receipt)

    def _receipt_status_flow(self, receipt_id: str, receipt: Receipt | None) -> Flow[ReceiptStatus]:
        return (yield work(self._receipt_status_now, receipt_id, receipt))

    def _wait_settled_flow(self, receipt_id: str, timeout: float) -> Flow[ReceiptStatus]:
        deadline = time.monotonic() + timeout
        receipt: Receipt | None = None
        while True:
            record = yield from self._receipt_status_flow(receipt_id, receipt)
            if record.status != Status.PENDING:
                return record
            if receipt is None:  # it may settle in a batch: its request's mark is found by the receipt
                receipt = (yield from self._signed_flow(receipt_id))[0].receipt
            if time.monotonic() > deadline:
                raise HacaError(f"receipt {receipt_id} not settled within {timeout:.0f}s")
            yield Sleep(0.3)

    def _verify_flow(self, receipt: str | SignedReceipt) -> Flow[ReceiptVerification]:
        """Re-verify a receipt against proven chain state: zkml, its proof (from the chain's
        settlement tx, else from the node's record) against the model's circuit; tee, the enclave
        key's attestation and standing, the policy, the signature (haca.client.tee)."""
        signed, stored = yield from self._signed_flow(receipt)
        if signed.receipt.mode != Mode.ZKML:
            return (yield work(verify_tee_receipt, self.chain, signed))
        proof = yield work(proof_from_chain, self.chain, signed.id)
        if not proof:
            stored = stored or (yield from self._node_receipt_flow(signed.id))
            proof = bytes.fromhex((stored.get("evidence") or "0x")[2:])
        return (yield work(verify_zkml_receipt, self.chain, signed, proof, self.srs_dir))

    def _prove_batched_flow(self, receipt: str | SignedReceipt) -> Flow[BatchInclusion]:
        """Prove, from the chain alone, that a receipt settled in a batch: its request's mark and
        the batch root with state proofs, and its inclusion path to that root (haca.client.batch)."""
        signed, _ = yield from self._signed_flow(receipt)
        return (yield work(prove_batched_receipt, self.chain, signed.receipt))

    def _wait_verified_flow(self, receipt_id: str, timeout: float) -> Flow[ReceiptVerification]:
        yield from self._wait_settled_flow(receipt_id, timeout)
        return (yield from self._verify_flow(receipt_id))

    # --- escrow and API keys --------------------------------------------------------------------

    def _node_address_flow(self) -> Flow[str]:
        """The node's account: from the client's config, else as the node reports it."""
        if self._node_address is None:
            try:
                response = yield Send("GET", f"{self.node_url}/healthz", timeout=10)
                self._node_address = str(response.json()["node"]).lower()
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                raise NodeError(f"cannot learn the node's address from {self.node_url}/healthz: {exc}") from exc
        return self._node_address

    def _escrow_msg_flow(self, kind: type[MsgDeposit | MsgWithdraw], amount: int, node: str | None) -> Flow[TxOutcome]:
        msg = kind(node or (yield from self._node_address_flow()), amount)
        outcome = yield work(self.chain.send_msgs, self.key, (msg,))
        assert isinstance(outcome, TxOutcome)
        if kind is MsgDeposit:
            self.min_height = max(self.min_height, outcome.height)
        return outcome

    def _output_flow(self, request_id: str) -> Flow[FetchedOutput]:
        """GET /v1/outputs/{request_id}, signed by this client (only the paying client gets it);
        the output must be what the receipt's output hash commits to, for this client's request."""
        node = yield from self._node_address_flow()
        signature = sign_output_request(self.key, self.chain.chain_id, node, request_id)
        headers = {OUTPUT_SIGNATURE_HEADER: "0x" + signature.hex()}
        response = yield Send("GET", f"{self.node_url}/v1/outputs/{request_id}", headers=headers)
        if response.status_code != 200:
            raise_for(response)
        try:
            doc = response.json()
            signed = SignedReceipt.from_json(doc["receipt"])
            output = {k: doc[k] for k in ("output", "zk", "text", "finish_reason") if k in doc}
            if "text" in doc:
                committed = text_hash(doc["text"])
            else:
                committed = tensors_hash(tensors_from_json(doc["output"], "output"))
        except (KeyError, TypeError, ValueError, TensorError) as exc:
            raise ReceiptInvalid(f"the node's output does not parse: {exc}") from exc
        r = signed.receipt
        if (r.client, r.request_id, r.node) != (self.key.address, request_id.lower(), node):
            raise ReceiptInvalid("the node answered the output of another request, client or node")
        if r.output_hash != committed:
            raise ReceiptInvalid("the node's output is not the one its receipt commits to")
        if r.mode == Mode.TEE:  # signed by an enclave key the chain attested for this node
            verdict = yield work(verify_tee_receipt, self.chain, signed)
            if not verdict.verified:
                raise ReceiptInvalid(f"the output's receipt does not verify: {verdict.reason}")
        elif r.signer(signed.signature) != node:
            raise ReceiptInvalid("the output's receipt is not signed by the node")
        return FetchedOutput(r.request_id, signed, output, str(doc.get("status", "")))

    def _escrow_flow(self, node: str | None) -> Flow[int]:
        data = f"{self.key.address}/{node or (yield from self._node_address_flow())}"
        answer = yield work(self.chain.query, "/inference/escrow", data.encode())
        return parse_answer(EscrowAnswer.from_json, answer, "escrow").escrow

    def _api_key_flow(self, node: str, cap: int, expires_in: int, nonce: int | None, max_per_request: int) -> Flow[str]:
        expiry = (yield work(self.chain.rpc.height)) + expires_in
        nonce = nonce if nonce is not None else expiry
        return create_api_key(self.key, self.chain.chain_id, node, cap, expiry, nonce, max_per_request)


def _called(request: LlmRequest, offer: LlmOffer, streamed: str, output_text: Any) -> tuple[str, tuple[ToolCall, ...]]:
    """A tool-call answer's generated text (what the receipt's output hash covers) and the calls it
    makes, derived here as the node derives them; LlmReceiptInvalid unless it is a call of the
    request's tools and no text was sent besides."""
    if not isinstance(output_text, str) or streamed:
        raise LlmReceiptInvalid("output_hash", "a tool-call answer carries its generated text once, in output_text")
    calls = tool_calls_of(output_text, request.hash(offer.model_id), request.callable_tools)
    if not calls:
        raise LlmReceiptInvalid("tool_calls", "the answer's output_text is no call of the request's tools")
    return output_text, calls
