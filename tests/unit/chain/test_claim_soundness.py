"""Issue 19, in-process: a claim slashes only the node's own fault. Each attack a client (or
governance) could use to get an honest node slashed is performed; afterwards the node's stake is
intact, every honest balance and lane is what it should be, and the supply invariant holds.

- a payment that expires before the claim deadline cannot back a claim (code 26);
- a receipt older than the claim window cannot be claimed (code 26), so the unbonding period,
  which must outlast window + deadline (genesis and governance refuse otherwise), covers it;
- an allowance revoked before the deadline cannot back a claim; the claim is the receipt's payment
  from then on (its hold pays, at its terms), so nothing the client does later stops the
  settlement or voids the claim;
- a receipt settles and is claimed only within the claim window of its height hint;
- a claim holds fee + settlement fee, so withdrawing the rest of the lane cannot make the
  settlement fail;
- a measurement revoked during the window voids the claim (no slash), and the receipt settles
  once the measurement is approved again."""

from __future__ import annotations

import dataclasses

import pytest

from haca.chain import errors
from haca.chain.genesis import parse_app_genesis
from haca.chain.modules.staking.keeper import StakingParams
from haca.types.encoding import canonical_json
from haca.types.gov import MsgUpdateParams
from haca.types.inference import MsgClaim, MsgRevokeAllowance, MsgSettle, MsgWithdraw, SettlementItem
from haca.types.payment import PaymentAuthorization, SignedPayment, SpendingAllowance
from haca.types.staking import MsgUnbond
from haca.types.tee import MsgApproveMeasurement, MsgRevokeMeasurement, MsgSetTeePolicy
from tests.unit.chain import apphelpers
from tests.unit.chain import test_accountability as accountability
from tests.unit.chain.apphelpers import Node
from tests.unit.chain.test_accountability import (
    CLAIM_WINDOW,
    DEADLINE,
    STAKE,
    accountable_genesis,
    blocks_until,
    holds,
    ok,
    rejected,
    stake,
)
from tests.unit.chain.test_tee import AUTHORITY, CHAIN_ID, CLIENT, DEV_MID, FEE, NODE, tee_item

# the same chain as the accountability tests: a bonded tee node with an attested enclave
dev, chain = accountability.dev, accountability.chain


def outcome_at(chain: Node, deadline: int) -> str:
    """What ends the claims due at `deadline` (the block is made): "slash" or "claim_voided"."""
    blocks_until(chain, deadline - 1)
    (kind,) = [e.type for e in chain.block().events if e.type in ("slash", "claim_voided")]
    return kind


def settlement_fee(chain: Node) -> int:
    return chain.app.inference.params(chain.app.store).settlement_fee_for(FEE)


def paid_with(item: SettlementItem, payment: SignedPayment) -> SettlementItem:
    return SettlementItem(item.receipt, payment, item.evidence)


def authorization(item: SettlementItem, expiry: int) -> SignedPayment:
    r = item.receipt.receipt
    auth = PaymentAuthorization(CHAIN_ID, r.client, r.node, r.request_id, r.model_id, r.mode, FEE, expiry)
    return SignedPayment("request", auth, auth.sign(CLIENT))


def allowance(nonce: int) -> SignedPayment:
    value = SpendingAllowance(CHAIN_ID, CLIENT.address, NODE.address, 10**9, expiry=10**9, nonce=nonce)
    return SignedPayment("allowance", value, value.sign(CLIENT))


def test_a_payment_expiring_before_the_claim_deadline_cannot_back_a_claim(chain):
    """Attack 1/3: the client pays with an authorisation that ends inside the claim window, then
    claims at once: refused, the node is never exposed."""
    item = tee_item(chain, 100)
    short = authorization(item, expiry=chain.height + DEADLINE)  # the deadline is height+1 + DEADLINE
    rejected(chain, CLIENT, MsgClaim(item.receipt, short), errors.ClaimWindowNotCovered.code, "before the claim")
    # Just long enough is accepted: the node has the whole window.
    ok(chain.deliver(CLIENT, MsgClaim(item.receipt, authorization(item, expiry=chain.height + 1 + DEADLINE))))
    holds(chain)


def test_a_claim_must_show_the_payment_of_its_own_receipt(chain):
    item, other = tee_item(chain, 101), tee_item(chain, 102)
    msg = MsgClaim(item.receipt, other.payment)
    rejected(chain, CLIENT, msg, errors.InvalidPayment.code, "another request")


