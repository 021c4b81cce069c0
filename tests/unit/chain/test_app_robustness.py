"""What a hostile query or a CometBFT reconnect must not do to the app; what failed txs report."""

import json

from tendermint.abci import types_pb2 as abci

from haca.chain.genesis import AppGenesis, GenesisAccount
from haca.crypto.keys import PrivateKey
from haca.types.bank import MsgSend
from haca.types.inference import MsgDeposit, MsgWithdraw
from tests.unit.chain.apphelpers import FEES, Node, block_hash_of, block_time, signed_tx

ALICE, BOB = PrivateKey.from_seed("alice"), PrivateKey.from_seed("bob")
GENESIS = AppGenesis(fees=FEES, accounts=(GenesisAccount(ALICE.address, 10**12),))


def started(tmp_path) -> Node:
    node = Node(tmp_path / "state.db")
    node.init(GENESIS)
    node.block()
    return node


def test_a_query_whose_handler_fails_unexpectedly_answers_an_error_code_not_an_exception(tmp_path):
    node = started(tmp_path)
    allowance = {
        "chain_id": "\ud800",
        "client": ALICE.address,
        "node": BOB.address,
        "cap": "1",
        "expiry": 1,
        "nonce": 1,
    }
    data = json.dumps(allowance).encode()  # a lone surrogate survives the stdlib JSON round trip
    response = node.query("/inference/allowance", data)
    assert response.code != 0 and response.log
    assert node.query("/bank/supply").code == 0  # and the app still answers


def test_a_failed_tx_reports_only_its_fee_events_not_those_of_rolled_back_messages(tmp_path):
    node = started(tmp_path)
    raw = signed_tx(
        ALICE, 0, MsgSend(BOB.address, 5), MsgWithdraw(BOB.address, 10**15)
    )  # the withdraw fails: no escrow
    result = node.block([raw]).tx_results[0]
    assert result.code != 0
    assert {e.type for e in result.events} == {"tx", "burn"}
    assert node.balance(BOB.address) == 0


def test_info_after_an_uncommitted_block_lets_cometbft_replay_it_to_the_same_app_hash(tmp_path):
    node = started(tmp_path)
    raw = signed_tx(ALICE, 0, MsgDeposit(BOB.address, 1_000))
    first = node.finalize([raw])  # CometBFT dies before Commit, the app process stays up
    node.app.info(abci.RequestInfo())  # CometBFT reconnects and asks where the app is
    request = abci.RequestFinalizeBlock(height=node.height, txs=[raw], hash=block_hash_of(node.height))
    request.time.seconds = block_time(node.height)
    replay = node.app.finalize_block(request)
    assert replay.app_hash == first.app_hash
    assert replay.tx_results[0].code == 0
