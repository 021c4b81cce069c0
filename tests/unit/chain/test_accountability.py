"""Issue 11, in-process: staking (bond, unbond after a delay, minimum stake to register and to be
paid), claims with deadlines (an honest node settles in time and keeps its stake; a silent one is
slashed, the client refunded and compensated, the receipt `failed`; unbonding does not escape a
pending claim), equivocation slashed on sight with the reporter rewarded, a validator's duplicate
vote slashed and removed from the set — each refusal with its code and no state change, and the
supply invariant (genesis = balances + escrow + bonded + unbonding + burned) after every block."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from tendermint.abci import types_pb2 as abci

from haca.chain import errors
from haca.chain.modules.inference.keeper import ESCROW_ACCOUNT
from haca.chain.modules.staking.keeper import STAKING_ACCOUNT, StakingParams
from haca.crypto.keys import PrivateKey
from haca.types.gov import MsgUpdateParams
from haca.types.inference import MsgClaim, MsgDeposit, MsgReportEquivocation, MsgSettle
from haca.types.receipt import SignedReceipt
from haca.types.staking import MsgBond, MsgUnbond
from tests.metricshelpers import samples, value
from tests.unit.chain import apphelpers
from tests.unit.chain.apphelpers import Node
from tests.unit.chain.test_tee import (
    AUTHORITY,
    CLIENT,
    ENCLAVE,
    FEE,
    FUNDS,
    LLM,
    MALLORY,
    NODE,
    NODE_B,
    NODE_MSG,
    OWNER,
    attest,
    dev_platform,
    genesis,
    tee_item,
)

STAKE, MIN_TEE = 10**9, 10**8
DEADLINE, CLAIM_WINDOW = 6, 10
UNBONDING = CLAIM_WINDOW + DEADLINE  # the shortest the chain accepts (haca.chain.windows)
VALIDATOR_KEY = bytes(range(32))  # an ed25519 public key (any 32 bytes do for the app)
OPERATOR = PrivateKey.from_seed("validator operator")
VALIDATOR_STAKE = 5 * 10**9
STAKING = StakingParams(unbonding_period=UNBONDING, min_stake_tee=MIN_TEE, min_stake_vanilla=MIN_TEE)


@pytest.fixture(scope="module")
def dev(tmp_path_factory) -> dict[str, bytes]:
    return dev_platform(tmp_path_factory)


def accountable_genesis(dev):
    base = genesis(dev)
    return dataclasses.replace(
        base,
        inference=dataclasses.replace(base.inference, claim_deadline=DEADLINE, claim_window=CLAIM_WINDOW),
        staking=STAKING,
        bonds=((NODE.address, STAKE), (OPERATOR.address, VALIDATOR_STAKE)),
        validators=((base64.b64encode(VALIDATOR_KEY).decode(), OPERATOR.address),),
    )


MINTED = 6 * FUNDS + STAKE + VALIDATOR_STAKE


@pytest.fixture
def chain(tmp_path: Path, monkeypatch, dev):
    monkeypatch.setattr(apphelpers, "GENESIS_TIME", int(time.time()))
    node = Node(tmp_path / "state.db")
    node.init(accountable_genesis(dev))
    node.block()
    results = list(node.block([node.tx(OWNER, LLM)]).tx_results)
    results += node.block([node.tx(NODE, NODE_MSG), node.tx(CLIENT, MsgDeposit(NODE.address, 10**6))]).tx_results
    results += node.block([node.tx(NODE, attest(node, dev))]).tx_results
    assert [r.code for r in results] == [0] * 4, [r.log for r in results]
    yield node
    node.close()


def ok(result) -> None:
    assert result.code == 0, result.log


def rejected(chain: Node, key: PrivateKey, msg, code: int, log_part: str) -> None:
    apphelpers.assert_rejected_without_state_change(chain, key, chain.tx(key, msg), code, log_part, MINTED)


def holds(chain: Node) -> None:
    assert chain.invariant_violations(MINTED) == []


def stake(chain: Node, address: str) -> dict:
    return chain.answer("/staking/stake", address.encode())


def blocks_until(chain: Node, height: int) -> None:
    while chain.height < height:
        chain.block()
        holds(chain)


# --- staking -----------------------------------------------------------------------------------


def test_genesis_bonds_are_held_by_the_staking_account_and_the_supply_counts_them(chain):
    assert stake(chain, NODE.address)["bonded"] == str(STAKE)
    assert chain.balance(STAKING_ACCOUNT) == STAKE + VALIDATOR_STAKE
    (validator,) = chain.answer("/staking/validators")["validators"]
    assert validator["operator"] == OPERATOR.address and validator["jailed"] is False
    holds(chain)


def test_bond_then_unbond_pays_back_after_the_unbonding_period(chain):
    balance = chain.balance(NODE_B.address)
    ok(chain.deliver(NODE_B, MsgBond(500)))
    fee_1 = balance - 500 - chain.balance(NODE_B.address)
    assert stake(chain, NODE_B.address)["bonded"] == "500"
    result = chain.deliver(NODE_B, MsgUnbond(200))
    ok(result)
    release = chain.height + UNBONDING
    assert stake(chain, NODE_B.address)["unbonding"] == [{"release_height": release, "amount": "200"}]
    before = chain.balance(NODE_B.address)
    blocks_until(chain, release - 1)
    assert chain.balance(NODE_B.address) == before  # not a block early
    chain.block()
    assert chain.balance(NODE_B.address) == before + 200
    assert stake(chain, NODE_B.address) == {"address": NODE_B.address, "bonded": "300", "unbonding": []}
    assert fee_1 > 0
    holds(chain)


def test_unbonding_more_than_is_bonded_is_refused(chain):
    rejected(chain, NODE_B, MsgUnbond(1), errors.InsufficientStake.code, "has 0 bonded; cannot unbond 1")


def test_a_node_below_the_minimum_stake_cannot_register(chain):
    rejected(chain, NODE_B, NODE_MSG, errors.InsufficientStake.code, f"needs at least {MIN_TEE}")
    ok(chain.deliver(NODE_B, MsgBond(MIN_TEE)))
    ok(chain.deliver(NODE_B, NODE_MSG))


def test_a_node_that_unbonds_below_the_minimum_is_not_paid(chain):
    ok(chain.deliver(NODE, MsgUnbond(STAKE - MIN_TEE + 1)))
    raw = chain.tx(NODE, MsgSettle((tee_item(chain, 1),)))
    apphelpers.assert_rejected_without_state_change(
        chain, NODE, raw, errors.InsufficientStake.code, f"needs at least {MIN_TEE}", MINTED
    )


def test_the_authority_changes_staking_params_by_governance(chain):
    ok(chain.deliver(AUTHORITY, MsgUpdateParams("staking", {"min_stake_tee": str(2 * STAKE)})))
    assert chain.answer("/staking/params")["min_stake_tee"] == 2 * STAKE
    rejected(chain, MALLORY, MsgUpdateParams("staking", {"min_stake_tee": "0"}), errors.Unauthorized.code, "")


# --- claims ------------------------------------------------------------------------------------


def test_an_honest_node_settles_a_claimed_receipt_in_time_is_paid_and_keeps_its_stake(chain):
    item = tee_item(chain, 1)
    escrow = chain.escrow(CLIENT.address, NODE.address)
    ok(chain.deliver(CLIENT, MsgClaim(item.receipt, item.payment)))
    claim = chain.answer("/inference/claim", item.receipt.id.encode())
    settlement_fee = chain.app.inference.params(chain.app.store).settlement_fee_for(FEE)
    assert claim["deadline"] == chain.height + DEADLINE and claim["fee"] == str(FEE)
    assert claim["held"] == str(FEE + settlement_fee)
    assert chain.escrow(CLIENT.address, NODE.address) == escrow - FEE - settlement_fee  # held by the claim
    holds(chain)
    result = chain.deliver(NODE, MsgSettle((item,)))
    ok(result)
    assert {e.type for e in result.events} >= {"claim_resolved", "settle"}
    assert chain.answer("/inference/receipt", item.receipt.id.encode())["status"] == "verified"
    assert chain.query("/inference/claim", item.receipt.id.encode()).code == errors.NotFound.code
    assert chain.escrow(CLIENT.address, NODE.address) == escrow - FEE - settlement_fee
    blocks_until(chain, chain.height + DEADLINE + 1)
    assert stake(chain, NODE.address)["bonded"] == str(STAKE)  # stake intact
    holds(chain)


def test_a_silent_node_is_slashed_at_the_deadline_and_the_client_refunded_and_compensated(chain):
    item = tee_item(chain, 2)
    ok(chain.deliver(CLIENT, MsgClaim(item.receipt, item.payment)))
    deadline = chain.height + DEADLINE
    client_balance, escrow = chain.balance(CLIENT.address), chain.escrow(CLIENT.address, NODE.address)
    _, burned = chain.supply()
    blocks_until(chain, deadline - 1)
    assert stake(chain, NODE.address)["bonded"] == str(STAKE)
    result = chain.block()
    params = chain.app.inference.params(chain.app.store)
    slashed = STAKE * params.claim_slash_bps // 10_000
    compensation = slashed * params.claim_compensation_bps // 10_000
    (slash,) = [e for e in result.events if e.type == "slash"]
    attrs = {a.key: a.value for a in slash.attributes}
    assert (attrs["reason"], attrs["slashed"], attrs["compensation"]) == (
        "claim_expired",
        str(slashed),
        str(compensation),
    )
    assert stake(chain, NODE.address)["bonded"] == str(STAKE - slashed)
    held = FEE + params.settlement_fee_for(FEE)
    assert chain.balance(CLIENT.address) == client_balance + held + compensation  # fee back + compensation
    assert chain.escrow(CLIENT.address, NODE.address) == escrow
    assert chain.supply()[1] == burned + slashed - compensation  # the rest is burned
    assert chain.answer("/inference/receipt", item.receipt.id.encode())["status"] == "failed"
    holds(chain)
    # The evidence arriving late settles nothing.
    raw = chain.tx(NODE, MsgSettle((item,)))
    apphelpers.assert_rejected_without_state_change(
        chain, NODE, raw, errors.AlreadySettled.code, "was settled by receipt", MINTED
    )


def test_unbonding_does_not_escape_a_pending_claim(chain):
    item = tee_item(chain, 3)
    ok(chain.deliver(CLIENT, MsgClaim(item.receipt, item.payment)))
    deadline = chain.height + DEADLINE
    ok(chain.deliver(NODE, MsgUnbond(STAKE)))  # everything, at once
    assert stake(chain, NODE.address)["bonded"] == "0"
    node_balance = chain.balance(NODE.address)
    blocks_until(chain, deadline)
    slashed = STAKE * chain.app.inference.params(chain.app.store).claim_slash_bps // 10_000
    (entry,) = stake(chain, NODE.address)["unbonding"]
    assert entry["amount"] == str(STAKE - slashed)  # slashed from what it was unbonding
    blocks_until(chain, entry["release_height"])
    assert chain.balance(NODE.address) == node_balance + STAKE - slashed
    holds(chain)


def test_unbonding_due_before_a_claims_deadline_waits_for_it(chain):
    ok(chain.deliver(NODE, MsgUnbond(10)))
    release = chain.height + UNBONDING
    item = tee_item(chain, 4)
    blocks_until(chain, release - DEADLINE - 1)  # the latest the receipt may be claimed (its window)
    ok(chain.deliver(CLIENT, MsgClaim(item.receipt, item.payment)))
    deadline = chain.height + DEADLINE
    assert deadline >= release
    result = (blocks_until(chain, release - 1), chain.block())[1]
    assert "unbonding_postponed" in {e.type for e in result.events}
    assert stake(chain, NODE.address)["unbonding"][0]["release_height"] == deadline + 1


@pytest.mark.parametrize(
    ("who", "change", "code", "log"),
    [
        ("mallory", None, errors.Unauthorized.code, "only the receipt's client"),
        ("client", {"mode": "vanilla"}, errors.ClaimConflict.code, "carries no evidence to claim"),
        ("client", "unsigned", errors.InvalidEvidence.code, "neither node"),
    ],
)
def test_claims_that_cannot_be_made_are_refused(chain, who, change, code, log):
    item = tee_item(chain, 5)  # (its payment is for the receipt as the node signed it)
    signed = item.receipt
    if isinstance(change, dict):
        receipt = dataclasses.replace(signed.receipt, **change)
        signed = SignedReceipt(receipt, receipt.sign(ENCLAVE))
    elif change == "unsigned":
        signed = SignedReceipt(signed.receipt, signed.receipt.sign(MALLORY))
    rejected(chain, MALLORY if who == "mallory" else CLIENT, MsgClaim(signed, item.payment), code, log)


def test_a_receipt_is_claimed_once_and_a_settled_one_not_at_all(chain):
    item, settled = tee_item(chain, 6), tee_item(chain, 7)
    ok(chain.deliver(CLIENT, MsgClaim(item.receipt, item.payment)))
    rejected(chain, CLIENT, MsgClaim(item.receipt, item.payment), errors.ClaimConflict.code, "already claimed")
    ok(chain.deliver(NODE, MsgSettle((settled,))))
    rejected(chain, CLIENT, MsgClaim(settled.receipt, settled.payment), errors.ClaimConflict.code, "already settled")


def claim_of(item):
    return item.receipt, item.payment


# --- equivocation ------------------------------------------------------------------------------


def test_two_answers_to_one_request_are_slashed_on_sight_and_the_reporter_rewarded(chain):
    first = tee_item(chain, 8).receipt
    other = dataclasses.replace(first.receipt, output_hash="0x" + hashlib.sha256(b"another answer").hexdigest())
    second = SignedReceipt(other, other.sign(NODE))  # the account key: a node answers for it as well
    reporter = chain.balance(MALLORY.address)
    raw = chain.tx(MALLORY, MsgReportEquivocation(first, second))
    result = chain.block([raw]).tx_results[0]
    ok(result)
    params = chain.app.inference.params(chain.app.store)
    slashed = STAKE * params.equivocation_slash_bps // 10_000
    reward = slashed * params.equivocation_reward_bps // 10_000
    assert stake(chain, NODE.address)["bonded"] == str(STAKE - slashed)
    assert chain.balance(MALLORY.address) == reporter - apphelpers.fee_of(raw) + reward
    holds(chain)
    scraped = samples(generate_latest(chain.app.metrics.registry).decode())
    assert value(scraped, "haca_chain_slashes_total", reason="equivocation") == 1
    assert value(scraped, "haca_chain_slashed_tokens_total", reason="equivocation") == slashed
    rejected(chain, MALLORY, MsgReportEquivocation(first, second), errors.ClaimConflict.code, "already reported")


def test_an_equivocation_report_needs_two_outputs_signed_by_the_node(chain):
    first = tee_item(chain, 9).receipt
    rejected(chain, MALLORY, MsgReportEquivocation(first, first), errors.InvalidEvidence.code, "same output")
    other = dataclasses.replace(first.receipt, output_hash="0x" + "ab" * 32)
    forged = SignedReceipt(other, other.sign(MALLORY))
    rejected(chain, MALLORY, MsgReportEquivocation(first, forged), errors.InvalidEvidence.code, "neither node")


# --- validators --------------------------------------------------------------------------------


def duplicate_vote(height: int) -> abci.Misbehavior:
    evidence = abci.Misbehavior(type=abci.MisbehaviorType.DUPLICATE_VOTE, height=height, total_voting_power=40)
    evidence.validator.address = hashlib.sha256(VALIDATOR_KEY).digest()[:20]
    evidence.validator.power = 10
    return evidence


def test_a_duplicate_vote_slashes_and_jails_the_validator_once_but_never_empties_the_set(chain):
    """The only validator: slashed and jailed, but not removed — CometBFT cannot run (nor apply
    the removal) without one; the set waits for another with stake (test_validator_set.py removes
    a double-signer among others)."""
    _, burned = chain.supply()
    result = chain.block(misbehavior=[duplicate_vote(chain.height)])
    assert list(result.validator_updates) == []
    slashed = VALIDATOR_STAKE * STAKING.double_sign_slash_bps // 10_000
    assert stake(chain, OPERATOR.address)["bonded"] == str(VALIDATOR_STAKE - slashed)
    assert chain.supply()[1] == burned + slashed
    (validator,) = chain.answer("/staking/validators")["validators"]
    assert validator["jailed"] is True
    holds(chain)
    again = chain.block(misbehavior=[duplicate_vote(chain.height - 1)])
    assert list(again.validator_updates) == []  # already out: no second slash
    assert stake(chain, OPERATOR.address)["bonded"] == str(VALIDATOR_STAKE - slashed)


def test_escrow_account_still_covers_lanes_and_claims(chain):
    ok(chain.deliver(CLIENT, MsgClaim(*claim_of(tee_item(chain, 10)))))
    assert chain.balance(ESCROW_ACCOUNT) == chain.app.inference.total_escrow(chain.app.store)
