"""inference module, driven through HacaApp in-process: escrow deposits and delayed withdrawals,
receipt settlement against per-request authorisations and spending allowances, batches, and the
supply/escrow accounting that must hold after every block."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tendermint.abci import types_pb2 as abci

from haca.chain import errors
from haca.chain.genesis import AppGenesis, GenesisAccount
from haca.chain.modules.inference.keeper import ESCROW_ACCOUNT, RECEIPT_PREFIX, InferenceParams
from haca.crypto.hashing import sha256
from haca.crypto.keys import PrivateKey
from haca.crypto.state_proof import verify_proof
from haca.types.bank import MsgSend
from haca.types.encoding import canonical_json
from haca.types.inference import MsgDeposit, MsgRevokeAllowance, MsgSettle, MsgWithdraw, SettlementItem
from haca.types.payment import PaymentAuthorization, SignedPayment, SpendingAllowance
from haca.types.receipt import Receipt, SignedReceipt
from haca.types.registry import MsgRegisterModel, MsgRegisterNode
from tests.unit.chain import apphelpers
from tests.unit.chain.apphelpers import CHAIN_ID, FEES, Node, fee_of, signed_tx

CLIENT, CLIENT2, NODE, NODE_B, OWNER, MALLORY = (
    PrivateKey.from_seed(s) for s in ("client", "client2", "node", "node-b", "owner", "mallory")
)
KEYS = {k.address: k for k in (CLIENT, CLIENT2, NODE, NODE_B, OWNER, MALLORY)}
FUNDS, CLIENT2_FUNDS = 10**12, 100_000
PARAMS = InferenceParams(withdraw_delay=5, revoke_delay=4, settlement_fee=100, settlement_fee_bps=500)
GENESIS = AppGenesis(
    fees=FEES,
    inference=PARAMS,
    accounts=tuple(
        GenesisAccount(k.address, CLIENT2_FUNDS if k is CLIENT2 else FUNDS)
        for k in (CLIENT, CLIENT2, NODE, NODE_B, OWNER, MALLORY)
    ),
)
GENESIS_SUPPLY = 5 * FUNDS + CLIENT2_FUNDS
DEPOSIT = 1_000_000  # CLIENT's escrow after setup
PRICE, FEE, MAX_FEE = 1_000, 2_000, 3_000
SF = PARAMS.settlement_fee_for(FEE)
FAR = 10**9  # an expiry height no test reaches
SETUP_HEIGHT = 3  # the height setup_blocks ends at: receipts claim to be served there


def model_id(tag: str) -> str:
    return "sha256:" + sha256(tag.encode()).hex()


def request_id(n: int | str) -> str:
    return "0x" + sha256(f"request-{n}".encode()).hex()


def _model(name: str, modes: tuple[str, ...]) -> MsgRegisterModel:
    schema = {"x": {"dtype": "float32", "shape": [1, 4]}}
    return MsgRegisterModel(name, model_id(name), schema, {"y": {"dtype": "float32", "shape": [1, 3]}}, modes, PRICE)


IRIS = _model("iris", ("vanilla",))
DIGITS = _model("digits", ("tee", "vanilla"))
ZK_ONLY = _model("zk-only", ("tee",))
NODE_MSG = MsgRegisterNode("http://node:8000", ("tee", "vanilla"), ("digits", "iris", "zk-only"), 0)
NODE_B_MSG = MsgRegisterNode("http://node-b:8000", ("vanilla",), ("iris",), 0)


def setup_blocks(chain: Node) -> None:
    """Models by OWNER, NODE (all models, vanilla+tee) and NODE_B (iris, vanilla), CLIENT's escrow."""
    results = list(
        chain.block([chain.tx(OWNER, m, offset=i) for i, m in enumerate((IRIS, DIGITS, ZK_ONLY))]).tx_results
    )
    results += chain.block(
        [chain.tx(NODE, NODE_MSG), chain.tx(NODE_B, NODE_B_MSG), chain.tx(CLIENT, MsgDeposit(NODE.address, DEPOSIT))]
    ).tx_results
    assert [r.code for r in results] == [0] * 6, [r.log for r in results]


@pytest.fixture
def chain(tmp_path):
    n = Node(tmp_path / "state.db")
    n.init(GENESIS)
    n.block()
    setup_blocks(n)
    yield n
    n.close()


# --- building settlements ------------------------------------------------------------------------


def make_receipt(
    request: int | str = 0,
    *,
    node: PrivateKey = NODE,
    client: PrivateKey = CLIENT,
    model: str = IRIS.model_id,
    mode: str = "vanilla",
    fee: int = FEE,
    chain_id: str = CHAIN_ID,
    output: str = "output",
    height_hint: int = SETUP_HEIGHT,
) -> Receipt:
    return Receipt(
        chain_id=chain_id,
        node=node.address,
        client=client.address,
        request_id=request_id(request),
        model_id=model,
        mode=mode,
        input_hash="0x" + sha256(b"input").hex(),
        output_hash="0x" + sha256(output.encode()).hex(),
        fee=fee,
        height_hint=height_hint,
        timestamp=1_700_000_000,
    )


def pay_request(receipt: Receipt, payer: PrivateKey | None = None, **changes) -> SignedPayment:
    """The client's authorisation for exactly this receipt (max fee MAX_FEE), with `changes`."""
    auth = PaymentAuthorization(
        receipt.chain_id,
        receipt.client,
        receipt.node,
        receipt.request_id,
        receipt.model_id,
        receipt.mode,
        max_fee=MAX_FEE,
        expiry=FAR,
    )
    auth = dataclasses.replace(auth, **changes)
    return SignedPayment("request", auth, auth.sign(payer or KEYS[auth.client]))


def allowance(cap: int, nonce: int = 1, *, node: PrivateKey = NODE, **changes) -> SpendingAllowance:
    base = SpendingAllowance(CHAIN_ID, CLIENT.address, node.address, cap=cap, expiry=FAR, nonce=nonce)
    return dataclasses.replace(base, **changes)