def test_a_receipt_older_than_the_claim_window_cannot_be_claimed(chain):
    item = tee_item(chain, 103)
    blocks_until(chain, item.receipt.receipt.height_hint + CLAIM_WINDOW)
    msg = MsgClaim(item.receipt, item.payment)
    rejected(chain, CLIENT, msg, errors.ClaimWindowNotCovered.code, "older than the claim window")


def test_an_allowance_revoked_before_the_deadline_cannot_back_a_claim(chain):
    first = paid_with(tee_item(chain, 104), allowance(11))
    ok(chain.deliver(CLIENT, MsgRevokeAllowance(NODE.address, 11)))
    msg = MsgClaim(first.receipt, first.payment)
    rejected(chain, CLIENT, msg, errors.ClaimWindowNotCovered.code, "allowance is revoked from height")


def test_a_client_revoking_its_allowance_after_claiming_cannot_stop_the_settlement_nor_void_the_claim(chain):
    """The claim is the receipt's payment: revoking the allowance after it changes nothing (a silent
    node is still slashed, an honest one is still paid)."""
    ok(chain.deliver(AUTHORITY, MsgUpdateParams("inference", {"revoke_delay": "1"})))  # effective inside the window
    silent, honest = paid_with(tee_item(chain, 105), allowance(12)), paid_with(tee_item(chain, 111), allowance(12))
    ok(chain.deliver(CLIENT, MsgClaim(silent.receipt, silent.payment)))
    ok(chain.deliver(CLIENT, MsgClaim(honest.receipt, honest.payment)))
    deadline = chain.height - 1 + DEADLINE
    ok(chain.deliver(CLIENT, MsgRevokeAllowance(NODE.address, 12)))
    chain.block()
    ok(chain.deliver(NODE, MsgSettle((honest,))))  # after the revocation took effect
    assert chain.answer("/inference/receipt", honest.receipt.id.encode())["status"] == "verified"
    assert outcome_at(chain, deadline) == "slash"
    holds(chain)


def test_a_claim_is_the_payment_the_node_settles_with_even_after_its_own_authorisation_expired(chain):
    """The client pays with a short authorisation, withdraws, lets it expire, then claims with a
    fresh one for the same request: the node settles the receipt on the claim (its hold pays)."""
    item = tee_item(chain, 112)
    short = paid_with(item, authorization(item, expiry=chain.height + 3))
    blocks_until(chain, chain.height + 4)
    refused = chain.deliver(NODE, MsgSettle((short,)))
    assert refused.code == errors.AuthorizationExpired.code, refused.log
    ok(chain.deliver(CLIENT, MsgClaim(item.receipt, authorization(item, expiry=chain.height + 100))))
    node_balance = chain.balance(NODE.address)
    raw = chain.tx(NODE, MsgSettle((short,)))  # the node's own (expired) payment: the claim pays
    result = chain.block([raw]).tx_results[0]
    ok(result)
    assert chain.answer("/inference/receipt", item.receipt.id.encode())["status"] == "verified"
    assert chain.balance(NODE.address) == node_balance + FEE - apphelpers.fee_of(raw)
    assert stake(chain, NODE.address)["bonded"] == str(STAKE)
    holds(chain)


def test_a_receipt_with_an_old_height_hint_can_neither_settle_nor_be_claimed(chain):
    """A node cannot sign receipts with old height hints to make them unclaimable and still be paid."""
    blocks_until(chain, CLAIM_WINDOW + 3)
    old = tee_item(chain, 113, height_hint=chain.height - CLAIM_WINDOW - 1)
    refused = chain.deliver(NODE, MsgSettle((old,)))
    assert refused.code == errors.AuthorizationExpired.code and "settlement window" in refused.log, refused.log
    rejected(chain, CLIENT, MsgClaim(old.receipt, old.payment), errors.ClaimWindowNotCovered.code, "older than")


def test_an_approval_widened_during_the_window_does_not_void_the_claim(chain):
    item = tee_item(chain, 114)
    ok(chain.deliver(CLIENT, MsgClaim(item.receipt, item.payment)))
    deadline = chain.height + DEADLINE
    ok(chain.deliver(AUTHORITY, MsgApproveMeasurement(DEV_MID, "llm")))  # no revocation: nothing outside
    assert outcome_at(chain, deadline) == "slash"


