"""Who pays for a request: an x402-style `X-PAYMENT` header carrying a per-request EIP-712
authorisation, or `Authorization: Bearer haca_…` carrying a signed spending allowance.

Payment is checked in two steps so that an unpaid request costs almost nothing:

1. `check(headers)`, before the body is read: the signature, node, chain, expiry, revocation,
   and that the client's escrow for this node (less what it is withdrawing) could pay at all.
   Without a payment the node answers 402 with its payment requirements (x402 shape: scheme,
   network = chain id, asset = denom, max amount, pay-to, resource), one per model and mode.
2. `charge(pending, quote, rows)`, once the body is parsed and the work is known: the fee is the
   quote's price for that many rows; it must be within what was authorised, and it is held
   against the escrow (and the allowance's cap) until the receipt is queued.

The routes call both through `settle_reads` (`check_async` for step 1): the chain view never reads
the chain inline on the event loop, so a read it has not cached is awaited in a worker thread and
the step run again. `check_async` also claims the request id, so the same authorisation sent again
is refused before its body is read, and a request id whose work began is never served again.

Work is accepted only if it can be settled in time. Each offer's `min_expiry` (in the 402, and
exactly what is enforced) is the height plus `settle_margin` blocks, plus for zkml the blocks the
proving backlog and this proof take, and for an LLM the blocks of `llm_seconds` of generation. A
zkml request is refused (503, Retry-After) when its proof cannot be made and settled within the
chain's claim deadline, and an LLM stops generating when its authorisation nears expiry.
"""

from __future__ import annotations

import base64
import json
import math
import secrets
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ParamSpec, Protocol, TypeVar

from haca.crypto.keys import SignatureError
from haca.node.chainview import DEFAULT_BLOCK_SECONDS, ReadPending
from haca.node.errors import InvalidRequest, Overloaded, PaymentRequired, RequestConflict
from haca.node.holds import Hold, HoldBook, LocalHolds, RequestTaken
from haca.node.receipts import ReceiptQueue
from haca.node.x402v2 import decode_payment_signature
from haca.node.x402v2 import payment_response_header as payment_response_header_v2
from haca.types import fields
from haca.types.modes import Mode, Status
from haca.types.outputs import IDEMPOTENCY_HEADER, idempotency_key, idempotent_request_id
from haca.types.payment import (
    AUTHORIZATION_FIELDS,
    MIN_HEIGHT_HEADER,
    PaymentAuthorization,
    SignedPayment,
    SpendingAllowance,
    decode_api_key,
)
from haca.types.registry import ModelManifest, PriceUnit, request_fee, token_fee
from haca.types.x402 import PAYMENT_RESPONSE_HEADER as PAYMENT_RESPONSE_HEADER_V2
from haca.types.x402 import PAYMENT_SIGNATURE_HEADER, SCHEME

X402_VERSION = 1
PAYMENT_HEADER = "x-payment"
PAYMENT_RESPONSE_HEADER = "X-PAYMENT-RESPONSE"
SIGNER_CACHE_SIZE = 4096
MAX_READS = 8  # chain reads one payment step may wait for before it gives up (it needs 3 or 4)
DEFAULT_CLAIM_DEADLINE = 50  # blocks; the chain's `claim_deadline` when the view does not tell it
CLAIM_SAFETY = 0.8  # share of the claim deadline the node plans to use (block times vary)
# A payment must outlast twice the proving time the node expects: a proof slowed by load (a busy
# machine, the first proof before any was measured) must still settle before the payment expires.
EXPIRY_PROVING_SAFETY = 2
DEFAULT_PROOF_SECONDS = 15.0  # a proof's time until the prover has measured one
LLM_SECONDS = 20.0  # generation an LLM request's authorisation must leave time for
PROOF_SAMPLES = 16

P = ParamSpec("P")
T = TypeVar("T")