def pay_allowance(a: SpendingAllowance, payer: PrivateKey | None = None) -> SignedPayment:
    return SignedPayment("allowance", a, a.sign(payer or KEYS[a.client]))


def item(
    receipt: Receipt, payment: SignedPayment | None = None, *, signer: PrivateKey | None = None, evidence: bytes = b""
) -> SettlementItem:
    signed = SignedReceipt(receipt, receipt.sign(signer or KEYS[receipt.node]))
    return SettlementItem(signed, payment or pay_request(receipt), evidence)


def settle_tx(chain: Node, *items: SettlementItem, by: PrivateKey = NODE) -> bytes:
    return chain.tx(by, MsgSettle(tuple(items)))


def assert_ok(result) -> None:
    assert result.code == 0, result.log


def assert_rejected_without_state_change(chain: Node, key: PrivateKey, raw: bytes, code: int, log_part: str) -> None:
    apphelpers.assert_rejected_without_state_change(chain, key, raw, code, log_part, GENESIS_SUPPLY)


def assert_accounting_holds(chain: Node) -> None:
    assert chain.invariant_violations(GENESIS_SUPPLY) == []
    escrows = sum(chain.escrow(k.address) for k in KEYS.values())
    assert chain.balance(ESCROW_ACCOUNT) == escrows


def receipt_record(chain: Node, receipt_id: str) -> dict | None:
    resp = chain.query("/inference/receipt", receipt_id.encode())
    if resp.code == errors.NotFound.code:
        return None
    assert resp.code == 0, resp.log
    return json.loads(resp.value)


def spent(chain: Node, a: SpendingAllowance) -> int:
    return int(chain.answer("/inference/allowance", canonical_json(a.to_json()))["spent"])


# --- escrow --------------------------------------------------------------------------------------


def test_deposit_moves_balance_into_escrow_held_by_the_escrow_account(chain):
    assert chain.balance(ESCROW_ACCOUNT) == DEPOSIT
    first = chain.tx(CLIENT2, MsgDeposit(NODE.address, 5_000))
    result = chain.block([first]).tx_results[0]
    assert_ok(result)
    (event,) = [e for e in result.events if e.type == "deposit"]
    assert {a.key: a.value for a in event.attributes} == {
        "client": CLIENT2.address,
        "node": NODE.address,
        "amount": "5000",
    }
    second = chain.tx(CLIENT2, MsgDeposit(NODE.address, 7_000))
    assert_ok(chain.block([second]).tx_results[0])
    assert chain.balance(CLIENT2.address) == CLIENT2_FUNDS - 12_000 - fee_of(first) - fee_of(second)
    lane = {"node": NODE.address, "escrow": "12000", "withdrawing": "0", "available": "12000", "withdrawals": []}
    assert chain.answer("/inference/escrow", CLIENT2.address.encode()) == {
        "address": CLIENT2.address,
        "escrow": "12000",
        "lanes": [lane],
    }
    assert chain.answer("/inference/escrow", f"{CLIENT2.address}/{NODE.address}".encode())["lanes"] == [lane]
    assert chain.escrow(CLIENT2.address, NODE_B.address) == 0  # a deposit backs one node only
    assert chain.balance(ESCROW_ACCOUNT) == DEPOSIT + 12_000
    assert_accounting_holds(chain)


def test_deposit_above_the_balance_is_rejected_with_insufficient_funds_and_moves_nothing(chain):
    raw = chain.tx(CLIENT2, MsgDeposit(NODE.address, CLIENT2_FUNDS))  # the fee is payable, the amount is not
    assert_rejected_without_state_change(chain, CLIENT2, raw, errors.InsufficientFunds.code, "needs 100000")
    assert chain.escrow(CLIENT2.address) == 0


def test_escrow_query_of_a_bad_address_answers_invalid_query(chain):
    resp = chain.query("/inference/escrow", b"nobody")
    assert resp.code == errors.InvalidQuery.code and resp.log


def test_withdrawal_is_paid_only_once_the_withdraw_delay_has_passed(chain):
    balance_before = chain.balance(CLIENT.address)
    raw = chain.tx(CLIENT, MsgWithdraw(NODE.address, 40_000))
    result = chain.block([raw]).tx_results[0]
    assert_ok(result)
    requested_at = chain.height
    release = requested_at + PARAMS.withdraw_delay
    (event,) = [e for e in result.events if e.type == "withdraw_requested"]
    assert {a.key: a.value for a in event.attributes}["release"] == str(release)
    pending = [{"release_height": release, "amount": "40000"}]
    while chain.height < release - 1:
        resp = chain.block()
        assert not [e for e in resp.events if e.type == "withdrawal_paid"]
        assert chain.balance(CLIENT.address) == balance_before - fee_of(raw)
        (lane,) = chain.answer("/inference/escrow", CLIENT.address.encode())["lanes"]
        assert (lane["withdrawals"], lane["withdrawing"], lane["available"]) == (
            pending,
            "40000",
            str(DEPOSIT - 40_000),
        )
        assert chain.escrow(CLIENT.address) == DEPOSIT
    resp = chain.block()
    assert chain.height == release
    (paid,) = [e for e in resp.events if e.type == "withdrawal_paid"]
    assert {a.key: a.value for a in paid.attributes} == {
        "client": CLIENT.address,
        "node": NODE.address,
        "amount": "40000",
    }
    assert chain.balance(CLIENT.address) == balance_before - fee_of(raw) + 40_000
    left = str(DEPOSIT - 40_000)
    assert chain.answer("/inference/escrow", CLIENT.address.encode()) == {
        "address": CLIENT.address,
        "escrow": left,
        "lanes": [{"node": NODE.address, "escrow": left, "withdrawing": "0", "available": left, "withdrawals": []}],
    }
    # The state before the payout is still answerable, withdrawals included (read through the trie).
    past = chain.answer("/inference/escrow", CLIENT.address.encode(), height=requested_at)
    assert past["lanes"][0]["withdrawals"] == pending and int(past["escrow"]) == DEPOSIT
    assert_accounting_holds(chain)
    chain.block()
    assert chain.balance(CLIENT.address) == balance_before - fee_of(raw) + 40_000  # paid once