def test_a_claim_holds_the_settlement_fee_so_a_drained_lane_cannot_fail_the_settlement(chain):
    ok(chain.deliver(AUTHORITY, MsgUpdateParams("inference", {"withdraw_delay": "2"})))  # paid inside the window
    item = tee_item(chain, 106)
    ok(chain.deliver(CLIENT, MsgClaim(item.receipt, item.payment)))
    rest = chain.escrow(CLIENT.address, NODE.address)
    ok(chain.deliver(CLIENT, MsgWithdraw(NODE.address, rest)))  # everything the lane has left
    blocks_until(chain, chain.height + chain.app.inference.params(chain.app.store).withdraw_delay + 1)
    assert chain.escrow(CLIENT.address, NODE.address) == 0
    node_balance = chain.balance(NODE.address)
    raw = chain.tx(NODE, MsgSettle((item,)))
    ok(chain.block([raw]).tx_results[0])
    assert chain.answer("/inference/receipt", item.receipt.id.encode())["status"] == "verified"
    assert chain.balance(NODE.address) == node_balance + FEE - apphelpers.fee_of(raw)
    assert stake(chain, NODE.address)["bonded"] == str(STAKE)
    holds(chain)


def test_a_measurement_revoked_during_the_window_voids_the_claim_and_the_receipt_settles_after_reapproval(chain):
    """Attack 4: governance revokes the enclave's measurement while a client holds a receipt, the
    client claims: the claim is voided at the deadline, not slashed; approved again, it settles."""
    item = tee_item(chain, 107)
    escrow = chain.escrow(CLIENT.address, NODE.address)
    ok(chain.deliver(CLIENT, MsgClaim(item.receipt, item.payment)))
    deadline = chain.height + DEADLINE
    ok(chain.deliver(AUTHORITY, MsgRevokeMeasurement(DEV_MID, "*")))
    refused = chain.deliver(NODE, MsgSettle((item,)))
    assert refused.code == errors.MeasurementNotApproved.code, refused.log
    assert outcome_at(chain, deadline) == "claim_voided"
    assert stake(chain, NODE.address)["bonded"] == str(STAKE)
    assert chain.escrow(CLIENT.address, NODE.address) == escrow
    ok(chain.deliver(AUTHORITY, MsgApproveMeasurement(DEV_MID, "*")))
    ok(chain.deliver(NODE, MsgSettle((item,))))
    assert chain.escrow(CLIENT.address, NODE.address) == escrow - FEE - settlement_fee(chain)
    holds(chain)


def test_a_measurement_revoked_and_approved_again_inside_the_window_still_voids_the_claim(chain):
    item = tee_item(chain, 108)
    ok(chain.deliver(CLIENT, MsgClaim(item.receipt, item.payment)))
    deadline = chain.height + DEADLINE
    ok(chain.deliver(AUTHORITY, MsgRevokeMeasurement(DEV_MID, "*")))
    ok(chain.deliver(AUTHORITY, MsgApproveMeasurement(DEV_MID, "*")))
    assert outcome_at(chain, deadline) == "claim_voided"
    assert stake(chain, NODE.address)["bonded"] == str(STAKE)
    holds(chain)


def test_a_silent_node_with_an_approved_measurement_is_still_slashed(chain):
    item = tee_item(chain, 109)
    ok(chain.deliver(CLIENT, MsgClaim(item.receipt, item.payment)))
    assert outcome_at(chain, chain.height + DEADLINE) == "slash"
    assert int(stake(chain, NODE.address)["bonded"]) < STAKE


def test_governance_cannot_shorten_unbonding_below_the_claim_window_and_deadline(chain):
    short = str(CLAIM_WINDOW + DEADLINE - 1)
    msg = MsgUpdateParams("staking", {"unbonding_period": short})
    rejected(chain, AUTHORITY, msg, errors.InvalidMessage.code, "stake would leave before the claims")
    longer = MsgUpdateParams("inference", {"claim_deadline": str(DEADLINE + 1)})
    rejected(chain, AUTHORITY, longer, errors.InvalidMessage.code, "stake would leave before the claims")
    ok(chain.deliver(AUTHORITY, MsgUpdateParams("inference", {"claim_window": str(CLAIM_WINDOW - 1)})))
    ok(chain.deliver(AUTHORITY, MsgUpdateParams("inference", {"claim_deadline": str(DEADLINE + 1)})))


