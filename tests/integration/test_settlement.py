"""Settlement refusals on a live devnet: each is rejected with a readable reason and changes nothing."""

from __future__ import annotations

import secrets

import pytest

from haca.client.errors import TxRejected
from haca.crypto.keys import PrivateKey
from haca.node.service import ensure_stake
from haca.types import codes
from haca.types.inference import MsgDeposit, MsgSettle, SettlementItem
from haca.types.payment import PaymentAuthorization, SignedPayment
from haca.types.receipt import Receipt, SignedReceipt
from haca.types.registry import MsgRegisterNode

pytestmark = pytest.mark.devnet
FEE = 10_000  # the iris example model's price


@pytest.fixture(scope="module")
def parties(inference_devnet):
    """Node A (dev5) and node B (dev6) registered for iris; client dev4 with escrow."""
    chain = inference_devnet.client
    node_a, node_b, client = (inference_devnet.keys.get(n).key for n in ("dev5", "dev6", "dev4"))
    for key, port in ((node_a, 1), (node_b, 2)):
        ensure_stake(chain, key, ("vanilla",))
        chain.send_msgs(key, (MsgRegisterNode(f"http://node-{port}.invalid", ("vanilla",), ("iris",), 0),))
    chain.send_msgs(client, (MsgDeposit(node_a.address, 10 * FEE),))
    model_id = chain.query("/registry/model", b"iris")["model_id"]
    return {"a": node_a, "b": node_b, "client": client, "model_id": model_id}


def item(net, p, *, node=None, payee=None, signer=None, fee=FEE, max_fee=FEE, expiry=None, client=None):
    node, client = node or p["a"], client or p["client"]
    chain_id = net.config.chain_id
    request_id = "0x" + secrets.token_bytes(32).hex()
    height = net.client.rpc.height()
    receipt = Receipt(
        chain_id,
        node.address,
        client.address,
        request_id,
        p["model_id"],
        "vanilla",
        "0x" + "11" * 32,
        "0x" + "22" * 32,
        fee,
        height,
        0,
    )
    auth = PaymentAuthorization(
        chain_id,
        client.address,
        (payee or node).address,
        request_id,
        p["model_id"],
        "vanilla",
        max_fee,
        height + 100 if expiry is None else expiry,
    )
    signed = SignedReceipt(receipt, receipt.sign(signer or node))
    return SettlementItem(signed, SignedPayment("request", auth, auth.sign(client)))


def state(net, p) -> tuple:
    chain = net.client
    escrow = chain.query("/inference/escrow", p["client"].address.encode())["escrow"]
    return escrow, chain.balance(p["a"].address), chain.balance(p["b"].address), chain.supply()["burned"]


def refused(net, sender: PrivateKey, settlement: SettlementItem, code: int) -> str:
    with pytest.raises(TxRejected) as rejection:
        net.client.send_msgs(sender, (MsgSettle((settlement,)),))
    assert rejection.value.abci_code == code, rejection.value
    assert rejection.value.log
    return rejection.value.log


def test_a_valid_receipt_settles_once_and_the_second_time_is_refused(inference_devnet, parties):
    net, p = inference_devnet, parties
    settlement = item(net, p)
    net.client.send_msgs(p["a"], (MsgSettle((settlement,)),))
    assert net.client.query("/inference/receipt", settlement.receipt.id.encode())["status"] == "settled"
    before = state(net, p)
    assert "settled" in refused(net, p["a"], settlement, codes.ALREADY_SETTLED)
    assert state(net, p) == before


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("authorisation_for_node_a_used_by_node_b", codes.INVALID_PAYMENT),
        ("expired_authorisation", codes.AUTHORIZATION_EXPIRED),
        ("fee_above_max", codes.FEE_ABOVE_LIMIT),
        ("escrow_too_small", codes.INSUFFICIENT_ESCROW),
        ("receipt_signed_by_another_key", codes.INVALID_EVIDENCE),
    ],
)
def test_a_bad_settlement_is_refused_with_a_reason_and_changes_nothing(inference_devnet, parties, case, code):
    net, p = inference_devnet, parties
    sender, settlement = p["a"], None
    if case == "authorisation_for_node_a_used_by_node_b":
        sender, settlement = p["b"], item(net, p, node=p["b"], payee=p["a"])
    elif case == "expired_authorisation":
        settlement = item(net, p, expiry=net.client.rpc.height() - 1)
    elif case == "fee_above_max":
        settlement = item(net, p, fee=FEE + 1, max_fee=FEE)
    elif case == "escrow_too_small":
        settlement = item(net, p, fee=10**9, max_fee=10**9)
    elif case == "receipt_signed_by_another_key":
        settlement = item(net, p, signer=p["b"])
    assert settlement is not None
    before = state(net, p)
    log = refused(net, sender, settlement, code)
    assert len(log) > 10
    assert state(net, p) == before
    with pytest.raises(Exception, match="not been settled"):
        net.client.query("/inference/receipt", settlement.receipt.id.encode())


def test_a_refusal_at_checktx_names_the_refused_receipt_in_its_data(inference_devnet, parties):
    """Issue 23: the settler drops the receipt a refusal names and resends the rest at once. Read
    from CometBFT's own answer (hex, where /tx's is base64): a refusal that named nothing sent every
    receipt of the chunk alone, one a block, and the long chaos run lost 1,122 to expiry."""
    net, p = inference_devnet, parties
    good, bad = item(net, p), item(net, p, expiry=net.client.rpc.height() - 1)
    before = state(net, p)
    with pytest.raises(TxRejected) as rejection:
        net.client.broadcast(net.client.sign(p["a"], (MsgSettle((good, bad)),)))
    assert rejection.value.abci_code == codes.AUTHORIZATION_EXPIRED
    assert rejection.value.refused_receipt == bad.receipt.id
    assert state(net, p) == before