def test_withdrawals_cannot_exceed_escrow_minus_pending_withdrawals(chain):
    assert_ok(chain.deliver(CLIENT, MsgWithdraw(NODE.address, DEPOSIT - 100)))
    raw = chain.tx(CLIENT, MsgWithdraw(NODE.address, 101))
    assert_rejected_without_state_change(chain, CLIENT, raw, errors.InsufficientEscrow.code, "already withdrawing")
    assert_ok(chain.deliver(CLIENT, MsgWithdraw(NODE.address, 100)))
    raw = chain.tx(CLIENT, MsgWithdraw(NODE.address, 1))
    assert_rejected_without_state_change(chain, CLIENT, raw, errors.InsufficientEscrow.code, "asked 1")
    for _ in range(PARAMS.withdraw_delay):
        chain.block()
    assert chain.escrow(CLIENT.address) == 0
    assert chain.answer("/inference/escrow", CLIENT.address.encode())["lanes"][0]["withdrawals"] == []
    assert chain.balance(ESCROW_ACCOUNT) == 0
    assert_accounting_holds(chain)


def test_settlement_may_draw_on_escrow_being_withdrawn_and_the_payout_is_what_is_left(chain):
    balance_before = chain.balance(CLIENT.address)
    withdraw = chain.tx(CLIENT, MsgWithdraw(NODE.address, DEPOSIT))
    chain.block([withdraw])
    assert_ok(chain.deliver(NODE, MsgSettle((item(make_receipt(1)),))))
    while chain.answer("/inference/escrow", CLIENT.address.encode())["lanes"][0]["withdrawals"]:
        chain.block()
    assert chain.balance(CLIENT.address) == balance_before - fee_of(withdraw) + DEPOSIT - FEE - SF
    assert chain.escrow(CLIENT.address) == 0
    assert_accounting_holds(chain)


def test_a_transfer_to_the_escrow_module_account_is_refused_so_escrow_still_matches_its_account(chain):
    result = chain.deliver(MALLORY, MsgSend(ESCROW_ACCOUNT, 5))
    assert result.code != 0
    assert_accounting_holds(chain)


# --- settlement with a per-request authorisation -------------------------------------------------


def test_settlement_pays_the_fee_to_the_node_burns_the_settlement_fee_and_records_the_receipt(chain):
    it = item(make_receipt(1))
    raw = settle_tx(chain, it)
    node_before, client_before = chain.balance(NODE.address), chain.balance(CLIENT.address)
    supply_before, burned_before = chain.supply()
    assert chain.check(raw).code == 0
    result = chain.block([raw]).tx_results[0]
    assert_ok(result)
    tx_fee = fee_of(raw)
    assert SF == 100 + FEE * 500 // 10_000
    assert chain.balance(NODE.address) == node_before + FEE - tx_fee
    assert chain.balance(CLIENT.address) == client_before
    assert chain.escrow(CLIENT.address) == DEPOSIT - FEE - SF
    assert chain.balance(ESCROW_ACCOUNT) == DEPOSIT - FEE - SF
    assert chain.supply() == (supply_before - SF - tx_fee, burned_before + SF + tx_fee)
    assert_accounting_holds(chain)
    record = {
        "receipt_id": it.receipt.id,
        "status": "settled",
        "height": chain.height,
        "node": NODE.address,
        "client": CLIENT.address,
        "request_id": request_id(1),
        "model_id": IRIS.model_id,
        "mode": "vanilla",
        "fee": str(FEE),
        "settlement_fee": str(SF),
        "payment": "request",
    }
    assert chain.answer("/inference/receipt", it.receipt.id.encode()) == record
    (event,) = [e for e in result.events if e.type == "settle"]
    assert {a.key: a.value for a in event.attributes} == {k: str(v) for k, v in record.items()}
    resp = chain.query("/inference/receipt", it.receipt.id.encode(), prove=True)
    (op,) = resp.proof_ops.ops
    assert op.key == RECEIPT_PREFIX + bytes.fromhex(it.receipt.id[2:])
    assert verify_proof(chain.app.store.app_hash, op.key, op.data) == canonical_json(record)


def test_settlement_at_the_expiry_height_of_its_authorisation_is_accepted(chain):
    receipt = make_receipt(1)
    assert_ok(chain.deliver(NODE, MsgSettle((item(receipt, pay_request(receipt, expiry=chain.height + 1)),))))


def test_settlement_of_a_receipt_for_a_model_version_keeps_that_versions_price(chain):
    # iris v2 (same owner) costs more; a receipt for v1's id is still priced by v1.
    v2 = dataclasses.replace(IRIS, model_id=model_id("iris-v2"), price=FEE + 1)
    assert_ok(chain.deliver(OWNER, v2))
    assert_ok(chain.deliver(NODE, MsgSettle((item(make_receipt(1)),))))
    raw = settle_tx(chain, item(make_receipt(2, model=v2.model_id, height_hint=chain.height)))
    assert_rejected_without_state_change(chain, NODE, raw, errors.InvalidPayment.code, f"below the price {FEE + 1}")


def test_a_price_raise_applies_from_its_effective_height_and_never_to_receipts_served_before(chain):
    # The owner re-registers iris's bytes at a higher price: the attack on unsettled receipts.
    raise_price = dataclasses.replace(IRIS, price=FEE + 1)
    result = chain.deliver(OWNER, raise_price)
    assert_ok(result)
    registered = chain.height
    manifest = chain.answer("/registry/model", b"iris")
    assert (manifest["version"], manifest["effective_height"]) == (
        2,
        registered + chain.answer("/registry/params")["price_delay"],
    )
    served_before = [make_receipt(n, height_hint=registered + n) for n in range(2)]  # served at the old terms
    while chain.height < manifest["effective_height"]:
        chain.block()
    assert_ok(chain.deliver(NODE, MsgSettle(tuple(item(r) for r in served_before))))
    assert [receipt_record(chain, r.id)["fee"] for r in served_before] == [str(FEE), str(FEE)]
    in_effect = chain.answer("/registry/model_in_effect", f"{IRIS.model_id}@{registered - 1}".encode())
    assert in_effect["version"] == 1
    after = make_receipt(5, height_hint=manifest["effective_height"])
    raw = settle_tx(chain, item(after))
    assert_rejected_without_state_change(chain, NODE, raw, errors.InvalidPayment.code, f"below the price {FEE + 1}")
    assert_ok(chain.deliver(NODE, MsgSettle((item(make_receipt(6, fee=FEE + 1, height_hint=chain.height)),))))
    assert_accounting_holds(chain)


