"""HacaApp driven in-process with ABCI protobuf requests over a CommitStore."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from tendermint.abci import types_pb2 as abci

from haca.chain import errors
from haca.chain.app import PROOF_OP_TYPE
from haca.chain.errors import InvalidGenesis
from haca.chain.genesis import AppGenesis, GenesisAccount
from haca.chain.modules.auth.keeper import PARAMS_KEY, nonce_key
from haca.chain.modules.bank.invariants import supply_matches_balances
from haca.chain.modules.bank.keeper import BURNED_KEY, SUPPLY_KEY, balance_key
from haca.crypto.keys import PrivateKey
from haca.crypto.state_proof import verify_proof
from haca.types.bank import MsgSend
from haca.types.tx import MSG_TYPES, Tx, build_tx
from tests.unit.chain.apphelpers import CHAIN_ID, FEES, fee_of
from tests.unit.chain.apphelpers import Node as AppNode

ALICE, BOB, CAROL = (PrivateKey.from_seed(name) for name in ("alice", "bob", "carol"))
ALICE_FUNDS, BOB_FUNDS = 10**12, 50_000
GENESIS = AppGenesis(
    denom="opg",
    fees=FEES,
    accounts=(GenesisAccount(ALICE.address, ALICE_FUNDS), GenesisAccount(BOB.address, BOB_FUNDS)),
)
GENESIS_SUPPLY = ALICE_FUNDS + BOB_FUNDS
ACCEPT, REJECT = abci.ResponseProcessProposal.ACCEPT, abci.ResponseProcessProposal.REJECT


def send(key: PrivateKey, nonce: int, to: str, amount: int, chain_id: str = CHAIN_ID) -> bytes:
    return build_tx(key, chain_id, nonce, (MsgSend(to, amount),), FEES.tx_fee_base, FEES.tx_fee_per_byte).encode()


class Node(AppNode):
    """The shared harness, started from this module's genesis unless told otherwise."""

    def init(self, genesis: AppGenesis = GENESIS, chain_id: str = CHAIN_ID) -> abci.ResponseInitChain:
        return super().init(genesis, chain_id)


@pytest.fixture
def node(tmp_path):
    """A chain past height 1 (an empty block), so CheckTx sees the genesis state."""
    n = Node(tmp_path / "state.db")
    n.init()
    n.block()
    yield n
    n.app.store.close()


def _assert_bank_invariants(n: Node) -> None:
    supply, burned = n.supply()
    assert supply + burned == GENESIS_SUPPLY
    assert supply_matches_balances(n.app.bank, n.app.store) is None


# --- transfers and fees --------------------------------------------------------------------------


def test_valid_transfer_moves_balance_burns_fee_and_increments_nonce(node):
    raw = send(ALICE, 0, CAROL.address, 1_234)
    fee = fee_of(raw)
    assert fee == FEES.min_fee(len(raw))
    resp = node.block([raw])
    assert [r.code for r in resp.tx_results] == [0]
    assert {e.type for e in resp.tx_results[0].events} == {"tx", "burn", "transfer"}
    assert node.balance(CAROL.address) == 1_234
    assert node.balance(ALICE.address) == ALICE_FUNDS - 1_234 - fee
    assert node.nonce(ALICE.address) == 1
    assert node.supply() == (GENESIS_SUPPLY - fee, fee)
    _assert_bank_invariants(node)


def test_fees_of_several_blocks_accumulate_in_the_burned_total(node):
    txs = [send(ALICE, n, BOB.address, 10) for n in range(3)]
    node.block(txs[:2])
    node.block(txs[2:])
    burned = sum(fee_of(raw) for raw in txs)
    assert node.supply() == (GENESIS_SUPPLY - burned, burned)
    assert node.balance(BOB.address) == BOB_FUNDS + 30
    _assert_bank_invariants(node)


# --- CheckTx -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnhandledMsg:
    """Decodable (registered on the wire) but no handler in the app."""

    type_name: ClassVar[str] = "test/unhandled"
    eip712_name: ClassVar[str] = "Unhandled"
    eip712_fields: ClassVar[list[tuple[str, str]]] = [("n", "uint256")]
    n: int

    def to_json(self) -> dict[str, Any]:
        return {"n": str(self.n)}

    def to_eip712(self) -> dict[str, Any]:
        return {"n": self.n}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> UnhandledMsg:
        return cls(int(value["n"]))


def _garbage(n: Node) -> bytes:
    return b"\x00\x01 not a tx \xff"


def _truncated(n: Node) -> bytes:
    return send(ALICE, 0, CAROL.address, 5)[:-7]