def test_a_genesis_whose_unbonding_is_shorter_than_the_claim_window_and_deadline_is_refused(dev):
    base = accountable_genesis(dev)
    bad = dataclasses.replace(base, staking=StakingParams(unbonding_period=CLAIM_WINDOW + DEADLINE - 1))
    with pytest.raises(errors.InvalidGenesis, match="stake would leave before the claims"):
        parse_app_genesis(canonical_json(bad.to_json()))
    parse_app_genesis(canonical_json(base.to_json()))  # the same with the unbonding it needs


def test_a_minimum_stake_raised_by_governance_during_the_window_is_no_excuse_for_a_silent_node(chain):
    """It could settle its claimed receipt all the same (the claim pays): silent, it is slashed."""
    item = tee_item(chain, 110)
    ok(chain.deliver(CLIENT, MsgClaim(item.receipt, item.payment)))
    deadline = chain.height + DEADLINE
    ok(chain.deliver(AUTHORITY, MsgUpdateParams("staking", {"min_stake_tee": str(2 * STAKE)})))
    assert outcome_at(chain, deadline) == "slash"
    assert int(stake(chain, NODE.address)["bonded"]) < STAKE
    holds(chain)


def test_a_node_under_the_minimum_when_claimed_cannot_settle_the_claim_with_its_hold(chain):
    """Only a node that met the minimum when the claim was made settles it whatever its bond."""
    ok(chain.deliver(AUTHORITY, MsgUpdateParams("staking", {"min_stake_tee": str(2 * STAKE)})))
    item = tee_item(chain, 119)
    ok(chain.deliver(CLIENT, MsgClaim(item.receipt, item.payment)))
    refused = chain.deliver(NODE, MsgSettle((item,)))
    assert refused.code == errors.InsufficientStake.code, refused.log
    holds(chain)


def slash_or_void_events(chain: Node, until: int) -> list[str]:
    kinds = []
    while chain.height < until:
        kinds += [e.type for e in chain.block().events if e.type in ("slash", "claim_voided")]
        holds(chain)
    return kinds


def test_a_minimum_stake_raised_during_the_window_does_not_stop_the_node_settling_its_claimed_receipt(chain):
    """The minimum bounds new business; a claimed receipt was served while it was met, and its
    claim's hold pays."""
    item = tee_item(chain, 111)
    escrow = chain.escrow(CLIENT.address, NODE.address)
    ok(chain.deliver(CLIENT, MsgClaim(item.receipt, item.payment)))
    deadline = chain.height + DEADLINE
    ok(chain.deliver(AUTHORITY, MsgUpdateParams("staking", {"min_stake_tee": str(2 * STAKE)})))
    unclaimed = tee_item(chain, 112)  # new business under the raised minimum: refused
    assert chain.deliver(NODE, MsgSettle((unclaimed,))).code == errors.InsufficientStake.code
    ok(chain.deliver(NODE, MsgSettle((item,))))
    assert chain.answer("/inference/receipt", item.receipt.id.encode())["status"] == "verified"
    assert chain.escrow(CLIENT.address, NODE.address) == escrow - FEE - settlement_fee(chain)
    assert slash_or_void_events(chain, deadline + 1) == []
    assert stake(chain, NODE.address)["bonded"] == str(STAKE)
    holds(chain)


def test_one_slash_does_not_cascade_into_a_slash_for_every_claim_that_follows(chain):
    """A node slashed below the minimum (silent on one claim) still answers its other claims: were
    its settlements refused for the stake the slash took, each later claim would slash it again."""
    ok(chain.deliver(AUTHORITY, MsgUpdateParams("staking", {"min_stake_tee": str(STAKE)})))  # met exactly
    missed, answered = tee_item(chain, 113), tee_item(chain, 114)
    ok(chain.deliver(CLIENT, MsgClaim(missed.receipt, missed.payment)))
    first_deadline = chain.height + DEADLINE
    ok(chain.deliver(CLIENT, MsgClaim(answered.receipt, answered.payment)))
    second_deadline = chain.height + DEADLINE
    assert outcome_at(chain, first_deadline) == "slash"
    after_slash = int(stake(chain, NODE.address)["bonded"])
    assert after_slash < STAKE  # below the minimum now
    escrow = chain.escrow(CLIENT.address, NODE.address)
    ok(chain.deliver(NODE, MsgSettle((answered,))))
    assert chain.answer("/inference/receipt", answered.receipt.id.encode())["status"] == "verified"
    assert chain.escrow(CLIENT.address, NODE.address) == escrow  # the claim's hold paid
    assert slash_or_void_events(chain, second_deadline + 1) == []
    assert int(stake(chain, NODE.address)["bonded"]) == after_slash
    holds(chain)