def test_a_receipt_claiming_a_future_height_is_refused(chain):
    raw = settle_tx(chain, item(make_receipt(1, height_hint=chain.height + 5)))
    assert_rejected_without_state_change(chain, NODE, raw, errors.InvalidPayment.code, "claims height")


def test_a_deposit_for_one_node_cannot_pay_another_node(chain):
    # CLIENT's escrow is all for NODE: NODE_B's receipt for the same client finds nothing to draw on.
    raw = settle_tx(chain, item(make_receipt(1, node=NODE_B)), by=NODE_B)
    assert_rejected_without_state_change(chain, NODE_B, raw, errors.InsufficientEscrow.code, f"for {NODE_B.address}")
    assert chain.escrow(CLIENT.address, NODE.address) == DEPOSIT


@pytest.mark.parametrize(
    ("query", "code"),
    [(b"0x" + b"ab" * 32, errors.NotFound.code), (b"0x1234", errors.InvalidQuery.code)],
)
def test_receipt_query_of_an_unsettled_or_malformed_id_answers_its_code(chain, query, code):
    resp = chain.query("/inference/receipt", query)
    assert resp.code == code and resp.log and not resp.value


# Each case prepares the chain if needed and returns (tx signer, tx); the tx must be refused.
Case = Callable[[Node], tuple[PrivateKey, bytes]]


def _settled_twice(chain: Node) -> tuple[PrivateKey, bytes]:
    it = item(make_receipt(1))
    assert_ok(chain.deliver(NODE, MsgSettle((it,))))
    return NODE, settle_tx(chain, it)


def _same_request_with_another_receipt(chain: Node) -> tuple[PrivateKey, bytes]:
    assert_ok(chain.deliver(NODE, MsgSettle((item(make_receipt(1)),))))
    return NODE, settle_tx(chain, item(make_receipt(1, output="another output")))


def _authorised_for_node_a_settled_by_node_b(chain: Node) -> tuple[PrivateKey, bytes]:
    receipt = make_receipt(1, node=NODE_B)
    return NODE_B, settle_tx(chain, item(receipt, pay_request(receipt, node=NODE.address)), by=NODE_B)


def _receipt_of_node_a_submitted_by_node_b(chain: Node) -> tuple[PrivateKey, bytes]:
    return NODE_B, settle_tx(chain, item(make_receipt(1)), by=NODE_B)


def _expired_authorisation(chain: Node) -> tuple[PrivateKey, bytes]:
    receipt = make_receipt(1)
    return NODE, settle_tx(chain, item(receipt, pay_request(receipt, expiry=chain.height)))


def _fee_above_max_fee(chain: Node) -> tuple[PrivateKey, bytes]:
    return NODE, settle_tx(chain, item(make_receipt(1, fee=MAX_FEE + 1)))


def _escrow_short_of_the_settlement_fee(chain: Node) -> tuple[PrivateKey, bytes]:
    assert_ok(chain.deliver(CLIENT2, MsgDeposit(NODE.address, FEE + SF - 1)))
    return NODE, settle_tx(chain, item(make_receipt(1, client=CLIENT2)))


def _no_escrow_at_all(chain: Node) -> tuple[PrivateKey, bytes]:
    return NODE, settle_tx(chain, item(make_receipt(1, client=MALLORY)))


def _receipt_signed_by_another_key(chain: Node) -> tuple[PrivateKey, bytes]:
    return NODE, settle_tx(chain, item(make_receipt(1), signer=MALLORY))


def _receipt_with_a_malformed_signature(chain: Node) -> tuple[PrivateKey, bytes]:
    receipt = make_receipt(1)
    return NODE, settle_tx(chain, SettlementItem(SignedReceipt(receipt, b"\x00" * 65), pay_request(receipt)))


def _receipt_for_another_chain(chain: Node) -> tuple[PrivateKey, bytes]:
    receipt = make_receipt(1, chain_id="other-chain")  # the client's authorisation is for this chain
    return NODE, settle_tx(chain, item(receipt, pay_request(receipt, chain_id=CHAIN_ID)))


def _authorisation_for_another_chain(chain: Node) -> tuple[PrivateKey, bytes]:
    receipt = make_receipt(1)
    return NODE, settle_tx(chain, item(receipt, pay_request(receipt, chain_id="other-chain")))


def _model_not_registered(chain: Node) -> tuple[PrivateKey, bytes]:
    return NODE, settle_tx(chain, item(make_receipt(1, model=model_id("unregistered"))))


def _mode_not_allowed_by_the_model(chain: Node) -> tuple[PrivateKey, bytes]:
    return NODE, settle_tx(chain, item(make_receipt(1, model=ZK_ONLY.model_id, mode="vanilla")))


def _node_not_registered_for_the_model(chain: Node) -> tuple[PrivateKey, bytes]:
    return NODE_B, settle_tx(chain, item(make_receipt(1, node=NODE_B, model=DIGITS.model_id)), by=NODE_B)


def _node_not_registered_at_all(chain: Node) -> tuple[PrivateKey, bytes]:
    return MALLORY, settle_tx(chain, item(make_receipt(1, node=MALLORY)), by=MALLORY)


def _fee_below_the_model_price(chain: Node) -> tuple[PrivateKey, bytes]:
    return NODE, settle_tx(chain, item(make_receipt(1, fee=PRICE - 1)))


