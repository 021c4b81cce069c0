"""What a client's payment must satisfy to pay a receipt: shared by settlement (one receipt or a
batch) and claims, which must never accept a payment settlement would refuse."""

from __future__ import annotations

from haca.chain.errors import AuthorizationExpired, FeeAboveLimit, InvalidPayment
from haca.chain.modules.inference.keeper import InferenceKeeper
from haca.chain.tx import TxContext
from haca.crypto.keys import SignatureError
from haca.types.payment import PaymentAuthorization, SignedPayment, SpendingAllowance
from haca.types.receipt import Receipt


def check_authorisation(ctx: TxContext, payment: SignedPayment, node: str) -> PaymentAuthorization | SpendingAllowance:
    """What holds for either kind of payment: its client signed it, for this node and chain, and
    it has not expired at this height."""
    try:
        client = payment.signer()
    except SignatureError as exc:
        raise InvalidPayment(f"payment signature: {exc}") from exc
    auth = payment.value
    if client != auth.client:
        raise InvalidPayment(f"payment is signed by {client}, not by its client {auth.client}")
    if auth.node != node:
        raise InvalidPayment(f"payment authorises node {auth.node}, not {node}")
    if auth.chain_id != ctx.chain_id:
        raise InvalidPayment(f"payment is for chain {auth.chain_id!r}")
    if ctx.height > auth.expiry:
        raise AuthorizationExpired(f"payment expired at height {auth.expiry}; this is height {ctx.height}")
    return auth


def check_payment_for(
    ctx: TxContext, keeper: InferenceKeeper, receipt: Receipt, payment: SignedPayment
) -> PaymentAuthorization | SpendingAllowance:
    """The client's payment pays this receipt now: signed by the receipt's client for its node and
    chain, unexpired; a per-request authorisation names the receipt's request, model and mode and
    allows its fee; an allowance is not revoked, its maximum per request allows the fee and its cap
    leaves room for it. Nothing is charged (settlement and claims share these checks)."""
    if payment.value.client != receipt.client:
        raise InvalidPayment(f"payment is from {payment.value.client}, not from the receipt's client {receipt.client}")
    auth = check_authorisation(ctx, payment, receipt.node)
    if isinstance(auth, PaymentAuthorization):
        if (auth.request_id, auth.model_id, auth.mode) != (receipt.request_id, receipt.model_id, receipt.mode):
            raise InvalidPayment("payment authorises another request, model or mode than the receipt's")
        if receipt.fee > auth.max_fee:
            raise FeeAboveLimit(f"fee {receipt.fee} exceeds the authorised max fee {auth.max_fee}")
    else:
        if keeper.is_revoked(ctx.state, auth.client, auth.node, auth.nonce, ctx.height):
            raise InvalidPayment(f"allowance nonce {auth.nonce} was revoked by {auth.client}")
        if (too_much := auth.per_request_limit(receipt.fee)) is not None:
            raise FeeAboveLimit(too_much)
        spent = keeper.allowance_spent(ctx.state, auth.id)
        if spent + receipt.fee > auth.cap:
            raise FeeAboveLimit(f"allowance cap {auth.cap}: {spent} spent, fee {receipt.fee} would exceed it")
    return auth