def _signed_by_another_key(n: Node) -> bytes:
    return Tx(CHAIN_ID, ALICE.address, 0, 10**6, (MsgSend(CAROL.address, 5),)).signed(BOB).encode()


def _wrong_chain_id(n: Node) -> bytes:
    return send(ALICE, 0, CAROL.address, 5, chain_id="other-chain")


def _replayed(n: Node) -> bytes:
    raw = send(ALICE, 0, CAROL.address, 5)
    assert n.block([raw]).tx_results[0].code == 0
    return raw


def _overdraft(n: Node) -> bytes:
    return send(BOB, 0, CAROL.address, BOB_FUNDS)  # the fee is payable, the amount is not


def _fee_exceeds_balance(n: Node) -> bytes:
    return send(CAROL, 0, ALICE.address, 1)


def _fee_below_minimum(n: Node) -> bytes:
    return Tx(CHAIN_ID, ALICE.address, 0, FEES.tx_fee_base, (MsgSend(CAROL.address, 5),)).signed(ALICE).encode()


def _unknown_message_type(n: Node) -> bytes:
    body = json.loads(send(ALICE, 0, CAROL.address, 5))
    body["msgs"] = [{"type": "bank/mint", "value": {"to": CAROL.address, "amount": "5"}}]
    return json.dumps(body).encode()


def _unhandled_message_type(n: Node) -> bytes:
    return Tx(CHAIN_ID, ALICE.address, 0, 10**6, (UnhandledMsg(1),)).signed(ALICE).encode()