def _payment_signed_by_someone_else_than_the_client(chain: Node) -> tuple[PrivateKey, bytes]:
    receipt = make_receipt(1)
    return NODE, settle_tx(chain, item(receipt, pay_request(receipt, payer=MALLORY)))


def _payment_from_another_client(chain: Node) -> tuple[PrivateKey, bytes]:
    assert_ok(chain.deliver(MALLORY, MsgDeposit(NODE.address, 10 * FEE)))
    receipt = make_receipt(1)
    return NODE, settle_tx(chain, item(receipt, pay_request(receipt, client=MALLORY.address)))


def _payment_with_a_malformed_signature(chain: Node) -> tuple[PrivateKey, bytes]:
    receipt = make_receipt(1)
    payment = dataclasses.replace(pay_request(receipt), signature=b"\x00" * 65)
    return NODE, settle_tx(chain, item(receipt, payment))


def _authorisation_for_another_request(chain: Node) -> tuple[PrivateKey, bytes]:
    receipt = make_receipt(1)
    return NODE, settle_tx(chain, item(receipt, pay_request(receipt, request_id=request_id(2))))


def _authorisation_for_another_model(chain: Node) -> tuple[PrivateKey, bytes]:
    receipt = make_receipt(1)
    return NODE, settle_tx(chain, item(receipt, pay_request(receipt, model_id=DIGITS.model_id)))


def _authorisation_for_another_mode(chain: Node) -> tuple[PrivateKey, bytes]:
    receipt = make_receipt(1, model=DIGITS.model_id)
    return NODE, settle_tx(chain, item(receipt, pay_request(receipt, mode="tee")))


def _vanilla_receipt_with_evidence(chain: Node) -> tuple[PrivateKey, bytes]:
    return NODE, settle_tx(chain, item(make_receipt(1), evidence=b"\x01"))


def _tee_receipt_with_evidence(chain: Node) -> tuple[PrivateKey, bytes]:
    return NODE, settle_tx(chain, item(make_receipt(1, model=DIGITS.model_id, mode="tee"), evidence=b"proof"))


def _allowance_for_node_a_used_by_node_b(chain: Node) -> tuple[PrivateKey, bytes]:
    return NODE_B, settle_tx(chain, item(make_receipt(1, node=NODE_B), pay_allowance(allowance(10**6))), by=NODE_B)


def _expired_allowance(chain: Node) -> tuple[PrivateKey, bytes]:
    return NODE, settle_tx(chain, item(make_receipt(1), pay_allowance(allowance(10**6, expiry=chain.height))))


def _allowance_signed_by_someone_else(chain: Node) -> tuple[PrivateKey, bytes]:
    return NODE, settle_tx(chain, item(make_receipt(1), pay_allowance(allowance(10**6), payer=MALLORY)))


def _allowance_for_another_chain(chain: Node) -> tuple[PrivateKey, bytes]:
    return NODE, settle_tx(chain, item(make_receipt(1), pay_allowance(allowance(10**6, chain_id="other-chain"))))


def _allowance_below_the_fee(chain: Node) -> tuple[PrivateKey, bytes]:
    return NODE, settle_tx(chain, item(make_receipt(1), pay_allowance(allowance(FEE - 1))))


def _allowance_whose_per_request_maximum_is_below_the_fee(chain: Node) -> tuple[PrivateKey, bytes]:
    """The cap would allow it; the most one request may cost does not."""
    return NODE, settle_tx(chain, item(make_receipt(1), pay_allowance(allowance(10**9, max_per_request=FEE - 1))))


REJECTIONS: list[tuple[Case, int, str]] = [
    (_settled_twice, errors.AlreadySettled.code, "was settled by receipt"),
    (_same_request_with_another_receipt, errors.AlreadySettled.code, request_id(1)),
    (_authorised_for_node_a_settled_by_node_b, errors.InvalidPayment.code, f"authorises node {NODE.address}"),
    (_receipt_of_node_a_submitted_by_node_b, errors.Unauthorized.code, "only that node may settle"),
    (_expired_authorisation, errors.AuthorizationExpired.code, "expired at height"),
    (_fee_above_max_fee, errors.FeeAboveLimit.code, f"max fee {MAX_FEE}"),
    (_escrow_short_of_the_settlement_fee, errors.InsufficientEscrow.code, f"settlement fee {SF}"),
    (_no_escrow_at_all, errors.InsufficientEscrow.code, MALLORY.address),
    (_receipt_signed_by_another_key, errors.InvalidEvidence.code, f"signed by {MALLORY.address}"),
    (_receipt_with_a_malformed_signature, errors.InvalidEvidence.code, "receipt signature"),
    (_receipt_for_another_chain, errors.InvalidPayment.code, "receipt is for chain 'other-chain'"),
    (_authorisation_for_another_chain, errors.InvalidPayment.code, "payment is for chain 'other-chain'"),
    (_model_not_registered, errors.NotFound.code, model_id("unregistered")),
    (_mode_not_allowed_by_the_model, errors.Unauthorized.code, "does not allow mode 'vanilla'"),
    (_node_not_registered_for_the_model, errors.Unauthorized.code, "not registered for 'digits'"),
    (_node_not_registered_at_all, errors.NotFound.code, "not a registered inference node"),
    (_fee_below_the_model_price, errors.InvalidPayment.code, "below the price"),
    (_payment_signed_by_someone_else_than_the_client, errors.InvalidPayment.code, f"signed by {MALLORY.address}"),
    (_payment_from_another_client, errors.InvalidPayment.code, CLIENT.address),
    (_payment_with_a_malformed_signature, errors.InvalidPayment.code, "payment signature"),
    (_authorisation_for_another_request, errors.InvalidPayment.code, "another request"),
    (_authorisation_for_another_model, errors.InvalidPayment.code, "another request, model or mode"),
    (_authorisation_for_another_mode, errors.InvalidPayment.code, "another request, model or mode"),
    (_vanilla_receipt_with_evidence, errors.InvalidEvidence.code, "no evidence"),
    (_tee_receipt_with_evidence, errors.InvalidEvidence.code, "tee receipts carry no evidence"),
    (_allowance_for_node_a_used_by_node_b, errors.InvalidPayment.code, f"authorises node {NODE.address}"),
    (_expired_allowance, errors.AuthorizationExpired.code, "expired at height"),
    (_allowance_signed_by_someone_else, errors.InvalidPayment.code, f"signed by {MALLORY.address}"),
    (_allowance_for_another_chain, errors.InvalidPayment.code, "other-chain"),
    (_allowance_below_the_fee, errors.FeeAboveLimit.code, f"allowance cap {FEE - 1}"),
    (
        _allowance_whose_per_request_maximum_is_below_the_fee,
        errors.FeeAboveLimit.code,
        f"fee {FEE} exceeds the allowance's maximum per request {FEE - 1}",
    ),
]


