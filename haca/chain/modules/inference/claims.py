"""Accountability for the trust gap: claims with deadlines and equivocation, both paid from the
node's stake (the staking module).

- A client holding a node-signed tee or zkml receipt may claim it (MsgClaim). The receipt's fee is
  held from the client's escrow lane. If the node settles that receipt with valid evidence before
  the deadline, the claim is resolved and the fee pays the node as usual. If not, at the deadline
  the node is slashed `claim_slash_bps` of its stake (bonded and unbonding: unbonding does not
  escape a pending claim, and its payout waits for the deadline); the client gets the held fee
  back plus `claim_compensation_bps` of the slash; the rest is burned; the receipt ends `failed`
  and can never settle.
- Two receipts one node signed (its account key or one of its attested enclave keys) for one
  client's request id with different outputs (MsgReportEquivocation, from anyone): the node is
  slashed `equivocation_slash_bps` on sight, once per request; the reporter gets
  `equivocation_reward_bps` of the slash; the rest is burned.
"""

from __future__ import annotations

from haca.chain.errors import ClaimConflict, ClaimWindowNotCovered, InvalidEvidence, NotFound, Unauthorized
from haca.chain.events import Event
from haca.chain.modules.inference.keeper import ESCROW_ACCOUNT, InferenceKeeper
from haca.chain.modules.inference.payment import check_payment_for
from haca.chain.modules.registry.keeper import RegistryKeeper
from haca.chain.modules.tee.keeper import TeeKeeper
from haca.chain.state import CachedState, ReadableState
from haca.chain.tx import TxContext
from haca.crypto.keys import SignatureError
from haca.proofs.tee.policy import gpu_missing
from haca.types.inference import MsgClaim, MsgReportEquivocation
from haca.types.modes import Mode, Status
from haca.types.payment import SpendingAllowance
from haca.types.receipt import SignedReceipt
from haca.types.settlement import ClaimPenalty, ClaimRecord, SettlementRecord

BPS = 10_000
CLAIMABLE = (Mode.TEE, Mode.ZKML)


def receipt_signed_by_node(tee: TeeKeeper, state: ReadableState, signed: SignedReceipt) -> str:
    """Who signed the receipt, if it is its node's account key or an enclave key the chain attested
    for that node (InvalidEvidence otherwise): a node answers for both."""
    receipt = signed.receipt
    try:
        signer = receipt.signer(signed.signature)
    except (SignatureError, ValueError) as exc:
        raise InvalidEvidence(f"receipt {signed.id}: unreadable signature: {exc}") from exc
    if signer == receipt.node:
        return signer
    record = tee.enclave(state, signer)
    if record is not None and record.node == receipt.node:
        return signer
    raise InvalidEvidence(f"receipt {signed.id} is signed by {signer}, neither node {receipt.node} nor its enclave")


