"""Client side of paying for an LLM answer (a node's OpenAI-compatible routes): read the node's
per-token offers from its 402, bound the fee to authorise for one request, and check the answer
(its receipt against the request sent, the text received, the usage returned and the prices quoted).

An LLM request's cost is only known once the model has run, so the client authorises a bound: the
prompt as long as it can be (its UTF-8 bytes, as no token is shorter than a byte, plus room for the
chat template, and never more than the context leaves) at the prompt price, plus `max_tokens` at the
completion price. The node holds that, stops where it would be exceeded and charges the tokens used;
the receipt must charge exactly usage x the quoted prices, and never more than what was authorised.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from haca.client.errors import HacaError
from haca.client.payment import InputInvalid, PaymentOffer, PaymentRequiredError, ReceiptInvalid
from haca.proofs.receipt import EvidenceError
from haca.proofs.verifier import EnclaveStanding, VerifyContext, verifiers, verify
from haca.types.llm import LlmRequest, text_hash
from haca.types.modes import Mode
from haca.types.payment import PaymentAuthorization
from haca.types.receipt import SignedReceipt
from haca.types.registry import ModelManifest, PriceUnit, token_fee
from haca.types.tools import tools_prompt
from haca.types.x402 import SCHEME, chain_id_of

TEMPLATE_TOKENS = 64  # what a chat template (and a BOS token) may add to the prompt's own text
MESSAGE_TOKENS = 8  # what the template may add per message (role markers, separators)
LLM_MODES = (Mode.TEE, Mode.VANILLA)  # the modes a node serves LLMs in

_VERIFIERS = verifiers()


class LlmReceiptInvalid(ReceiptInvalid):
    """An LLM answer that does not match its receipt; `reason` names what is wrong:
    signer, input_hash, output_hash, usage, fee, max_fee, request, format."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class LlmOffer(PaymentOffer):
    """A node's offer for an LLM in one mode: `unit_price` per prompt token, `completion_price`
    per completion token, `max_rows` the model's context in tokens."""

    completion_price: int = 0

    @property
    def prompt_price(self) -> int:
        return self.unit_price

    @property
    def context(self) -> int:
        return self.max_rows

    def token_fee(self, prompt_tokens: int, completion_tokens: int) -> int:
        return token_fee(self.unit_price, self.completion_price, prompt_tokens, completion_tokens)


def llm_offers(header: str) -> list[LlmOffer]:
    """The per-token `haca-escrow` offers in a 402's PAYMENT-REQUIRED header (base64 JSON x402 v2
    PaymentRequired); offers of another scheme or price unit are left out."""
    try:
        doc = json.loads(base64.b64decode(header, validate=True))
        accepts = doc["accepts"]
        if not isinstance(accepts, list):
            raise TypeError("'accepts' is not a list")
        return [_offer(a) for a in accepts if a["scheme"] == SCHEME and a["extra"]["price_unit"] == PriceUnit.TOKEN]
    except (binascii.Error, KeyError, TypeError, ValueError, RecursionError) as exc:  # ValueError: bad JSON too
        raise PaymentRequiredError(f"node answered 402 without usable requirements: {exc!r}") from exc


def _offer(accept: dict[str, Any]) -> LlmOffer:
    extra = accept["extra"]
    network = str(accept["network"])
    return LlmOffer(
        chain_id_of(network) if ":" in network else network,  # v2: haca:<chain id>; v1: the chain id
        str(accept["payTo"]).lower(),
        int(extra["price"]),
        "token",
        int(extra["max_rows"]),
        str(extra["model_id"]),
        str(extra["model"]),
        str(extra["mode"]),
        int(extra["suggested_expiry"]),
        int(extra["terms_height"]),
        int(extra["completion_price"]),
    )


def select_offer(offers: Sequence[LlmOffer], model: str, mode: str | None = None) -> LlmOffer:
    """The offer for `model` (name or sha256: id) in `mode`; without a mode, the first the node
    lists for the model (a node lists its preferred mode first: tee before vanilla)."""
    for offer in offers:
        if model in (offer.model, offer.model_id) and (mode is None or offer.mode == mode):
            return offer
    served = sorted({f"{o.model} ({o.mode})" for o in offers})
    wanted = f"{model!r} in mode {mode!r}" if mode else repr(model)
    raise ModelNotOffered(f"node offers no LLM {wanted}; it offers {served}")


class ModelNotOffered(HacaError):
    """The node serves no such LLM (in that mode)."""

    code = "model_not_found"


def prompt_token_bound(request: LlmRequest) -> int:
    """At most how many tokens the request's prompt is once templated: a token is at least one
    byte of text, and the template adds a bounded number per message and overall."""
    if request.kind == "chat":
        text = sum(len(f"{m.role}{m.content}{m.tool_call_id}".encode()) for m in request.messages)
        text += sum(
            len(json.dumps([c.to_json() for c in m.tool_calls]).encode()) for m in request.messages if m.tool_calls
        )
        if request.callable_tools:  # the functions, described in a system message of their own
            text += len(tools_prompt(request.callable_tools, request.tool_choice).encode()) + MESSAGE_TOKENS
        return text + MESSAGE_TOKENS * len(request.messages) + TEMPLATE_TOKENS
    return len(request.prompt.encode()) + TEMPLATE_TOKENS