@pytest.mark.parametrize(
    ("make", "code", "log_part"), REJECTIONS, ids=[make.__name__.strip("_") for make, _, _ in REJECTIONS]
)
def test_settlement_is_rejected_with_its_code_and_a_readable_log_and_changes_nothing_but_the_tx_fee(
    chain, make, code, log_part
):
    signer, raw = make(chain)
    receipt_ids = [i.receipt.id for m in json.loads(raw)["msgs"] for i in MsgSettle.from_json(m["value"]).items]
    escrows = {k.address: chain.escrow(k.address) for k in KEYS.values()}
    assert_rejected_without_state_change(chain, signer, raw, code, log_part)
    assert {k.address: chain.escrow(k.address) for k in KEYS.values()} == escrows
    settled_now = [rid for rid in receipt_ids if receipt_record(chain, rid) is not None]
    assert settled_now == ([receipt_ids[0]] if make is _settled_twice else [])


# --- allowances ----------------------------------------------------------------------------------


def test_settlements_against_an_allowance_accumulate_spent_and_never_exceed_its_cap(chain):
    a = allowance(cap=5_000)
    pay = pay_allowance(a)
    fees = [FEE, FEE]
    for n, fee in enumerate(fees):
        assert_ok(chain.deliver(NODE, MsgSettle((item(make_receipt(n, fee=fee), pay),))))
    assert spent(chain, a) == 4_000
    over = settle_tx(chain, item(make_receipt(2, fee=FEE), pay))
    assert_rejected_without_state_change(chain, NODE, over, errors.FeeAboveLimit.code, "allowance cap 5000")
    assert spent(chain, a) == 4_000
    assert_ok(chain.deliver(NODE, MsgSettle((item(make_receipt(3, fee=PRICE), pay),))))
    fees.append(PRICE)
    assert chain.answer("/inference/allowance", canonical_json(a.to_json())) == {
        "id": a.id,
        "cap": "5000",
        "spent": "5000",
        "revoked_from": 0,
    }
    over = settle_tx(chain, item(make_receipt(4, fee=PRICE), pay))
    assert_rejected_without_state_change(chain, NODE, over, errors.FeeAboveLimit.code, "5000 spent")
    assert chain.escrow(CLIENT.address) == DEPOSIT - sum(f + PARAMS.settlement_fee_for(f) for f in fees)
    assert receipt_record(chain, make_receipt(3, fee=PRICE).id)["payment"] == "allowance"
    assert_accounting_holds(chain)


def test_a_revocation_takes_effect_after_the_revoke_delay_so_receipts_served_before_still_settle(chain):
    a7, a8 = allowance(10**6, nonce=7), allowance(10**6, nonce=8)
    assert_ok(chain.deliver(NODE, MsgSettle((item(make_receipt(1), pay_allowance(a7)),))))
    result = chain.deliver(CLIENT, MsgRevokeAllowance(NODE.address, 7))
    assert_ok(result)
    effective = chain.height + PARAMS.revoke_delay
    (event,) = [e for e in result.events if e.type == "revoke_allowance"]
    assert {a.key: a.value for a in event.attributes}["effective"] == str(effective)
    assert chain.answer("/inference/allowance", canonical_json(a7.to_json())) == {
        "id": a7.id,
        "cap": str(10**6),
        "spent": str(FEE),
        "revoked_from": effective,
    }
    # The node answered these before it saw the revocation: they settle until it takes effect.
    assert_ok(chain.deliver(NODE, MsgSettle((item(make_receipt(2), pay_allowance(a7)),))))
    assert_ok(chain.deliver(CLIENT, MsgRevokeAllowance(NODE.address, 7)))  # revoking again moves nothing
    assert chain.answer("/inference/allowance", canonical_json(a7.to_json()))["revoked_from"] == effective
    while chain.height < effective - 1:
        chain.block()
    raw = settle_tx(chain, item(make_receipt(3), pay_allowance(a7)))
    assert_rejected_without_state_change(chain, NODE, raw, errors.InvalidPayment.code, "revoked")
    assert spent(chain, a7) == 2 * FEE
    # Another account cannot revoke the client's allowance; another nonce is unaffected.
    assert_ok(chain.deliver(MALLORY, MsgRevokeAllowance(NODE.address, 8)))
    assert chain.answer("/inference/allowance", canonical_json(a8.to_json()))["revoked_from"] == 0
    assert_ok(chain.deliver(NODE, MsgSettle((item(make_receipt(4), pay_allowance(a8)),))))
    assert spent(chain, a7) == 2 * FEE and spent(chain, a8) == FEE


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'{"cap": "1"}'])
def test_allowance_query_with_data_that_is_not_an_allowance_answers_invalid_query(chain, data):
    resp = chain.query("/inference/allowance", data)
    assert resp.code == errors.InvalidQuery.code and resp.log


# --- batches -------------------------------------------------------------------------------------


