"""One paid-request pipeline for every route (`/v1/infer` and the OpenAI routes):

    payment check (headers only) → body, with a deadline → quote → hold the fee → the mode's
    executor (the local runtime, the enclave, or the local runtime + the prover) → charge what was
    used → queue the receipt → wake the settler

`PaidRequest` is the part before the work: a payment refused before its hold leaves the request
id free to be sent again, and every 402 carries the route's requirements. `keep` is the part
after: the receipt goes to the durable queue before the answer leaves, the hold is dropped, the
settler (and the prover) woken. What differs between routes is only how a body becomes a quote
and what runs it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from fastapi import Request

from haca.enclave.runtime import Terms
from haca.node.context import NodeContext, ZkAnswer, enclave_of, read_body
from haca.node.enclave import terms_for
from haca.node.errors import ModeNotSupported, PaymentRequired, RequestConflict, RequestTimeout
from haca.node.payments import AcceptedPayment, PendingPayment, Quote, settle_reads
from haca.node.receipts import DuplicateRequest, ProofJob
from haca.proofs.zk.proof import instances_commitment
from haca.types.modes import Mode
from haca.types.receipt import NO_INSTANCES, Receipt, SignedReceipt

BODY_DEADLINE_S = 10.0  # a paid body trickled in cannot outlive its payment

T = TypeVar("T")


async def with_requirements(
    ctx: NodeContext, exc: PaymentRequired, quotes: list[Quote], http: Request
) -> PaymentRequired:
    """The 402 with what this route accepts (x402 requirements for each offer)."""
    requirements = await settle_reads(ctx.gate.requirements, quotes, str(exc), str(http.url))
    return PaymentRequired(str(exc), requirements)


class PaidRequest:
    """A request from its payment to its hold (``async with``): the payment is checked from the
    headers before the body is read; leaving the block before `hold` succeeded gives the request
    id back; a PaymentRequired raised inside gets the route's requirements."""

    def __init__(
        self,
        ctx: NodeContext,
        http: Request,
        quotes: Mapping[tuple[str, str], Quote],
        offers: Callable[[Mapping[tuple[str, str], Quote]], list[Quote]] = lambda q: list(q.values()),
    ) -> None:
        self.ctx, self.http, self.quotes, self._offers = ctx, http, quotes, offers
        self.pending: PendingPayment | None = None
        self.accepted: AcceptedPayment | None = None

    async def __aenter__(self) -> PaidRequest:
        try:
            self.pending = await self.ctx.gate.check_async(self.http.headers, self.quotes)
        except PaymentRequired as exc:
            raise await with_requirements(self.ctx, exc, self._offers(self.quotes), self.http) from None
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.accepted is None and self.pending is not None:
            self.ctx.gate.abandon(self.pending)  # refused before the work: the same payment may come again
        if isinstance(exc, PaymentRequired) and exc.requirements is None:
            raise await with_requirements(self.ctx, exc, self._offers(self.quotes), self.http) from None

    @property
    def payment(self) -> PendingPayment:
        assert self.pending is not None
        return self.pending

    async def body(self, limit: int) -> bytes:
        try:
            async with asyncio.timeout(BODY_DEADLINE_S):
                return await read_body(self.http, limit)
        except TimeoutError:
            raise RequestTimeout(f"the body did not arrive within {BODY_DEADLINE_S:.0f} s") from None

    def quote(self, model_id: str, name: str, mode: str) -> Quote:
        """The terms of (model, mode) at this height; tee: the enclave must be covered there and its
        measurement approved for the model, checked before anything is charged."""
        quote = self.quotes.get((model_id, mode))
        if quote is None:
            raise ModeNotSupported(f"{name!r} is not offered in mode {mode!r} at this height")
        if mode == Mode.TEE:
            enclave = enclave_of(self.ctx)
            enclave.require_covered(quote.height)
            enclave.require_approved(name)
        return quote

    async def hold(self, charge: Callable[..., AcceptedPayment], *args: Any) -> AcceptedPayment:
        """Hold the fee with `charge` (gate.charge or gate.charge_up_to) off the event loop's reads."""
        self.accepted = await settle_reads(charge, self.payment, *args)
        return self.accepted


def local_receipt(
    ctx: NodeContext,
    quote: Quote,
    accepted: AcceptedPayment,
    input_hash: str,
    output_hash: str,
    zk: ZkAnswer | None = None,
    tokens: tuple[int, int] = (0, 0),
) -> SignedReceipt:
    """A vanilla or zkml receipt, signed with the node's own key (a tee receipt comes from the enclave)."""
    if quote.mode == Mode.TEE:
        raise ValueError("a tee receipt is built and signed by the enclave, never by the node")
    receipt = Receipt(
        chain_id=ctx.chain_id,
        node=ctx.key.address,
        client=accepted.client,
        request_id=accepted.request_id,
        model_id=quote.model_id,
        mode=quote.mode,
        input_hash=input_hash,
        output_hash=output_hash,
        fee=accepted.fee,
        height_hint=quote.height,  # the chain judges the fee by the terms in effect here
        timestamp=int(time.time()),
        instances_hash=instances_commitment(zk.instances) if zk else NO_INSTANCES,
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
    )
    return SignedReceipt(receipt, receipt.sign(ctx.key))


def tee_terms(ctx: NodeContext, quote: Quote, accepted: AcceptedPayment) -> Terms:
    """The terms the enclave runs a tee request on: this node's quote and what the payment holds."""
    return terms_for(ctx.chain_id, ctx.key.address, quote, accepted)


def keep(
    ctx: NodeContext,
    signed: SignedReceipt,
    accepted: AcceptedPayment,
    output: dict[str, Any],
    zk: ZkAnswer | None = None,
) -> None:
    """Write the receipt (and a zkml proof job) to the durable queue before the answer leaves,
    with the output it commits to (fetchable by the paying client if the answer is lost)."""
    job = ProofJob(signed.id, signed.receipt.model_id, zk.inputs, 0) if zk else None
    try:
        ctx.store.add(signed, accepted.payment, proof_job=job, output=output)
    except DuplicateRequest as exc:
        raise RequestConflict(str(exc)) from exc


def kept(ctx: NodeContext, proof_job: bool = False) -> None:
    """A receipt was queued: wake the settler (and the prover for a proof job)."""
    if ctx.on_receipt is not None:
        ctx.on_receipt()
    if proof_job and ctx.on_proof_job is not None:
        ctx.on_proof_job()