@pytest.mark.parametrize(
    ("make", "code", "log_part"),
    [
        (_garbage, errors.TxDecodeFailed.code, "not JSON"),
        (_truncated, errors.TxDecodeFailed.code, "not JSON"),
        (_signed_by_another_key, errors.InvalidSignature.code, BOB.address),
        (_wrong_chain_id, errors.WrongChainId.code, "other-chain"),
        (_replayed, errors.BadNonce.code, "nonce is 1, tx has 0"),
        (_overdraft, errors.InsufficientFunds.code, f"needs {BOB_FUNDS}"),
        (_fee_exceeds_balance, errors.InsufficientFunds.code, "has 0"),
        (_fee_below_minimum, errors.InsufficientFee.code, "below the minimum"),
        (_unknown_message_type, errors.UnknownMessage.code, "bank/mint"),
        (_unhandled_message_type, errors.UnknownMessage.code, "test/unhandled"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_check_tx_rejects_invalid_tx_with_its_code_and_a_readable_log_and_no_state_change(
    node, monkeypatch, make, code, log_part
):
    monkeypatch.setitem(MSG_TYPES, UnhandledMsg.type_name, UnhandledMsg)
    raw = make(node)
    writes_before = dict(node.app.check_state.writes)
    hash_before, nonce_before = node.app.store.app_hash, node.nonce(ALICE.address)
    resp = node.check(raw)
    assert resp.code == code != 0
    assert resp.codespace == "haca"
    assert log_part in resp.log
    assert node.app.check_state.writes == writes_before
    assert node.app.store.app_hash == hash_before
    # Nothing was charged: the next valid tx of each account still passes at its committed nonce.
    assert node.check(send(ALICE, nonce_before, CAROL.address, 1)).code == 0
    assert node.check(send(BOB, 0, CAROL.address, BOB_FUNDS - 2 * FEES.min_fee(300))).code == 0


def test_check_tx_accepts_sequential_nonces_before_a_commit_and_rejects_gaps_and_repeats(node):
    for nonce in range(3):
        resp = node.check(send(ALICE, nonce, CAROL.address, 1))
        assert resp.code == 0, resp.log
    assert node.check(send(ALICE, 4, CAROL.address, 1)).code == errors.BadNonce.code
    assert node.check(send(ALICE, 2, CAROL.address, 2)).code == errors.BadNonce.code
    assert node.check(send(ALICE, 3, CAROL.address, 1)).code == 0
    assert node.app.store.height == 1  # nothing was committed


def test_check_tx_counts_spending_by_earlier_pending_txs(node):
    assert node.check(send(BOB, 0, CAROL.address, 30_000)).code == 0
    resp = node.check(send(BOB, 1, CAROL.address, 30_000))
    assert resp.code == errors.InsufficientFunds.code


def test_check_state_is_reset_to_the_committed_state_after_commit(node):
    assert node.check(send(ALICE, 0, CAROL.address, 1)).code == 0
    node.block()  # the pending tx was not included
    assert node.check(send(ALICE, 0, CAROL.address, 1)).code == 0
    assert node.check(send(ALICE, 1, CAROL.address, 1)).code == 0


def test_check_tx_of_a_huge_integer_literal_is_a_decode_failure_not_an_exception(node):
    resp = node.check(b'{"nonce": ' + b"1" * 5000 + b"}")
    assert resp.code == errors.TxDecodeFailed.code


def test_process_proposal_rejects_a_block_with_a_huge_integer_literal_instead_of_raising(node):
    txs = [send(ALICE, 0, CAROL.address, 1), b'{"fee": ' + b"9" * 5000 + b"}"]
    assert node.app.process_proposal(abci.RequestProcessProposal(height=2, txs=txs)).status == REJECT


def test_genesis_funds_are_spendable_in_check_tx_and_process_proposal_before_block_one(tmp_path):
    n = Node(tmp_path / "state.db")
    n.init()
    raw = send(ALICE, 0, CAROL.address, 5)
    try:
        assert n.check(raw).code == 0
        resp = n.app.process_proposal(abci.RequestProcessProposal(height=1, txs=[raw]))
        assert resp.status == ACCEPT
    finally:
        n.app.store.close()


# --- proposals -----------------------------------------------------------------------------------


def test_process_proposal_accepts_valid_txs_and_rejects_a_block_with_an_invalid_one(node):
    valid = [send(ALICE, 0, CAROL.address, 1), send(ALICE, 1, CAROL.address, 2), send(BOB, 0, CAROL.address, 3)]
    assert node.app.process_proposal(abci.RequestProcessProposal(height=2, txs=valid)).status == ACCEPT
    for bad in (_garbage(node), _signed_by_another_key(node), _wrong_chain_id(node), _fee_below_minimum(node)):
        resp = node.app.process_proposal(abci.RequestProcessProposal(height=2, txs=[*valid, bad]))
        assert resp.status == REJECT
    replay = [valid[0], valid[0]]
    assert node.app.process_proposal(abci.RequestProcessProposal(height=2, txs=replay)).status == REJECT
    # Proposals are checked on scratch state: the block still executes from the committed state.
    assert [r.code for r in node.block(valid).tx_results] == [0, 0, 0]


def test_process_proposal_accepts_a_tx_whose_message_fails_but_whose_fee_is_payable(node):
    resp = node.app.process_proposal(abci.RequestProcessProposal(height=2, txs=[_overdraft(node)]))
    assert resp.status == ACCEPT


def test_prepare_proposal_drops_invalid_txs_and_keeps_valid_ones_in_order(node):
    a0, a1, b0 = send(ALICE, 0, CAROL.address, 1), send(ALICE, 1, CAROL.address, 2), send(BOB, 0, CAROL.address, 3)
    offered = [
        a0,
        _garbage(node),
        _signed_by_another_key(node),
        a1,
        a0,  # a repeat of an included tx: stale nonce
        _wrong_chain_id(node),
        _overdraft(node),  # would only burn a fee: dropped
        b0,
        _fee_exceeds_balance(node),
    ]
    resp = node.app.prepare_proposal(abci.RequestPrepareProposal(height=2, max_tx_bytes=10**6, txs=offered))
    assert list(resp.txs) == [a0, a1, b0]
    tight = abci.RequestPrepareProposal(height=2, max_tx_bytes=len(a0) + len(a1), txs=[a0, a1, b0])
    assert list(node.app.prepare_proposal(tight).txs) == [a0, a1]
    assert node.app.store.height == 1 and node.nonce(ALICE.address) == 0


# --- FinalizeBlock -------------------------------------------------------------------------------


def test_finalize_block_tx_with_failing_message_burns_fee_bumps_nonce_and_reports_error(node):
    raw = _overdraft(node)
    fee = fee_of(raw)
    resp = node.block([raw])
    (result,) = resp.tx_results
    assert result.code == errors.InsufficientFunds.code
    assert result.log
    assert {e.type for e in result.events} == {"tx", "burn"}
    assert node.balance(BOB.address) == BOB_FUNDS - fee
    assert node.balance(CAROL.address) == 0
    assert node.nonce(BOB.address) == 1
    assert node.supply() == (GENESIS_SUPPLY - fee, fee)
    _assert_bank_invariants(node)


def test_finalize_block_undoes_all_messages_of_a_tx_when_a_later_one_fails(node):
    msgs = (MsgSend(CAROL.address, 10_000), MsgSend(CAROL.address, 10**9))
    raw = build_tx(BOB, CHAIN_ID, 0, msgs, FEES.tx_fee_base, FEES.tx_fee_per_byte).encode()
    assert node.block([raw]).tx_results[0].code == errors.InsufficientFunds.code
    assert node.balance(CAROL.address) == 0
    assert node.balance(BOB.address) == BOB_FUNDS - fee_of(raw)


def test_finalize_block_reports_one_result_per_tx_including_undecodable_ones(node):
    txs = [send(ALICE, 0, CAROL.address, 1), b"junk", send(ALICE, 0, CAROL.address, 1), send(ALICE, 1, BOB.address, 1)]
    codes = [r.code for r in node.block(txs).tx_results]
    assert codes == [0, errors.TxDecodeFailed.code, errors.BadNonce.code, 0]
    assert node.nonce(ALICE.address) == 2


# --- persistence and crash safety ----------------------------------------------------------------


def test_info_after_reopening_reports_the_committed_height_and_app_hash(node):
    node.block([send(ALICE, 0, CAROL.address, 7)])
    last = node.block([send(ALICE, 1, CAROL.address, 8)])
    reopened = node.reopen()
    info = reopened.info()
    assert (info.last_block_height, info.last_block_app_hash) == (3, last.app_hash)
    assert reopened.balance(CAROL.address) == 15
    # The chain id is restored from the store: the next tx passes CheckTx.
    assert reopened.check(send(ALICE, 2, CAROL.address, 1)).code == 0
    reopened.app.store.close()


def test_finalize_without_commit_then_reopen_reports_the_previous_height_and_replays_identically(node):
    committed = node.block([send(ALICE, 0, CAROL.address, 7)])
    txs = [send(ALICE, 1, CAROL.address, 8), _overdraft(node)]
    crashed = node.finalize(txs)  # crash before Commit
    assert crashed.app_hash != committed.app_hash
    reopened = node.reopen()
    info = reopened.info()
    assert (info.last_block_height, info.last_block_app_hash) == (2, committed.app_hash)
    assert reopened.balance(CAROL.address) == 7 and reopened.nonce(BOB.address) == 0
    replayed = reopened.block(txs)  # CometBFT replays the block
    assert replayed.app_hash == crashed.app_hash
    assert [r.code for r in replayed.tx_results] == [r.code for r in crashed.tx_results]
    assert reopened.info().last_block_height == 3
    reopened.app.store.close()


def test_two_apps_fed_the_same_genesis_and_blocks_agree_on_every_app_hash(tmp_path):
    blocks = [
        [],
        [send(ALICE, 0, CAROL.address, 7), send(BOB, 0, CAROL.address, 9)],
        [b"junk", send(ALICE, 1, BOB.address, 1), send(CAROL, 0, ALICE.address, 3)],
        [send(BOB, 1, ALICE.address, BOB_FUNDS)],  # message fails, fee burned
        [send(ALICE, 2, CAROL.address, 1), send(ALICE, 3, CAROL.address, 1)],
    ]
    one, two = Node(tmp_path / "one.db"), Node(tmp_path / "two.db")
    assert one.init().app_hash == two.init().app_hash
    hashes = []
    for txs in blocks:
        r1, r2 = one.block(txs), two.block(txs)
        assert r1.app_hash == r2.app_hash
        assert r1.SerializeToString(deterministic=True) == r2.SerializeToString(deterministic=True)
        assert one.info() == two.info()
        hashes.append(r1.app_hash)
    assert len(set(hashes[1:])) == len(hashes) - 1  # every block with state changes moves the hash
    one.app.store.close()
    two.app.store.close()


def test_init_chain_rejects_an_invalid_genesis(tmp_path):
    n = Node(tmp_path / "state.db")
    doubled = AppGenesis(accounts=(GenesisAccount(ALICE.address, 1), GenesisAccount(ALICE.address, 2)))
    with pytest.raises(InvalidGenesis):
        n.init(doubled)
    with pytest.raises(InvalidGenesis):
        n.app.init_chain(abci.RequestInitChain(chain_id=CHAIN_ID, app_state_bytes=b"[1, 2]"))
    n.app.store.close()


# --- queries -------------------------------------------------------------------------------------


def _proof_value(n: Node, resp: abci.ResponseQuery, key: bytes, height: int = 0) -> bytes:
    assert resp.code == 0, resp.log
    (op,) = resp.proof_ops.ops
    assert (op.type, op.key, resp.key) == (PROOF_OP_TYPE, key, key)
    root = n.app.store.root_at(height or n.app.store.height)
    return verify_proof(root, key, op.data)


def test_balance_and_account_queries_return_proofs_that_verify_against_the_app_hash(node):
    node.block([send(ALICE, 0, CAROL.address, 7)])
    assert node.app.store.root_at(2) == node.info().last_block_app_hash

    resp = node.query("/bank/balance", CAROL.address.encode(), prove=True)
    assert json.loads(resp.value) == {"address": CAROL.address, "denom": "opg", "balance": "7"}
    assert resp.height == 2
    assert _proof_value(node, resp, balance_key(CAROL.address)) == b"7"

    resp = node.query("/auth/account", ALICE.address.upper().replace("0X", "0x").encode(), prove=True)
    assert json.loads(resp.value) == {"address": ALICE.address, "nonce": 1}
    assert _proof_value(node, resp, nonce_key(ALICE.address)) == b"1"

    stranger = "0x" + "ab" * 20
    resp = node.query("/bank/balance", stranger.encode(), prove=True)
    assert json.loads(resp.value)["balance"] == "0"
    assert _proof_value(node, resp, balance_key(stranger)) == b""  # a proof of absence


def test_store_query_returns_the_raw_value_with_a_proof(node):
    node.block([send(ALICE, 0, CAROL.address, 7)])
    for key, expected in ((balance_key(CAROL.address), b"7"), (PARAMS_KEY, None), (b"no/such/key", b"")):
        resp = node.query("/store", key, prove=True)
        assert _proof_value(node, resp, key) == resp.value
        if expected is not None:
            assert resp.value == expected
    assert json.loads(node.query("/store", PARAMS_KEY, prove=True).value) == FEES.to_json()


def test_supply_and_params_queries_answer_from_state(node):
    raw = send(ALICE, 0, CAROL.address, 7)
    node.block([raw])
    assert node.answer("/bank/supply") == {
        "denom": "opg",
        "total": str(GENESIS_SUPPLY - fee_of(raw)),
        "burned": str(fee_of(raw)),
    }
    assert node.answer("/auth/params") == FEES.to_json()


@pytest.mark.parametrize(
    ("path", "keys"), [("/bank/supply", (SUPPLY_KEY, BURNED_KEY)), ("/auth/params", (PARAMS_KEY,))]
)
def test_supply_and_params_queries_with_prove_return_proofs_that_verify(node, path, keys):
    node.block([send(ALICE, 0, CAROL.address, 7)])
    resp = node.query(path, prove=True)
    assert resp.code == 0
    proven = {op.key: op for op in resp.proof_ops.ops}
    assert set(proven) == set(keys)
    for key in keys:
        assert verify_proof(node.app.store.app_hash, key, proven[key].data) == node.app.store.get(key)


def test_query_at_an_old_height_returns_the_old_balance_with_a_proof_for_that_height(node):
    node.block([send(ALICE, 0, CAROL.address, 7)])
    node.block([send(ALICE, 1, CAROL.address, 8)])
    assert node.balance(CAROL.address) == 15
    assert node.balance(CAROL.address, height=2) == 7
    assert node.balance(CAROL.address, height=1) == 0
    resp = node.query("/bank/balance", CAROL.address.encode(), height=2, prove=True)
    assert resp.height == 2
    assert _proof_value(node, resp, balance_key(CAROL.address), height=2) == b"7"
    assert node.app.store.root_at(2) != node.app.store.root_at(3)


@pytest.mark.parametrize(
    ("path", "data", "height", "code"),
    [
        ("/bank/nope", b"", 0, errors.UnknownQuery.code),
        ("", b"", 0, errors.UnknownQuery.code),
        ("/bank/balance", b"not-an-address", 0, errors.InvalidQuery.code),
        ("/bank/balance", b"\xff\xfe", 0, errors.InvalidQuery.code),
        ("/auth/account", b"0x1234", 0, errors.InvalidQuery.code),
        ("/bank/balance", ALICE.address.encode(), 99, errors.InvalidQuery.code),
        ("/bank/balance", ALICE.address.encode(), -1, errors.InvalidQuery.code),
    ],
)
def test_unknown_paths_bad_data_and_missing_heights_answer_a_nonzero_code(node, path, data, height, code):
    resp = node.query(path, data, height)
    assert resp.code == code != 0
    assert resp.log and resp.codespace == "haca"
    assert not resp.value


def test_a_transfer_to_an_address_written_without_0x_credits_that_address_or_is_refused(node):
    raw = send(ALICE, 0, "22" * 20, 5)
    result = node.block([raw]).tx_results[0]
    if result.code == 0:
        assert node.balance("0x" + "22" * 20) == 5
    assert all(len(k) == len(balance_key(ALICE.address)) for k, _ in node.app.store.iter_prefix(b"bank/balance/"))
