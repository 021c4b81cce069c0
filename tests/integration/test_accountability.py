"""Issue 11 on a live 4-validator devnet: an honest node whose tee receipt is claimed settles it
and keeps its stake; a silent node (it never settles a claimed receipt) is slashed after the
deadline and the client refunded and compensated; an equivocating node is slashed on sight and
the reporter rewarded. Every honest balance and the supply invariant
(genesis = balances + escrow + bonded + unbonding + burned) are checked afterwards.

The dishonest node is dev2, registered as a tee node whose enclave key the test holds, attested
with evidence from the devnet's DEV platform key: exactly what a dishonest node could do."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from typing import Any

import pytest

from haca.client.errors import TxRejected
from haca.client.sdk import Client
from haca.client.zk import proof_from_chain
from haca.crypto.hashing import sha256
from haca.crypto.keys import PrivateKey
from haca.node.service import ensure_stake
from haca.types import codes
from haca.types.gov import MsgUpdateParams
from haca.types.inference import MsgClaim, MsgDeposit, MsgReportEquivocation, MsgSettle, SettlementItem
from haca.types.payment import PaymentAuthorization, SignedPayment
from haca.types.receipt import SignedReceipt
from haca.types.registry import MsgRegisterNode
from tests.integration.helpers import assert_devnet_supply_holds
from tests.integration.test_tee import Net, tee_item
from tests.integration.test_zkml import EXAMPLE as ZK_EXAMPLE

pytestmark = pytest.mark.devnet
DEADLINE = 8  # blocks, set by governance for the test (the default is 50)


@pytest.fixture(scope="module")
def net(inference_devnet) -> Net:
    n = Net(inference_devnet)
    n.send("dev0", MsgUpdateParams("inference", {"claim_deadline": str(DEADLINE)}))
    return n


@pytest.fixture(scope="module")
def rogue(net: Net) -> dict[str, Any]:
    """dev2 bonded and registered as a tee node for iris with an attested enclave key the test
    holds; dev3's escrow for it."""
    ensure_stake(net.chain, net.key("dev2"), ("tee", "vanilla"))
    net.send("dev2", MsgRegisterNode("http://127.0.0.1:9", ("tee", "vanilla"), ("iris",), 0))
    net.send("dev3", MsgDeposit(net.key("dev2").address, 10**9))
    enclave = PrivateKey.from_seed("accountability rogue enclave")
    net.send("dev2", net.attest_msg(net.key("dev2").address, enclave))
    return {"node": net.key("dev2"), "client": net.key("dev3"), "enclave": enclave}


@pytest.fixture(scope="module")
def honest(net: Net) -> dict[str, Any]:
    """dev5 as an honest tee node for iris (its enclave key attested), dev6's escrow for it."""
    ensure_stake(net.chain, net.key("dev5"), ("tee", "vanilla"))
    net.send("dev5", MsgRegisterNode("http://127.0.0.1:8", ("tee", "vanilla"), ("iris",), 0))
    net.send("dev6", MsgDeposit(net.key("dev5").address, 10**9))
    enclave = PrivateKey.from_seed("accountability honest enclave")
    net.send("dev5", net.attest_msg(net.key("dev5").address, enclave))
    escrow = net.escrow(net.key("dev6").address, net.key("dev5").address)
    return {"node": net.key("dev5"), "client": net.key("dev6"), "enclave": enclave, "escrow": escrow}


def haca(net: Net, *args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "haca.cli.main", *args, "--home", str(net.home), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads(done.stdout))


def stake_of(net: Net, address: str) -> int:
    return int(net.chain.query("/staking/stake", address.encode())["bonded"])