def test_a_measurement_revoked_and_approved_again_before_the_claim_leaves_the_node_to_settle(chain):
    """The node had the measurement back for the whole window: silent, it is slashed."""
    item = tee_item(chain, 115)
    ok(chain.deliver(AUTHORITY, MsgRevokeMeasurement(DEV_MID, "*")))
    ok(chain.deliver(AUTHORITY, MsgApproveMeasurement(DEV_MID, "*")))
    ok(chain.deliver(CLIENT, MsgClaim(item.receipt, item.payment)))
    assert outcome_at(chain, chain.height + DEADLINE) == "slash"


def allowance_spent(chain: Node, payment: SignedPayment) -> int:
    return int(chain.answer("/inference/allowance", canonical_json(payment.value.to_json()))["spent"])


def test_a_claim_reserves_its_fee_under_the_allowance_cap_and_an_expired_claim_gives_it_back(chain):
    """The client cannot spend past its cap through a claim: the claimed fee counts against the cap
    while the claim runs, and is released when the claim ends without a settlement."""
    pay = allowance(13)
    item = paid_with(tee_item(chain, 116), pay)
    ok(chain.deliver(CLIENT, MsgClaim(item.receipt, item.payment)))
    assert allowance_spent(chain, pay) == FEE
    assert outcome_at(chain, chain.height + DEADLINE) == "slash"
    assert allowance_spent(chain, pay) == 0
    holds(chain)


def test_a_node_unbonding_after_a_minimum_stake_raise_is_still_slashed(chain):
    """The void for a raised minimum judges the bond the node had at the claim: a node that unbonds
    below the new minimum after the claim cannot dress its silence up as governance's doing."""
    item = tee_item(chain, 117)
    ok(chain.deliver(CLIENT, MsgClaim(item.receipt, item.payment)))
    deadline = chain.height + DEADLINE
    ok(chain.deliver(AUTHORITY, MsgUpdateParams("staking", {"min_stake_tee": str(STAKE)})))  # met exactly
    ok(chain.deliver(NODE, MsgUnbond(1)))  # now one under it, by its own act
    assert outcome_at(chain, deadline) == "slash"
    holds(chain)


def test_gpu_evidence_required_by_governance_after_the_receipt_voids_the_claim(chain):
    """Governance adds the model to gpu_required while a client holds a receipt from an enclave
    without GPU evidence: the node cannot settle it any more, through no fault of its own, so the
    claim is voided at the deadline, not slashed; lifted again, the receipt settles."""
    item = tee_item(chain, 120)
    escrow, bonded = chain.escrow(CLIENT.address, NODE.address), stake(chain, NODE.address)["bonded"]
    ok(chain.deliver(CLIENT, MsgClaim(item.receipt, item.payment)))
    deadline = chain.height + DEADLINE
    ok(chain.deliver(AUTHORITY, MsgSetTeePolicy({"gpu_required": ["*"]})))
    refused = chain.deliver(NODE, MsgSettle((item,)))
    assert refused.code == errors.MeasurementNotApproved.code and "requires GPU evidence" in refused.log
    assert outcome_at(chain, deadline) == "claim_voided"
    assert stake(chain, NODE.address)["bonded"] == bonded
    assert chain.escrow(CLIENT.address, NODE.address) == escrow
    ok(chain.deliver(AUTHORITY, MsgSetTeePolicy({"gpu_required": []})))
    ok(chain.deliver(NODE, MsgSettle((item,))))
    assert chain.escrow(CLIENT.address, NODE.address) == escrow - FEE - settlement_fee(chain)
    holds(chain)


def test_a_receipt_signed_while_gpu_evidence_was_already_required_is_the_nodes_fault(chain):
    ok(chain.deliver(AUTHORITY, MsgSetTeePolicy({"gpu_required": ["*"]})))
    blocks_until(chain, chain.height + 1)
    item = tee_item(chain, 121)  # signed by the GPU-less enclave under the requirement
    ok(chain.deliver(CLIENT, MsgClaim(item.receipt, item.payment)))
    assert outcome_at(chain, chain.height + DEADLINE) == "slash"
    holds(chain)