async def settle_reads(step: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a payment step on the event loop; a chain read it lacks (ReadPending) is awaited off
    the loop and the step run again (each step mutates nothing before its reads are done)."""
    for _ in range(MAX_READS):
        try:
            return step(*args, **kwargs)
        except ReadPending as pending:
            await pending.wait()
    return step(*args, **kwargs)


class ProvingLoad:
    """What the node's provers are committed to: proofs queued or running (`backlog`, the
    receipts still proving), how many run at once, and how long one takes (the slowest of the
    last few measured, `DEFAULT_PROOF_SECONDS` before the first)."""

    def __init__(
        self, backlog: Callable[[], int], workers: int = 1, proof_seconds: float = DEFAULT_PROOF_SECONDS
    ) -> None:
        self.backlog, self.workers, self.initial = backlog, max(1, workers), proof_seconds
        # the provers of every worker of this node, when the backlog is theirs too (a shared store)
        self.capacity: Callable[[], int] | None = None
        self._samples: deque[float] = deque(maxlen=PROOF_SAMPLES)
        self._lock = threading.Lock()  # the prover's thread observes, the event loop reads

    def provers(self) -> int:
        """How many proofs run at once on the backlog."""
        return max(1, self.capacity()) if self.capacity is not None else self.workers

    @property
    def measured(self) -> bool:
        return bool(self._samples)

    def observe(self, seconds: float) -> None:
        with self._lock:
            self._samples.append(seconds)

    def proof_seconds(self) -> float:
        with self._lock:
            return max(self._samples) if self._samples else self.initial


class PaymentView(Protocol):
    """What the gate reads from the chain (haca.node.chainview.ChainView; fakes in tests)."""

    def height(self) -> int: ...

    def available_escrow(self, client: str, fresh: bool = False, at_least: int = 0) -> int: ...

    def allowance(self, allowance: SpendingAllowance) -> tuple[int, int]: ...

    def settlement_fee(self, fees: int, count: int = 1) -> int: ...

    def manifest_in_effect(self, model_id: str, height: int) -> ModelManifest | None: ...


@dataclass(frozen=True)
class Quote:
    """The terms on which this node serves one model in one mode, as of `height` (the terms in
    effect on chain there; the receipt's height hint, so the chain judges it by the same terms)."""

    model_id: str
    model_name: str
    mode: str
    unit_price: int  # max(node price, the model's price in effect); per prompt token for an LLM
    price_unit: str  # "request" | "row" | "token"
    max_rows: int  # rows a request may have; for an LLM, tokens (prompt + completion)
    height: int
    completion_price: int = 0  # LLM: per completion token

    def fee(self, rows: int) -> int:
        """The fee for `rows` rows (an LLM: the least a request costs, one prompt token)."""
        return request_fee(self.unit_price, self.price_unit, rows)

    def token_fee(self, prompt_tokens: int, completion_tokens: int) -> int:
        return token_fee(self.unit_price, self.completion_price, prompt_tokens, completion_tokens)

    def completion_budget(self, paid: int, prompt_tokens: int) -> int:
        """The completion tokens `paid` covers after a prompt of `prompt_tokens` tokens, within the
        `max_rows` tokens (prompt and completion) a request may count."""
        left = paid - prompt_tokens * self.unit_price
        room = max(0, self.max_rows - prompt_tokens)
        if left < 0:
            return 0
        return min(room, left // self.completion_price if self.completion_price else room)

    @property
    def max_amount(self) -> int:
        """The most one request can cost (the x402 amount a client authorises)."""
        if self.price_unit == PriceUnit.TOKEN:
            return self.max_rows * max(self.unit_price, self.completion_price)
        return self.fee(self.max_rows)


@dataclass(frozen=True)
class PendingPayment:
    """A payment whose signature and funds were checked before the body was read."""

    payment: SignedPayment
    client: str
    request_id: str
    min_height: int = 0  # the block the client's funds arrived in (MIN_HEIGHT_HEADER), 0 if not named
    idempotent: bool = False  # an API-key request whose id comes from its Idempotency-Key (not fresh)

    @property
    def authorization(self) -> PaymentAuthorization | None:
        value = self.payment.value
        return value if isinstance(value, PaymentAuthorization) else None


@dataclass(frozen=True)
class AcceptedPayment:
    payment: SignedPayment
    client: str
    request_id: str
    fee: int = 0  # what the receipt charges
    reserved: int = 0  # escrow held for this request until its receipt is queued (see release)
    allowance_id: str = ""
    allowance_held: int = 0  # allowance cap held likewise
    mode: str = ""
    exclusive: bool = True  # its id may be sent again: taken while in flight (see Hold)


class PaymentGate:
    def __init__(
        self,
        node: str,
        chain_id: str,
        denom: str,
        chain: PaymentView,
        store: ReceiptQueue,
        settle_margin: int = 5,
        authorization_blocks: int = 100,
        proving_blocks: int = 1000,
        proving: ProvingLoad | None = None,
        llm_seconds: float = LLM_SECONDS,
        holds: HoldBook | None = None,
    ) -> None:
        self.node, self.chain_id, self.denom = node, chain_id, denom
        self.chain, self.store = chain, store
        # escrow and allowance cap held by requests in flight, and the ids taken (shared by a node's workers)
        self.holds: HoldBook = holds if holds is not None else LocalHolds()
        self._claimed: set[tuple[str, str]] = set()  # (client, request id) past check_async, not yet released
        self._zk_in_flight = 0  # zkml requests charged whose proof job is not queued yet
        self._signers: OrderedDict[bytes, str] = OrderedDict()  # API key -> its signer (recovery is the cost)
        self.settle_margin = settle_margin  # blocks the settler needs before an authorisation expires
        self.authorization_blocks = authorization_blocks
        # zkml answers settle only once proved: their authorisations must outlast a slow prove
        self.proving_blocks = proving_blocks
        self.proving = proving or ProvingLoad(lambda: store.count(Status.PROVING.value))
        self.llm_seconds = llm_seconds

    # --- time: what the node can settle before an authorisation expires or a claim's deadline ---

    def block_seconds(self) -> float:
        """Seconds per block as the chain view measures them (a default for views that do not)."""
        measure = getattr(self.chain, "block_interval", None)
        return float(measure()) if measure is not None else DEFAULT_BLOCK_SECONDS

    def claim_deadline(self) -> int:
        read = getattr(self.chain, "claim_deadline", None)
        return int(read()) if read is not None else DEFAULT_CLAIM_DEADLINE

    def proving_seconds(self) -> float:
        """Until a zkml request admitted now has its proof: the proofs ahead of it, spread over
        the workers, then its own."""
        ahead = self.proving.backlog() + self._zk_in_flight
        return math.ceil((ahead + 1) / self.proving.provers()) * self.proving.proof_seconds()

    def min_expiry(self, quote: Quote, height: int) -> int:
        """The earliest expiry this node accepts for `quote` now: the settle margin, plus the
        blocks the work itself may take before its receipt can settle."""
        blocks = self.settle_margin
        if quote.mode == Mode.ZKML:
            blocks += math.ceil(EXPIRY_PROVING_SAFETY * self.proving_seconds() / self.block_seconds())
        elif quote.price_unit == PriceUnit.TOKEN:
            blocks += math.ceil(self.llm_seconds / self.block_seconds())
        return height + blocks

    def seconds_left(self, expiry: int) -> float:
        """How long work paid by an authorisation expiring at `expiry` may go on and its receipt
        still settle (the settle margin kept): an LLM stops generating then."""
        blocks = expiry - self.settle_margin - self.chain.height()
        return max(0.0, blocks * self.block_seconds())

    def _admit(self, quote: Quote) -> None:
        """zkml: refuse (503) a proof that could not be made and settled within the claim deadline
        if the client claimed the receipt at once. The first proof is admitted unmeasured."""
        if quote.mode != Mode.ZKML:
            return
        block = self.block_seconds()
        budget = self.claim_deadline() * block * CLAIM_SAFETY - self.settle_margin * block
        needed = self.proving_seconds()
        if needed <= budget:
            return
        if not self.proving.measured and self.proving.backlog() + self._zk_in_flight == 0:
            return  # nothing else to measure the prover with
        retry = max(1, math.ceil(needed - budget))
        raise Overloaded(
            f"the prover is busy: this proof would be ready in {needed:.0f} s, and a zkml answer must settle"
            f" within {budget:.0f} s of a claim; retry in {retry} s",
            retry_after=retry,
        )

    # --- 402 ------------------------------------------------------------------------------------

    def requirements(self, quotes: Iterable[Quote], reason: str, resource: str) -> dict[str, Any]:
        height = self.chain.height()
        return {
            "x402Version": X402_VERSION,
            "error": reason,
            "accepts": [self._accept(quote, resource, height) for quote in quotes],
        }

    def _accept(self, quote: Quote, resource: str, height: int) -> dict[str, Any]:
        least = self.min_expiry(quote, height)
        suggested = self.proving_blocks if quote.mode == Mode.ZKML else self.authorization_blocks
        per = quote.price_unit
        if quote.price_unit == PriceUnit.TOKEN:
            per = f"prompt token, {quote.completion_price} per completion token"
        return {
            "scheme": SCHEME,
            "network": self.chain_id,
            "asset": self.denom,
            "maxAmountRequired": str(quote.max_amount),
            "payTo": self.node,
            "resource": resource,
            "description": f"inference on {quote.model_name} ({quote.mode}): {quote.unit_price} per {per}",
            "mimeType": "application/json",
            "maxTimeoutSeconds": 60,
            "extra": {
                "model_id": quote.model_id,
                "model": quote.model_name,
                "mode": quote.mode,
                "price": str(quote.unit_price),
                "price_unit": quote.price_unit,
                "completion_price": str(quote.completion_price),
                "max_rows": quote.max_rows,
                "terms_height": quote.height,
                "height": height,
                "min_expiry": least,
                "suggested_expiry": max(least, height + suggested),
                "eip712": {"primaryType": "PaymentAuthorization", "fields": AUTHORIZATION_FIELDS},
                "api_key": "or send 'Authorization: Bearer haca_…' from `haca allowance create`",
            },
        }

    # --- step 1: before the body ----------------------------------------------------------------

    async def check_async(self, headers: Mapping[str, str], quotes: Mapping[tuple[str, str], Quote]) -> PendingPayment:
        """`check` without blocking the event loop on the chain, then claim the request id: until
        `abandon` or `release`, the same authorisation sent again is a 409 before its body is read."""
        pending = await settle_reads(self.check, headers, quotes)
        self.claim(pending)
        return pending

    def claim(self, pending: PendingPayment) -> None:
        if pending.authorization is None and not pending.idempotent:
            return  # an allowance request has a fresh id of its own
        request = (pending.client, pending.request_id)
        if request in self._claimed or self.holds.taken(request):
            raise RequestConflict(f"request id {pending.request_id} is being served")
        self._claimed.add(request)

    def abandon(self, pending: PendingPayment) -> None:
        """The request ended before it was charged (a bad body, a refusal): its id may be sent again."""
        self._claimed.discard((pending.client, pending.request_id))

    def check(self, headers: Mapping[str, str], quotes: Mapping[tuple[str, str], Quote]) -> PendingPayment:
        """Check the request's payment from its headers alone; PaymentRequired (402) says what
        is wrong (its requirements are added by the caller, who knows the resource)."""
        header = headers.get(PAYMENT_HEADER)
        signature_v2 = headers.get(PAYMENT_SIGNATURE_HEADER)
        bearer = headers.get("authorization", "")
        min_height = self._min_height(headers.get(MIN_HEIGHT_HEADER.lower()))
        if signature_v2:
            try:
                payload = decode_payment_signature(signature_v2, self.chain_id)
            except ValueError as exc:
                raise PaymentRequired(f"invalid {PAYMENT_SIGNATURE_HEADER}: {exc}") from exc
            return self._authorized(payload, quotes, PAYMENT_SIGNATURE_HEADER, min_height)
        if header:
            return self._per_request(header, quotes, min_height)
        if bearer.lower().startswith("bearer ") and bearer[7:].strip().startswith("haca_"):
            pending = self._allowance(bearer[7:].strip(), quotes, min_height)
            key = headers.get(IDEMPOTENCY_HEADER.lower())
            return pending if key is None else self._idempotent(pending, key)
        raise PaymentRequired("payment required")

    def _idempotent(self, pending: PendingPayment, key: str) -> PendingPayment:
        """An API-key request with an Idempotency-Key: its id is derived from the allowance and the
        key, so a retry is the same request — refused (409) once served, never charged twice."""
        try:
            key = idempotency_key(key)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        request_id = idempotent_request_id(pending.payment.value.id, key)  # type: ignore[union-attr]
        if self.store.has_request(pending.client, request_id):
            raise RequestConflict(
                f"request {request_id} (this Idempotency-Key) was already served: fetch its output with"
                f" GET /v1/outputs/{request_id} and the same Authorization and {IDEMPOTENCY_HEADER} headers"
            )
        return replace(pending, request_id=request_id, idempotent=True)

    @staticmethod
    def _min_height(value: str | None) -> int:
        """The height the client's funds depend on. It only matters when the cached escrow does
        not cover the request: then the escrow is read again, and an RPC not yet at this height
        is a 503 to retry (haca.node.chainview), never waited for."""
        if value is None:
            return 0
        if not value.isascii() or not value.isdigit() or len(value) > 18:
            raise PaymentRequired(f"invalid {MIN_HEIGHT_HEADER}: {value[:40]!r} is not a block height")
        return int(value)

    def _per_request(self, header: str, quotes: Mapping[tuple[str, str], Quote], min_height: int) -> PendingPayment:
        try:
            doc = json.loads(base64.b64decode(header, validate=True))
            fields.require_fields(doc, {"x402Version", "scheme", "network", "payload"}, "X-PAYMENT")
            if doc["x402Version"] != X402_VERSION:
                raise ValueError(f"X-PAYMENT: x402Version must be {X402_VERSION}")
            if doc["scheme"] != SCHEME or doc["network"] != self.chain_id:
                raise ValueError(f"X-PAYMENT: scheme must be {SCHEME!r} on network {self.chain_id!r}")
        except (ValueError, RecursionError) as exc:
            raise PaymentRequired(f"invalid X-PAYMENT: {exc}") from exc
        return self._authorized(doc["payload"], quotes, "X-PAYMENT", min_height)

    def _authorized(
        self, payload: Any, quotes: Mapping[tuple[str, str], Quote], header: str, min_height: int
    ) -> PendingPayment:
        """A per-request authorisation (`{"authorization", "signature"}`, from either x402 version)."""
        try:
            payload = fields.require_fields(payload, {"authorization", "signature"}, f"{header} payload")
            auth = PaymentAuthorization.from_json(payload["authorization"])
            signature = fields.hex_bytes(payload["signature"], "signature", 65)
            signer = auth.signer(signature)
        except (ValueError, SignatureError, RecursionError) as exc:
            raise PaymentRequired(f"invalid {header}: {exc}") from exc
        if signer != auth.client:
            raise PaymentRequired(f"authorisation signed by {signer}, not by its client {auth.client}")
        self._common(auth.node, auth.chain_id, auth.expiry)
        quote = quotes.get((auth.model_id, auth.mode))
        if quote is None:
            raise PaymentRequired(f"this node does not serve {auth.model_id} in mode {auth.mode!r}")
        self._expiry_covers(quote, auth.expiry)
        if auth.max_fee < quote.fee(1):
            raise PaymentRequired(f"max fee {auth.max_fee} is below the price {quote.fee(1)}")
        request = (auth.client, auth.request_id)
        if self.holds.taken(request) or self.store.has_request(*request):
            raise RequestConflict(f"request id {auth.request_id} was already served")
        self._admit(quote)
        self._escrow_covers(auth.client, auth.max_fee, at_least=min_height)
        return PendingPayment(SignedPayment("request", auth, signature), auth.client, auth.request_id, min_height)

    def _allowance(self, token: str, quotes: Mapping[tuple[str, str], Quote], min_height: int) -> PendingPayment:
        try:
            payment = decode_api_key(token)
            signer = self._signer(payment)
        except (ValueError, SignatureError) as exc:
            raise PaymentRequired(f"invalid API key: {exc}") from exc
        allowance = payment.value
        assert isinstance(allowance, SpendingAllowance)
        if signer != allowance.client:
            raise PaymentRequired("API key allowance is not signed by its client")
        self._common(allowance.node, allowance.chain_id, allowance.expiry)
        pending = self._allowance_pending(allowance.id)
        spent, revoked_from = self.chain.allowance(allowance)
        if revoked_from:
            # Refused from the moment the revocation is announced: what was served before it
            # settles within the chain's revoke delay.
            raise PaymentRequired(f"API key allowance was revoked on chain (effective at height {revoked_from})")
        cheapest = min((q.fee(1) for q in quotes.values()), default=0)
        if (too_much := allowance.per_request_limit(cheapest)) is not None:
            raise PaymentRequired(f"API key allowance: no request here costs so little ({too_much})")
        if spent + pending + cheapest > allowance.cap:
            raise PaymentRequired(f"API key allowance cap {allowance.cap} reached ({spent} settled, {pending} pending)")
        self._escrow_covers(allowance.client, cheapest, at_least=min_height)
        return PendingPayment(payment, allowance.client, "0x" + secrets.token_bytes(32).hex(), min_height)

    def _signer(self, payment: SignedPayment) -> str:
        """The allowance's signer, remembered per (allowance, signature): an API key is sent with
        every request, and recovering its signer is most of the cost of checking it."""
        assert isinstance(payment.value, SpendingAllowance)
        key = bytes.fromhex(payment.value.id[2:]) + payment.signature
        signer = self._signers.get(key)
        if signer is None:
            signer = payment.signer()
            self._signers[key] = signer
            if len(self._signers) > SIGNER_CACHE_SIZE:
                self._signers.popitem(last=False)
        return signer

    def _common(self, node: str, chain_id: str, expiry: int) -> None:
        if node != self.node:
            raise PaymentRequired(f"payment is for node {node}, this node is {self.node}")
        if chain_id != self.chain_id:
            raise PaymentRequired(f"payment is for chain {chain_id!r}, this node settles on {self.chain_id!r}")
        if expiry < self.chain.height() + self.settle_margin:
            raise PaymentRequired(f"payment expires at height {expiry}, too soon to settle (now {self.chain.height()})")

    def _expiry_covers(self, quote: Quote, expiry: int) -> None:
        """The expiry leaves time for this mode's work and its settlement (the 402's min_expiry)."""
        height = self.chain.height()
        least = self.min_expiry(quote, height)
        if expiry < least:
            raise PaymentRequired(
                f"payment expires at height {expiry}, too soon to settle (now {height}):"
                f" {quote.mode} on {quote.model_name} needs an expiry of at least {least}"
            )

    # --- step 2: the work is known --------------------------------------------------------------

    def charge(self, pending: PendingPayment, quote: Quote, rows: int) -> AcceptedPayment:
        """Hold the fee for `rows` rows on `quote`'s terms; PaymentRequired when it is not covered."""
        fee = quote.fee(rows)
        auth = pending.authorization
        if auth is not None and fee > auth.max_fee:
            raise PaymentRequired(f"this request costs {fee} ({rows} rows); the authorisation allows {auth.max_fee}")
        return self._hold(pending, quote, fee)

    def charge_up_to(self, pending: PendingPayment, quote: Quote, worst: int) -> AcceptedPayment:
        """Hold what a request of unknown cost (an LLM's) may use: `worst`, or less when the
        authorisation (or what is left of the allowance's cap) allows less; the work then stops
        at what is held (`AcceptedPayment.fee`), and `settle_fee` charges what was used."""
        auth = pending.authorization
        if auth is not None:
            amount = min(worst, auth.max_fee)
        else:
            allowance = pending.payment.value
            assert isinstance(allowance, SpendingAllowance)
            unsettled = self._allowance_pending(allowance.id)
            spent, _ = self.chain.allowance(allowance)
            amount = min(worst, allowance.cap - spent - unsettled)
            if allowance.max_per_request:
                amount = min(amount, allowance.max_per_request)
        if amount < quote.fee(1):
            least = quote.fee(1)
            raise PaymentRequired(f"the payment covers {max(amount, 0)}; the least this request costs is {least}")
        return self._hold(pending, quote, amount)

    @staticmethod
    def settle_fee(accepted: AcceptedPayment, fee: int) -> AcceptedPayment:
        """The accepted payment charging `fee` (at most what was held) for the work done."""
        if fee > accepted.fee:
            raise ValueError(f"fee {fee} exceeds the {accepted.fee} held for it")
        return replace(accepted, fee=fee)

    def _hold(self, pending: PendingPayment, quote: Quote, fee: int) -> AcceptedPayment:
        # Checked and held as one step: under the client's guard (across a node's workers).
        with self.holds.guard(pending.client):
            return self._hold_guarded(pending, quote, fee)

    def _hold_guarded(self, pending: PendingPayment, quote: Quote, fee: int) -> AcceptedPayment:
        auth = pending.authorization
        # The body may have taken a while: what `check` saw must still hold now.
        value = pending.payment.value
        self._common(value.node, value.chain_id, value.expiry)
        request = (pending.client, pending.request_id)
        exclusive = auth is not None or pending.idempotent
        if exclusive:
            if auth is not None and (auth.model_id, auth.mode) != (quote.model_id, quote.mode):
                raise PaymentRequired("authorisation is for another model or mode than the request's")
            # The same X-PAYMENT sent twice at once may pass `check` twice: only one is charged and run.
            if self.holds.taken(request) or self.store.has_request(*request):
                raise RequestConflict(f"request id {pending.request_id} is being or was already served")
        if auth is None:  # an allowance's mode is known only now (a per-request one's was checked)
            self._expiry_covers(quote, value.expiry)
        self._admit(quote)
        allowance_id, allowance_held = "", 0
        if auth is None:
            allowance = pending.payment.value
            assert isinstance(allowance, SpendingAllowance)
            unsettled = self._allowance_pending(allowance.id)
            spent, revoked_from = self.chain.allowance(allowance)
            if revoked_from:
                raise PaymentRequired(f"API key allowance was revoked on chain (effective at height {revoked_from})")
            if (too_much := allowance.per_request_limit(fee)) is not None:
                raise PaymentRequired(f"API key allowance: {too_much}")
            if spent + unsettled + fee > allowance.cap:
                raise PaymentRequired(
                    f"API key allowance cap {allowance.cap} reached ({spent} settled, {unsettled} pending, {fee} asked)"
                )
            allowance_id, allowance_held = allowance.id, fee
        reserved = self._escrow_covers(pending.client, fee, at_least=pending.min_height)
        try:
            self.holds.hold(Hold(pending.client, pending.request_id, reserved, allowance_id, allowance_held, exclusive))
        except RequestTaken:
            raise RequestConflict(f"request id {pending.request_id} is being or was already served") from None
        self._count_zk(quote.mode, +1)
        return AcceptedPayment(
            pending.payment,
            pending.client,
            pending.request_id,
            fee,
            reserved,
            allowance_id,
            allowance_held,
            quote.mode,
            exclusive,
        )

    def _count_zk(self, mode: str, delta: int) -> None:
        if mode == Mode.ZKML:
            self._zk_in_flight = max(0, self._zk_in_flight + delta)

    def _allowance_pending(self, allowance_id: str) -> int:
        """What an allowance has held and unsettled, the chain view then following its last
        settlement (in this order: see _escrow_covers)."""
        held = self.holds.held_allowance(allowance_id)
        unsettled = self.store.unsettled_allowance(allowance_id)
        self._follow_settlement(allowance_id, self.store.settled_height(allowance_id), allowance=True)
        return held + unsettled

    def _follow_settlement(self, key: str, height: int, allowance: bool = False) -> None:
        """A settlement at `height` (maybe another worker's): the chain view reads the escrow or
        allowance from that height's state or later (a view of one process hears its own settler)."""
        follow = getattr(self.chain, "follow_settlement", None)
        if height and follow is not None:
            follow(("allowance" if allowance else "escrow", key), height)

    def _escrow_covers(self, client: str, fee: int, at_least: int = 0) -> int:
        """The client's escrow for this node, less what it is withdrawing, must pay this fee and
        every unsettled or in-flight one, each with its settlement fee: the amount to hold for this
        request. `at_least`: before refusing, the escrow is read from that height's state or later
        (the client's deposit block). The escrow is never read from before the last settlement the
        store knows of (another worker's settler may have made it: the fees left the escrow then)."""
        # In this order (another worker queues a receipt, then drops its hold; its settler marks
        # receipts settled with the height): a fee read in neither the holds nor the unsettled
        # receipts, or an escrow read from before a settlement the unsettled total no longer
        # counts, cannot happen; a fee counted twice can (the safe way).
        held = self.holds.held(client)
        count, fees = self.store.unsettled_charges(client)
        self._follow_settlement(client, self.store.settled_height(client))
        available = self.chain.available_escrow(client)
        pending = (fees + self.chain.settlement_fee(fees, count) if count else 0) + held
        cost = fee + self.chain.settlement_fee(fee)
        if available < pending + cost:  # a deposit since the cached read pays: read once more first
            available = self.chain.available_escrow(client, fresh=True, at_least=at_least)
        if available < pending + cost:
            raise PaymentRequired(
                f"escrow of {client} for this node is {available} (less withdrawals), with {pending} unsettled:"
                f" deposit more with `haca deposit --node {self.node}`"
            )
        return cost

    def release(self, accepted: AcceptedPayment, spent: bool = True) -> None:
        """Drop the hold taken by `charge` once the receipt is queued (it then counts as
        unsettled) or the request failed. Check, hold and release run on the event loop thread,
        so concurrent requests of one client cannot together overdraw its escrow or allowance.
        `spent`: the work began, so the request id is never served again even without a receipt
        (a replay would get the work again for free); False when it was refused before the work."""
        hold = Hold(
            accepted.client,
            accepted.request_id,
            accepted.reserved,
            accepted.allowance_id,
            accepted.allowance_held,
            accepted.exclusive,
        )
        self.holds.release(hold, spent=spent and not accepted.allowance_id)
        self._claimed.discard((accepted.client, accepted.request_id))
        self._count_zk(accepted.mode, -1)


def payment_response_headers(accepted: AcceptedPayment, chain_id: str, receipt_id: str) -> dict[str, str]:
    """A paid answer's x402 headers, v1 and v2 (each client reads its own)."""
    return {
        PAYMENT_RESPONSE_HEADER: payment_response_header(accepted, chain_id, receipt_id),
        PAYMENT_RESPONSE_HEADER_V2: payment_response_header_v2(accepted.client, chain_id, receipt_id, accepted.fee),
    }


def payment_response_header(accepted: AcceptedPayment, chain_id: str, receipt_id: str) -> str:
    doc = {"success": True, "network": chain_id, "payer": accepted.client, "receipt": receipt_id, "transaction": None}
    return base64.b64encode(json.dumps(doc).encode()).decode()