def wait_for_height(net: Net, height: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while net.height() < height:
        assert time.monotonic() < deadline, f"height {height} not reached"
        time.sleep(0.2)


def test_node0_is_bonded_above_the_minimum_stake_of_its_modes(net):
    shown = haca(net, "stake", "show", "node0")
    params = net.chain.query("/staking/params")
    assert int(shown["bonded"]) >= max(int(params["min_stake_tee"]), int(params["min_stake_zkml"]))


def test_an_honest_node_settles_its_claimed_receipt_and_keeps_its_stake(net, honest):
    node, client = honest["node"], honest["client"]
    item = tee_item(net, honest, 1, net.height())
    stake, balance = stake_of(net, node.address), net.chain.balance(client.address)
    net.send("dev6", MsgClaim(item.receipt, item.payment))
    tx_fee = balance - net.chain.balance(client.address)
    assert net.chain.query("/inference/claim", item.receipt.id.encode())["fee"] == str(item.receipt.receipt.fee)
    outcome = net.send("dev5", MsgSettle((item,)))  # the node's evidence lands before the deadline
    assert {e["type"] for e in outcome.events} >= {"claim_resolved", "settle"}
    record = net.chain.query("/inference/receipt", item.receipt.id.encode())
    assert record["status"] == "verified"
    wait_for_height(net, net.height() + DEADLINE + 1)
    assert stake_of(net, node.address) == stake  # paid, stake intact
    fee = item.receipt.receipt.fee
    assert net.chain.balance(client.address) == balance - tx_fee  # its balance moves only by its tx fee
    assert net.escrow(client.address, node.address) == honest["escrow"] - fee - net.settlement_fee(fee)
    assert_devnet_supply_holds(net.handle)


def test_a_silent_node_is_slashed_after_the_deadline_and_the_client_refunded_and_compensated(net, rogue):
    node, client = rogue["node"], rogue["client"]
    item = tee_item(net, rogue, 100, net.height())  # the answer the rogue node gave; it never settles it
    path = net.home / "silent-receipt.json"
    path.write_text(json.dumps({"receipt": item.receipt.to_json(), "payment": item.payment.to_json()}))
    stake, balance = stake_of(net, node.address), net.chain.balance(client.address)
    escrow, burned = net.escrow(client.address, node.address), net.chain.supply()["burned"]
    claimed = haca(net, "receipt", "claim", item.receipt.id, "--receipt", str(path), "--from", "dev3")
    tx_fee = balance - net.chain.balance(client.address)
    fee = item.receipt.receipt.fee
    held = fee + net.settlement_fee(fee)
    assert net.escrow(client.address, node.address) == escrow - held  # held by the claim
    wait_for_height(net, int(claimed["deadline"]) + 1)
    params = net.chain.query("/inference/params")
    slashed = stake * int(params["claim_slash_bps"]) // 10_000
    compensation = slashed * int(params["claim_compensation_bps"]) // 10_000
    assert stake_of(net, node.address) == stake - slashed
    # the held fee comes back to the client's balance (out of escrow), with the compensation
    assert net.chain.balance(client.address) == balance - tx_fee + held + compensation
    assert net.escrow(client.address, node.address) == escrow - held
    record = net.chain.query("/inference/receipt", item.receipt.id.encode())
    assert record["status"] == "failed" and record["slashed"] == str(slashed)
    assert net.chain.supply()["burned"] >= burned + slashed - compensation
    assert_devnet_supply_holds(net.handle)


def test_an_equivocating_node_is_slashed_on_sight_and_the_reporter_rewarded(net, rogue):
    node = rogue["node"]
    first = tee_item(net, rogue, 200, net.height()).receipt
    lie = dataclasses.replace(first.receipt, output_hash="0x" + "ee" * 32)
    second = SignedReceipt(lie, lie.sign(rogue["enclave"]))
    stake, reporter = stake_of(net, node.address), net.chain.balance(net.key("dev4").address)
    outcome = net.send("dev4", MsgReportEquivocation(first, second))
    params = net.chain.query("/inference/params")
    slashed = stake * int(params["equivocation_slash_bps"]) // 10_000
    reward = slashed * int(params["equivocation_reward_bps"]) // 10_000
    assert stake_of(net, node.address) == stake - slashed
    tx_fee = tx_fee_of(net, outcome.hash)
    assert net.chain.balance(net.key("dev4").address) == reporter - tx_fee + reward
    assert_devnet_supply_holds(net.handle)


def tx_fee_of(net: Net, tx_hash: str) -> int:
    events = net.chain.rpc.tx(tx_hash)["tx_result"]["events"]
    return int(next(a["value"] for e in events if e["type"] == "tx" for a in e["attributes"] if a["key"] == "fee"))


def test_a_lying_zkml_node_cannot_settle_its_wrong_answer_and_is_slashed_when_claimed(net):
    """dev7, a zkml node for mlp-regressor, answers dev8 with a wrong output. The only proof that
    input has (node0's honest one, from the chain) commits to other public instances, so the lie
    never settles; dev8 claims it, and after the deadline dev7 is slashed and dev8 made whole."""
    client_key, liar = net.key("dev8"), net.key("dev7")
    with Client.from_home(net.home, "dev8") as client:  # the honest answer and its proof, from node0
        client.deposit(10**9, net.node0)
        result = client.infer("mlp-regressor", ZK_EXAMPLE, mode="zkml")
        client.wait_settled(result.receipt_id, timeout=180)
        honest = SignedReceipt.from_json(client.node_receipt(result.receipt_id)["receipt"]).receipt
    proof = proof_from_chain(net.chain, result.receipt_id)
    assert proof

    ensure_stake(net.chain, liar, ("zkml",))
    net.send("dev7", MsgRegisterNode("http://127.0.0.1:7", ("zkml",), ("mlp-regressor",), 0))
    net.send("dev8", MsgDeposit(liar.address, 10**9))
    height = net.height()
    lie = dataclasses.replace(
        honest,
        node=liar.address,
        request_id="0x" + sha256(b"the lying node's request").hex(),
        output_hash="0x" + "dd" * 32,
        instances_hash="0x" + "dd" * 32,  # what the wrong output's instances would be
        height_hint=height,
    )
    signed = SignedReceipt(lie, lie.sign(liar))
    auth = PaymentAuthorization(
        net.chain_id, client_key.address, liar.address, lie.request_id, lie.model_id, "zkml", lie.fee, height + 1000
    )
    item = SettlementItem(signed, SignedPayment("request", auth, auth.sign(client_key)), proof)
    liar_balance = net.chain.balance(liar.address)
    with pytest.raises(TxRejected) as refused:
        net.send("dev7", MsgSettle((item,)))
    assert refused.value.abci_code == codes.INVALID_EVIDENCE and "public instances" in refused.value.log
    assert net.chain.balance(liar.address) == liar_balance  # refused in CheckTx: not even a fee

    stake, balance = stake_of(net, liar.address), net.chain.balance(client_key.address)
    escrow = net.escrow(client_key.address, liar.address)
    outcome = net.send("dev8", MsgClaim(signed, item.payment))
    deadline = int(net.chain.query("/inference/claim", signed.id.encode())["deadline"])
    wait_for_height(net, deadline + 1)
    params = net.chain.query("/inference/params")
    slashed = stake * int(params["claim_slash_bps"]) // 10_000
    compensation = slashed * int(params["claim_compensation_bps"]) // 10_000
    assert stake_of(net, liar.address) == stake - slashed
    held = lie.fee + net.settlement_fee(lie.fee)
    assert net.chain.balance(client_key.address) == balance - tx_fee_of(net, outcome.hash) + held + compensation
    assert net.escrow(client_key.address, liar.address) == escrow - held
    assert net.chain.query("/inference/receipt", signed.id.encode())["status"] == "failed"
    with pytest.raises(TxRejected) as late:  # the slash took it under the minimum: it is paid for nothing now
        net.send("dev7", MsgSettle((item,)))
    assert late.value.abci_code == codes.INSUFFICIENT_STAKE
    assert_devnet_supply_holds(net.handle)