def handle_claim(
    keeper: InferenceKeeper, registry: RegistryKeeper, tee: TeeKeeper, ctx: TxContext, msg: MsgClaim
) -> list[Event]:
    signed, receipt = msg.receipt, msg.receipt.receipt
    if ctx.signer != receipt.client:
        raise Unauthorized(f"only the receipt's client {receipt.client} may claim it")
    if receipt.chain_id != ctx.chain_id:
        raise ClaimConflict(f"receipt is for chain {receipt.chain_id!r}")
    if receipt.mode not in CLAIMABLE:
        raise ClaimConflict(f"a {receipt.mode} receipt carries no evidence to claim; only tee and zkml ones do")
    registry.node(ctx.state, receipt.node)  # NotFound for an unregistered node
    signer = receipt_signed_by_node(tee, ctx.state, signed)
    if keeper.claim(ctx.state, signed.id) is not None:
        raise ClaimConflict(f"receipt {signed.id} is already claimed")
    if (settled := keeper.settled_receipt(ctx.state, receipt.client, receipt.request_id)) is not None:
        raise ClaimConflict(f"request {receipt.request_id} was already settled by receipt {settled}")
    params = keeper.params(ctx.state)
    deadline = ctx.height + params.claim_deadline
    try:
        manifest = registry.model_in_effect(ctx.state, receipt.model_id, receipt.height_hint, receipt.node)
    except NotFound:  # the node lists the bytes under another name now: that must not make it unclaimable
        manifest = registry.model_in_effect(ctx.state, receipt.model_id, receipt.height_hint)
    if receipt.height_hint > ctx.height:
        raise ClaimConflict(f"receipt claims height {receipt.height_hint}, the chain is at {ctx.height}")
    if ctx.height > receipt.height_hint + params.claim_window:
        # Bounded so that a node's unbonding (>= claim_window + claim_deadline) outlasts every
        # claim on what it signed while bonded.
        raise ClaimWindowNotCovered(
            f"receipt of height {receipt.height_hint} is older than the claim window of {params.claim_window} blocks"
        )
    auth = check_payment_for(ctx, keeper, receipt, msg.payment)
    # The node must have had the whole window to settle: a payment that ends before the deadline
    # would make a slash follow from what the client signed, not from the node's fault.
    if auth.expiry < deadline:
        raise ClaimWindowNotCovered(
            f"the payment expires at height {auth.expiry}, before the claim deadline {deadline}:"
            " the node could not settle it in the claim window"
        )
    if isinstance(auth, SpendingAllowance):
        revoked = keeper.revoked_from(ctx.state, auth.client, auth.node, auth.nonce)
        if revoked and revoked <= deadline:
            raise ClaimWindowNotCovered(
                f"the allowance is revoked from height {revoked}, before the claim deadline {deadline}"
            )
        keeper.add_allowance_spent(ctx.state, auth.id, receipt.fee)  # reserved under the cap for the claim
    held = receipt.fee + params.settlement_fee_for(receipt.fee)
    # From here the claim is the receipt's payment: its settlement draws on this hold (at this
    # settlement fee) whatever the client does with its lane, allowance or other authorisations.
    keeper.take_from_escrow(ctx.state, receipt.client, receipt.node, held)
    claim = ClaimRecord(
        receipt.client,
        receipt.node,
        receipt.request_id,
        receipt.model_id,
        manifest.name,
        receipt.mode,
        receipt.fee,
        held,
        signer,
        msg.payment.kind,
        auth.id if isinstance(auth, SpendingAllowance) else "",
        receipt.height_hint,
        # the mode's minimum stake and the node's bond now: governance raising the minimum above
        # that bond during the window is not the node's fault (an unbond after the claim is)
        keeper.staking.params(ctx.state).min_stake((receipt.mode,)),
        keeper.staking.bonded(ctx.state, receipt.node),
        ctx.height,
        deadline,
    )
    keeper.add_claim(ctx.state, signed.id, claim)
    attrs = {"receipt_id": signed.id, "client": receipt.client, "node": receipt.node, "deadline": str(deadline)}
    return [Event("claim", attrs)]


def resolve_claim(keeper: InferenceKeeper, state: CachedState, receipt_id: str) -> tuple[Event, ClaimRecord] | None:
    """The claimed receipt is settling with valid evidence: its hold goes back to the lane, from
    which the settlement pays it (the claim's fee and settlement fee; its allowance was charged
    when the claim was made). The event and the claim, or None when the receipt is not claimed."""
    claim = keeper.claim(state, receipt_id)
    if claim is None:
        return None
    keeper.drop_claim(state, receipt_id, claim)
    keeper.return_to_escrow(state, claim.client, claim.node, claim.held)
    event = Event("claim_resolved", {"receipt_id": receipt_id, "node": claim.node, "client": claim.client})
    return event, claim


def _release_reservation(keeper: InferenceKeeper, state: CachedState, claim: ClaimRecord) -> None:
    """A claim that ends without a settlement gives back what it reserved under its allowance's cap."""
    if claim.allowance_id:
        keeper.add_allowance_spent(state, claim.allowance_id, -claim.fee)


def outside_cause(keeper: InferenceKeeper, tee: TeeKeeper, state: ReadableState, claim: ClaimRecord) -> str:
    """Why the claimed receipt could not settle for a cause outside the node's control ("" when
    none): then the claim is voided, never slashed.

    - governance revoked the enclave's measurement (for the model or for all) after the receipt
      was signed, and it is not approved at the deadline, or the revocation came during the
      window (revocations are recorded by height: a measurement never approved for the model, or
      revoked and approved again before the claim, is the node's to settle);
    - governance required GPU evidence for the model (TEE policy gpu_required) after the receipt
      was signed, and the enclave that signed it has none (a requirement in force when it signed
      is the node's to meet).
    The client's own acts cannot stop the settlement: the claim is the payment (its hold pays, its
    allowance share is reserved), so an expiry, a revocation or a drained lane changes nothing.
    A minimum stake raised during the window is no cause: a node that met the minimum when the
    claim was made settles its claimed receipt whatever its bond is now (settle.py)."""
    record = tee.enclave(state, claim.signer)
    if record is not None and claim.mode == Mode.TEE:
        mid, model = record.measurement_id, claim.model_name
        revoked = tee.revoked_at(state, mid, model)
        approved_now = tee.approved_scope(state, mid, [model]) is not None
        after_receipt = revoked and revoked >= claim.height_hint
        if after_receipt and (not approved_now or revoked >= claim.height):
            return f"governance revoked measurement {mid} at height {revoked}"
        if gpu_missing(tee.gpu_required(state), len(record.gpus), record.key, model):
            since = tee.gpu_required_since(state, model)
            if since > claim.height_hint:
                return f"governance required GPU evidence for {model!r} at height {since}, after the receipt"
    return ""