def llm_max_fee(offer: LlmOffer, request: LlmRequest, max_fee: int | None, manifest: ModelManifest) -> int:
    """The fee to authorise for `request` on `offer`: its prompt bound (never more than the context
    leaves after `max_tokens`) at the prompt price plus `max_tokens` at the completion price.
    Refused when above `max_fee`, or, without one, when the node's per-token prices are above the
    model's on chain (its terms in effect at the quoted height, `manifest`): paying a node above the
    model's prices takes an explicit `max_fee`."""
    if request.max_tokens >= offer.context:
        raise InputInvalid(f"max_tokens is {request.max_tokens}; the model's context is {offer.context} tokens")
    prompt = min(offer.context - request.max_tokens, prompt_token_bound(request))
    fee = offer.token_fee(prompt, request.max_tokens)
    if max_fee is not None:
        if fee > max_fee:
            raise PaymentRequiredError(
                f"this request may cost up to {fee} (up to {prompt} prompt tokens at {offer.prompt_price}, "
                f"{request.max_tokens} completion tokens at {offer.completion_price}), more than the max fee {max_fee}"
            )
        return fee
    if manifest.price_unit != PriceUnit.TOKEN:
        raise PaymentRequiredError(f"{offer.model!r} is not priced per token on chain")
    published = (manifest.price, manifest.completion_price)
    if offer.prompt_price > published[0] or offer.completion_price > published[1]:
        raise PaymentRequiredError(
            f"node asks {offer.prompt_price} per prompt token and {offer.completion_price} per completion token,"
            f" more than the model's prices on chain ({published[0]} and {published[1]}); pass a max fee to accept"
        )
    return fee


def verify_llm_answer(
    receipt: Any,
    request: LlmRequest,
    text: str,
    usage: Mapping[str, Any],
    offer: LlmOffer,
    auth: PaymentAuthorization,
    enclave: Callable[[str], EnclaveStanding | None] | None = None,
) -> SignedReceipt:
    """Check an LLM answer without trusting the node: the receipt (JSON) is signed by the offer's
    node (tee: by an enclave key `enclave` says the chain attested for it), commits to this request
    and to exactly the text received, counts the tokens the usage reports, charges them at the
    quoted prices, at most what `auth` authorised, and is for `auth`'s request, model and mode."""
    try:
        signed = SignedReceipt.from_json(receipt)
    except (ValueError, TypeError) as exc:
        raise LlmReceiptInvalid("format", f"answer carries no valid receipt: {exc}") from exc
    r = signed.receipt
    node = offer.node.lower()
    if r.mode not in LLM_MODES:
        raise LlmReceiptInvalid("request", f"an LLM receipt in mode {r.mode!r}: LLMs are served in tee or vanilla")
    try:
        # The same verifier the validators run, with what the client knows: the node it paid.
        context = VerifyContext(r.chain_id, 0, 0, "", node, enclave=enclave or (lambda key: None))
        verify(_VERIFIERS, signed, b"", context)
    except EvidenceError as exc:
        raise LlmReceiptInvalid("signer", f"receipt signature does not verify: {exc}") from exc
    expected = (auth.chain_id, auth.client, auth.node, auth.request_id, auth.model_id, auth.mode)
    if (r.chain_id, r.client, r.node, r.request_id, r.model_id, r.mode) != expected:
        raise LlmReceiptInvalid("request", "receipt is for another request, client, node, model or mode")
    if r.input_hash != request.hash(offer.model_id):
        raise LlmReceiptInvalid("input_hash", "receipt's input hash is not the hash of the request sent")
    if r.output_hash != text_hash(text):
        raise LlmReceiptInvalid("output_hash", "receipt's output hash is not the hash of the text received")
    try:
        counted = (int(usage["prompt_tokens"]), int(usage["completion_tokens"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise LlmReceiptInvalid("usage", f"answer reports no usage: {exc}") from exc
    if (r.prompt_tokens, r.completion_tokens) != counted:
        raise LlmReceiptInvalid(
            "usage",
            f"receipt counts {r.prompt_tokens}+{r.completion_tokens} tokens;"
            f" the answer reports {counted[0]}+{counted[1]}",
        )
    if r.completion_tokens > request.max_tokens:
        raise LlmReceiptInvalid(
            "usage", f"receipt counts {r.completion_tokens} completion tokens; max_tokens was {request.max_tokens}"
        )
    due = offer.token_fee(r.prompt_tokens, r.completion_tokens)
    if r.fee != due:
        raise LlmReceiptInvalid("fee", f"receipt charges {r.fee}; its tokens at the quoted prices cost {due}")
    if r.fee > auth.max_fee:
        raise LlmReceiptInvalid("max_fee", f"receipt charges {r.fee}; the client authorised at most {auth.max_fee}")
    return signed
