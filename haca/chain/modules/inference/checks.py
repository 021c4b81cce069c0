"""The checks that settling one receipt (`settle.py`) and a batch of them (`batch.py`) share, in one
place so the two paths cannot drift: the receipt's height, its settlement window, the terms in
effect at its height (mode allowed, fee at least the price, tokens within the model's limit), the
node's registration and stake for the mode, the enclave key's standing, the request not settled
before, and the client's lane covering fee + settlement fee. (What a payment must satisfy is in
`payment.py`, shared with claims too.)"""

from __future__ import annotations

from haca.chain.errors import (
    AlreadySettled,
    AuthorizationExpired,
    EnclaveNotInGoodStanding,
    InsufficientEscrow,
    InvalidEvidence,
    InvalidPayment,
    MeasurementNotApproved,
    Unauthorized,
)
from haca.chain.modules.inference.keeper import InferenceKeeper
from haca.chain.state import ReadableState
from haca.proofs.verifier import EnclaveStanding
from haca.types.registry import ModelManifest, NodeRegistration, PriceUnit, token_fee


def check_height_hint(height_hint: int, height: int) -> None:
    """A receipt cannot claim a height the chain has not reached."""
    if height_hint > height:
        raise InvalidPayment(f"receipt claims height {height_hint}, the chain is at {height}")


def check_settlement_window(height: int, height_hint: int, window: int) -> None:
    """A receipt settles (or is claimed) within `window` blocks of its height hint."""
    if height > height_hint + window:
        raise AuthorizationExpired(
            f"receipt of height {height_hint} is older than the settlement window of {window} blocks"
            f" (this is height {height}): it can no longer be settled, nor claimed"
        )


def check_fee(manifest: ModelManifest, fee: int, prompt_tokens: int, completion_tokens: int, height: int) -> None:
    """The fee is at least the model's price in effect at the receipt's height: per request (or
    row: one at least), or, for an LLM, per token for the tokens the receipt says it used."""
    tokens = prompt_tokens + completion_tokens
    if manifest.price_unit == PriceUnit.TOKEN:
        if tokens > manifest.max_rows:
            raise InvalidPayment(f"receipt counts {tokens} tokens; the model allows {manifest.max_rows} a request")
        floor = token_fee(manifest.price, manifest.completion_price, prompt_tokens, completion_tokens)
        what = f" of {prompt_tokens} prompt + {completion_tokens} completion tokens"
    else:
        if tokens:
            raise InvalidPayment(f"receipt counts tokens; model {manifest.name!r} is not priced per token")
        floor, what = manifest.price, ""
    if fee < floor:
        raise InvalidPayment(f"fee {fee} is below the price {floor}{what} in effect at height {height}")


def check_mode_registered(node_address: str, node: NodeRegistration, mode: str) -> None:
    if mode not in node.modes:
        raise Unauthorized(f"node {node_address} is not registered for mode {mode!r}")


def check_model_registered(node_address: str, node: NodeRegistration, manifest: ModelManifest, mode: str) -> None:
    """The model's terms allow the mode, and the node is registered for that model in that mode."""
    if mode not in manifest.modes:
        raise Unauthorized(f"model {manifest.name!r} does not allow mode {mode!r}")
    if mode not in node.modes or manifest.name not in node.models:
        raise Unauthorized(f"node {node_address} is not registered for {manifest.name!r} in mode {mode!r}")


def check_stake(keeper: InferenceKeeper, state: ReadableState, node_address: str, mode: str) -> None:
    """A node below the mode's minimum stake cannot be paid for it."""
    keeper.staking.require_stake(state, node_address, (mode,))


def check_standing(signer: str, standing: EnclaveStanding | None) -> None:
    """The enclave key that signed is attested, its measurement approved for the model now, and
    its coverage includes the receipt's height."""
    if standing is None:
        raise InvalidEvidence(f"enclave key {signer} is not attested")
    if not standing.approved:
        raise MeasurementNotApproved(standing.detail)
    if not standing.covered:
        raise EnclaveNotInGoodStanding(standing.detail)


def check_not_settled(keeper: InferenceKeeper, state: ReadableState, client: str, request_id: str) -> None:
    if (previous := keeper.settled_receipt(state, client, request_id)) is not None:
        raise AlreadySettled(f"request {request_id} of {client} was settled by receipt {previous}")


def check_escrow(have: int, fee: int, settlement_fee: int, client: str, node: str, owed: int | None = None) -> None:
    """The client's lane for the node covers the fee and the settlement fee (after `owed`, what a
    batch already charged the lane)."""
    if have < (owed or 0) + fee + settlement_fee:
        charged = f", {owed} already charged in this batch" if owed is not None else ""
        raise InsufficientEscrow(
            f"escrow of {client} for {node} is {have}{charged}; fee {fee} + settlement fee {settlement_fee} needed"
        )