def test_a_batch_of_three_receipts_settles_all_of_them(chain):
    assert_ok(chain.deliver(CLIENT2, MsgDeposit(NODE.address, FEE + SF)))
    items = (item(make_receipt(1)), item(make_receipt(2, model=DIGITS.model_id)), item(make_receipt(3, client=CLIENT2)))
    raw = settle_tx(chain, *items)
    node_before, burned_before = chain.balance(NODE.address), chain.supply()[1]
    result = chain.block([raw]).tx_results[0]
    assert_ok(result)
    assert len([e for e in result.events if e.type == "settle"]) == 3
    assert [receipt_record(chain, i.receipt.id)["status"] for i in items] == ["settled"] * 3
    assert chain.balance(NODE.address) == node_before + 3 * FEE - fee_of(raw)
    assert chain.supply()[1] == burned_before + 3 * SF + fee_of(raw)
    assert (chain.escrow(CLIENT.address), chain.escrow(CLIENT2.address)) == (DEPOSIT - 2 * (FEE + SF), 0)
    assert_accounting_holds(chain)


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (lambda: item(make_receipt(9, fee=PRICE - 1)), errors.InvalidPayment.code),
        (lambda: item(make_receipt(1)), errors.AlreadySettled.code),  # the first item again
        (lambda: item(make_receipt(9, client=CLIENT2)), errors.InsufficientEscrow.code),
        (lambda: item(make_receipt(9), signer=MALLORY), errors.InvalidEvidence.code),
    ],
    ids=["fee_below_price", "duplicate", "no_escrow", "bad_signature"],
)
@pytest.mark.parametrize("position", [1, 2])
def test_a_batch_with_one_bad_item_is_rejected_whole_and_settles_no_item(chain, bad, code, position):
    good = [item(make_receipt(1)), item(make_receipt(2))]
    items = [*good[:position], bad(), *good[position:]]
    raw = settle_tx(chain, *items)
    assert_rejected_without_state_change(chain, NODE, raw, code, "")
    assert [receipt_record(chain, i.receipt.id) for i in items] == [None] * 3
    # The good items were not consumed: alone they settle.
    assert_ok(chain.deliver(NODE, MsgSettle(tuple(good))))


def test_a_batch_that_would_take_an_allowance_past_its_cap_is_rejected_whole(chain):
    a = allowance(cap=2 * FEE)
    pay = pay_allowance(a)
    raw = settle_tx(chain, *(item(make_receipt(n), pay) for n in range(3)))
    assert_rejected_without_state_change(chain, NODE, raw, errors.FeeAboveLimit.code, f"{2 * FEE} spent")
    assert spent(chain, a) == 0
    assert_ok(chain.deliver(NODE, MsgSettle(tuple(item(make_receipt(n), pay) for n in range(2)))))
    assert spent(chain, a) == 2 * FEE


def test_a_batch_that_the_escrow_covers_only_in_part_is_rejected_whole(chain):
    assert_ok(chain.deliver(CLIENT2, MsgDeposit(NODE.address, 2 * (FEE + SF))))
    raw = settle_tx(chain, *(item(make_receipt(n, client=CLIENT2)) for n in range(3)))
    assert_rejected_without_state_change(chain, NODE, raw, errors.InsufficientEscrow.code, CLIENT2.address)
    assert chain.escrow(CLIENT2.address) == 2 * (FEE + SF)


# --- determinism ---------------------------------------------------------------------------------


def test_two_apps_fed_the_same_blocks_agree_on_every_app_hash_and_result(tmp_path):
    one, two = Node(tmp_path / "one.db"), Node(tmp_path / "two.db")
    assert one.init(GENESIS).app_hash == two.init(GENESIS).app_hash
    a = allowance(3 * FEE, nonce=3)
    steps: list[Callable[[], list[bytes]]] = [
        lambda: [],
        lambda: [one.tx(OWNER, m, offset=i) for i, m in enumerate((IRIS, DIGITS, ZK_ONLY))],
        lambda: [one.tx(NODE, NODE_MSG), one.tx(NODE_B, NODE_B_MSG), one.tx(CLIENT, MsgDeposit(NODE.address, DEPOSIT))],
        lambda: [
            settle_tx(one, item(make_receipt(1)), item(make_receipt(2), pay_allowance(a))),
            one.tx(CLIENT2, MsgDeposit(NODE.address, CLIENT2_FUNDS)),  # fails: fee burned only
            one.tx(CLIENT, MsgWithdraw(NODE.address, 10_000)),
        ],
        lambda: [settle_tx(one, item(make_receipt(1))), one.tx(CLIENT, MsgRevokeAllowance(NODE.address, 3))],
        lambda: [settle_tx(one, item(make_receipt(3), pay_allowance(a))), b"junk"],
        lambda: [one.tx(CLIENT2, MsgDeposit(NODE.address, 5_000))],
        lambda: [one.tx(CLIENT2, MsgWithdraw(NODE.address, 1_000))],
        lambda: [],  # CLIENT's withdrawal (height 4) is paid here, at 4 + withdraw_delay
    ]
    hashes = []
    for step in steps:
        txs = step()
        # The second app also sees the block proposed first (FinalizeBlock may reuse that execution).
        two.app.process_proposal(abci.RequestProcessProposal(height=two.height + 1, txs=txs))
        r1, r2 = one.block(txs), two.block(txs)
        assert r1.SerializeToString(deterministic=True) == r2.SerializeToString(deterministic=True)
        assert one.info() == two.info()
        hashes.append(r1.app_hash)
    assert len(set(hashes)) == len(hashes)  # every block changed the state
    assert one.dump() == two.dump()
    # The revocation in block 5 takes effect revoke_delay blocks later, so receipt 3 still settles.
    assert one.escrow(CLIENT.address) == DEPOSIT - 3 * (FEE + SF) - 10_000
    one.close()
    two.close()


# --- accounting property -------------------------------------------------------------------------

RICH, POOR = CLIENT, CLIENT2
PROP_PARAMS = InferenceParams(withdraw_delay=2, settlement_fee=100, settlement_fee_bps=500)
PROP_GENESIS = AppGenesis(
    fees=FEES,
    inference=PROP_PARAMS,
    accounts=(
        GenesisAccount(RICH.address, 10**9),
        GenesisAccount(POOR.address, 60_000),
        GenesisAccount(NODE.address, 10**12),
        GenesisAccount(OWNER.address, 10**12),
    ),
)
PROP_SUPPLY = PROP_GENESIS.total_supply
PROP_CLIENTS = (RICH, POOR)