def expire_claims(keeper: InferenceKeeper, tee: TeeKeeper, state: CachedState, height: int) -> list[Event]:
    """Claims whose deadline is this height and whose evidence never settled: slash and refund, or,
    when an outside cause kept the receipt from settling, void the claim (the held amount goes back
    to the lane; the receipt may still settle with its own payment)."""
    events = []
    params = keeper.params(state)
    for receipt_id in keeper.claims_due(state, height):
        claim = keeper.claim(state, receipt_id)
        assert claim is not None
        keeper.drop_claim(state, receipt_id, claim)
        client, node, held = claim.client, claim.node, claim.held
        _release_reservation(keeper, state, claim)
        if cause := outside_cause(keeper, tee, state, claim):
            keeper.return_to_escrow(state, client, node, held)
            attrs = {"receipt_id": receipt_id, "node": node, "client": client, "reason": cause}
            events.append(Event("claim_voided", attrs))
            continue
        keeper.bank.send(state, ESCROW_ACCOUNT, client, held)  # the held fee, back to the client
        slashed = keeper.staking.slash(state, node, params.claim_slash_bps)
        compensation = slashed * params.claim_compensation_bps // BPS
        keeper.staking.pay_out(state, client, compensation)
        keeper.staking.burn(state, slashed - compensation)
        reason = "claim_expired: no valid evidence settled before the deadline"
        record = SettlementRecord(
            receipt_id,
            Status.FAILED,
            height,
            node,
            client,
            claim.request_id,
            claim.model_id,
            claim.mode,
            0,
            0,
            "claim",
            penalty=ClaimPenalty(reason, slashed, compensation, held),
        )
        keeper.record_settlement(state, record)  # the request can never settle now
        attrs = {
            "node": node,
            "reason": "claim_expired",
            "receipt_id": receipt_id,
            "client": client,
            "slashed": str(slashed),
            "compensation": str(compensation),
            "burned": str(slashed - compensation),
        }
        events.append(Event("slash", attrs))
    return events


def handle_report_equivocation(
    keeper: InferenceKeeper, registry: RegistryKeeper, tee: TeeKeeper, ctx: TxContext, msg: MsgReportEquivocation
) -> list[Event]:
    a, b = msg.first.receipt, msg.second.receipt
    if (a.node, a.client, a.request_id, a.chain_id) != (b.node, b.client, b.request_id, b.chain_id):
        raise InvalidEvidence("the two receipts are not for one node, client and request id on this chain")
    if a.chain_id != ctx.chain_id:
        raise InvalidEvidence(f"receipts are for chain {a.chain_id!r}")
    if a.output_hash == b.output_hash:
        raise InvalidEvidence("the two receipts commit to the same output: no equivocation")
    registry.node(ctx.state, a.node)  # NotFound for an unregistered node
    receipt_signed_by_node(tee, ctx.state, msg.first)
    receipt_signed_by_node(tee, ctx.state, msg.second)
    if keeper.equivocation_reported(ctx.state, a.node, a.client, a.request_id):
        raise ClaimConflict(f"equivocation on request {a.request_id} was already reported and slashed")
    keeper.record_equivocation(ctx.state, a.node, a.client, a.request_id, ctx.height)
    params = keeper.params(ctx.state)
    slashed = keeper.staking.slash(ctx.state, a.node, params.equivocation_slash_bps)
    reward = slashed * params.equivocation_reward_bps // BPS
    keeper.staking.pay_out(ctx.state, ctx.signer, reward)
    keeper.staking.burn(ctx.state, slashed - reward)
    attrs = {
        "node": a.node,
        "reason": "equivocation",
        "request_id": a.request_id,
        "client": a.client,
        "reporter": ctx.signer,
        "slashed": str(slashed),
        "reward": str(reward),
        "burned": str(slashed - reward),
    }
    return [Event("slash", attrs)]