client_index = st.integers(0, len(PROP_CLIENTS) - 1)
operation = st.one_of(
    st.tuples(st.just("deposit"), client_index, st.integers(1, 70_000)),
    st.tuples(st.just("withdraw"), client_index, st.integers(1, 70_000)),
    st.tuples(st.just("settle"), st.lists(st.tuples(client_index, st.integers(PRICE, 6_000)), min_size=1, max_size=3)),
)


class Ledger:
    """What the chain must hold, computed independently: balances, escrows, pending withdrawals."""

    def __init__(self, chain: Node) -> None:
        self.balance = {k.address: chain.balance(k.address) for k in (RICH, POOR, NODE)}
        self.escrow = {k.address: 0 for k in PROP_CLIENTS}
        self.pending: dict[tuple[int, str], int] = {}
        self.supply, self.burned = chain.supply()

    def release(self, height: int) -> None:
        for release, client in sorted(self.pending):
            if release <= height:
                paid = min(self.pending.pop((release, client)), self.escrow[client])
                self.escrow[client] -= paid
                self.balance[client] += paid

    def burn(self, amount: int) -> None:
        self.supply -= amount
        self.burned += amount

    def run(self, height: int, signer: str, fee: int, op: tuple) -> int:
        """Apply one tx; the code the chain must answer."""
        if self.balance[signer] < fee:
            return errors.InsufficientFunds.code
        self.balance[signer] -= fee
        self.burn(fee)
        if op[0] == "deposit":
            if self.balance[signer] < op[2]:
                return errors.InsufficientFunds.code
            self.balance[signer] -= op[2]
            self.escrow[signer] += op[2]
        elif op[0] == "withdraw":
            withdrawing = sum(a for (_, c), a in self.pending.items() if c == signer)
            if op[2] + withdrawing > self.escrow[signer]:
                return errors.InsufficientEscrow.code
            key = (height + PROP_PARAMS.withdraw_delay, signer)
            self.pending[key] = self.pending.get(key, 0) + op[2]
        else:
            escrow = dict(self.escrow)
            for client, item_fee in op[1]:
                address = PROP_CLIENTS[client].address
                charge = item_fee + PROP_PARAMS.settlement_fee_for(item_fee)
                if escrow[address] < charge:
                    return errors.InsufficientEscrow.code
                escrow[address] -= charge
            self.escrow = escrow
            for _, item_fee in op[1]:
                self.balance[NODE.address] += item_fee
                self.burn(PROP_PARAMS.settlement_fee_for(item_fee))
        return 0

    def assert_matches(self, chain: Node) -> None:
        assert {a: chain.balance(a) for a in self.balance} == self.balance
        assert {a: chain.escrow(a) for a in self.escrow} == self.escrow
        for address in self.escrow:
            lanes = chain.answer("/inference/escrow", address.encode())["lanes"]
            pending = lanes[0]["withdrawals"] if lanes else []
            expected = sorted((r, a) for (r, c), a in self.pending.items() if c == address)
            assert [(p["release_height"], int(p["amount"])) for p in pending] == expected
        assert chain.supply() == (self.supply, self.burned)
        assert chain.balance(ESCROW_ACCOUNT) == sum(self.escrow.values())
        assert chain.invariant_violations(PROP_SUPPLY) == []


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(st.lists(operation, max_size=3), min_size=1, max_size=6))
def test_supply_plus_burned_and_escrow_account_match_a_ledger_after_every_block(blocks):
    with tempfile.TemporaryDirectory() as tmp:
        chain = Node(Path(tmp) / "state.db")
        try:
            chain.init(PROP_GENESIS)
            node_msg = dataclasses.replace(NODE_B_MSG, endpoint="http://n")
            chain.block([signed_tx(OWNER, 0, IRIS), signed_tx(NODE, 0, node_msg)])
            ledger = Ledger(chain)
            requests = iter(range(10**6))
            for ops in [*blocks, *[[]] * PROP_PARAMS.withdraw_delay]:
                height = chain.height + 1
                ledger.release(height)
                txs, expected = [], []
                used: set[str] = set()
                for op in ops:
                    signer = NODE if op[0] == "settle" else PROP_CLIENTS[op[1]]
                    if signer.address in used:  # one tx per account and block keeps nonces simple
                        continue
                    used.add(signer.address)
                    if op[0] == "settle":
                        receipts = [
                            make_receipt(next(requests), client=PROP_CLIENTS[c], fee=f, height_hint=1) for c, f in op[1]
                        ]
                        msg = MsgSettle(tuple(item(r, pay_request(r, max_fee=r.fee)) for r in receipts))
                    else:
                        msg = (MsgDeposit if op[0] == "deposit" else MsgWithdraw)(NODE.address, op[2])
                    raw = signed_tx(signer, chain.nonce(signer.address), msg)
                    txs.append(raw)
                    expected.append(ledger.run(height, signer.address, fee_of(raw), op))
                codes = [r.code for r in chain.block(txs).tx_results]
                assert codes == expected
                for code in codes:
                    event(f"tx code {code}")
                ledger.assert_matches(chain)
        finally:
            chain.close()


@pytest.mark.parametrize("position", [0, 2])
def test_the_refused_item_is_named_in_the_result_data_of_check_tx_and_of_the_block(chain, position):
    """A node learns which receipt sank its MsgSettle from structured data, not by parsing the log."""
    good = [item(make_receipt(1)), item(make_receipt(2))]
    bad = item(make_receipt(9, fee=PRICE - 1))
    items = [*good[:position], bad, *good[position:]]
    raw = settle_tx(chain, *items)
    expected = {"refused_item": {"index": position, "receipt_id": bad.receipt.id}}
    checked = chain.check(raw)
    assert checked.code == errors.InvalidPayment.code and json.loads(checked.data) == expected
    (result,) = chain.block([raw]).tx_results
    assert result.code == errors.InvalidPayment.code and json.loads(result.data) == expected
