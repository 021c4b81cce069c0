"""The validator set by stake (issue 24): validators created, edited and left by their operators,
power = bonded stake / power_unit among the max_validators most powerful, the changes sent to
CometBFT at the end of the block they happen in, and the genesis set answered at InitChain."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from pathlib import Path

import pytest

from haca.chain import errors
from haca.chain.genesis import AppGenesis, GenesisAccount
from haca.chain.modules.staking.keeper import StakingParams
from haca.crypto.consensus import sign_possession
from haca.crypto.keys import PrivateKey
from haca.types.staking import (
    MsgBond,
    MsgCreateValidator,
    MsgEditValidator,
    MsgLeaveValidator,
    MsgUnbond,
    MsgUnjail,
)
from tests.unit.chain import apphelpers
from tests.unit.chain.apphelpers import Node

UNIT = 10**6
FUNDS = 100 * UNIT
GENESIS_OPERATOR = PrivateKey.from_seed("genesis operator")
OPERATORS = [PrivateKey.from_seed(f"operator {i}") for i in range(4)]
GENESIS_KEY = hashlib.sha256(b"genesis consensus key").digest()
GENESIS_BOND = 10 * UNIT
STAKING = StakingParams(power_unit=UNIT, min_validator_stake=2 * UNIT, max_validators=3)
MINTED = len(OPERATORS) * FUNDS + FUNDS + GENESIS_BOND


def consensus_seed(i: int) -> bytes:
    return hashlib.sha256(f"consensus key {i}".encode()).digest()


def consensus_key(i: int) -> bytes:
    return sign_possession(consensus_seed(i), apphelpers.CHAIN_ID, GENESIS_OPERATOR.address)[0]


def create_msg(key: int, moniker: str, bond: int, operator: PrivateKey, possession_for: str | None = None):
    """MsgCreateValidator for consensus key `key`, its possession signed for `possession_for`
    (default: the operator sending it, as an honest one does)."""
    pub_key, possession = sign_possession(consensus_seed(key), apphelpers.CHAIN_ID, possession_for or operator.address)
    return MsgCreateValidator(pub_key, moniker, bond, possession)


def consensus_address(key: bytes) -> str:
    return hashlib.sha256(key).digest()[:20].hex()


@pytest.fixture
def chain(tmp_path: Path):
    node = genesis_chain(tmp_path, STAKING)
    yield node
    node.close()


def genesis_chain(tmp_path: Path, staking: StakingParams) -> Node:
    tmp_path.mkdir(parents=True, exist_ok=True)
    node = Node(tmp_path / "state.db")
    genesis = AppGenesis(
        accounts=tuple(GenesisAccount(k.address, FUNDS) for k in [*OPERATORS, GENESIS_OPERATOR]),
        staking=staking,
        bonds=((GENESIS_OPERATOR.address, GENESIS_BOND),),
        validators=((base64.b64encode(GENESIS_KEY).decode(), GENESIS_OPERATOR.address),),
    )
    init = node.init(genesis)
    assert [(bytes(u.pub_key.ed25519), u.power) for u in init.validators] == [(GENESIS_KEY, 10)]
    assert updates(node.block()) == []  # the genesis set stands
    return node


def updates(response) -> list[tuple[bytes, int]]:
    return [(bytes(u.pub_key.ed25519), u.power) for u in response.validator_updates]


def create(chain: Node, i: int, bond: int, raw: list[bytes] | None = None):
    tx = chain.tx(OPERATORS[i], create_msg(i, f"v{i}", bond, OPERATORS[i]))
    if raw is not None:
        raw.append(tx)
    return chain.block([tx])


def holds(chain: Node) -> None:
    assert chain.invariant_violations(MINTED) == []


def test_a_created_validator_joins_with_power_from_its_bond_in_the_block_it_was_created(chain):
    sent: list[bytes] = []
    response = create(chain, 0, 5 * UNIT, sent)
    assert [r.code for r in response.tx_results] == [0]
    assert updates(response) == [(consensus_key(0), 5)]
    record = next(v for v in chain.answer("/staking/validators")["validators"] if v["moniker"] == "v0")
    assert record == {
        "address": consensus_address(consensus_key(0)),
        "pub_key": base64.b64encode(consensus_key(0)).decode(),
        "operator": OPERATORS[0].address,
        "moniker": "v0",
        "jailed": False,
        "power": 5,
        "liveness": {"counter": 0, "missed": 0},
    }
    assert chain.balance(OPERATORS[0].address) == FUNDS - 5 * UNIT - apphelpers.fee_of(sent[0])
    assert updates(chain.block()) == []  # nothing changed since
    holds(chain)


def test_power_follows_bonds_and_unbonds_and_drops_to_zero_below_the_minimum(chain):
    create(chain, 0, 5 * UNIT)
    assert updates(chain.block([chain.tx(OPERATORS[0], MsgBond(3 * UNIT))])) == [(consensus_key(0), 8)]
    assert updates(chain.block([chain.tx(OPERATORS[0], MsgUnbond(UNIT // 2))])) == [(consensus_key(0), 7)]
    assert updates(chain.block([chain.tx(OPERATORS[0], MsgUnbond(6 * UNIT))])) == [(consensus_key(0), 0)]
    holds(chain)


def test_only_the_max_validators_most_powerful_are_in_the_set_ties_by_address(chain):
    """max_validators is 3 and the genesis validator has power 10: two places for three newcomers
    of power 4, 6 and 4; of the two 4s, the lower consensus address gets in."""
    response = chain.block(
        [
            chain.tx(OPERATORS[0], create_msg(0, "v0", 4 * UNIT, OPERATORS[0])),
            chain.tx(OPERATORS[1], create_msg(1, "v1", 6 * UNIT, OPERATORS[1])),
            chain.tx(OPERATORS[2], create_msg(2, "v2", 4 * UNIT, OPERATORS[2])),
        ]
    )
    fours = sorted([0, 2], key=lambda i: consensus_address(consensus_key(i)))
    assert sorted(updates(response)) == sorted([(consensus_key(1), 6), (consensus_key(fours[0]), 4)])
    # the one left out gets in once it outweighs the weakest
    late = fours[1]
    assert sorted(updates(chain.block([chain.tx(OPERATORS[late], MsgBond(UNIT))]))) == sorted(
        [(consensus_key(late), 5), (consensus_key(fours[0]), 0)]
    )
    holds(chain)


def test_a_validator_that_leaves_goes_to_power_zero_and_its_operator_may_come_back_with_a_new_key(chain):
    create(chain, 0, 5 * UNIT)
    assert updates(chain.block([chain.tx(OPERATORS[0], MsgLeaveValidator())])) == [(consensus_key(0), 0)]
    assert chain.answer("/staking/stake", OPERATORS[0].address.encode())["bonded"] == str(5 * UNIT)  # still bonded
    again = chain.block([chain.tx(OPERATORS[0], create_msg(9, "v0 again", 0, OPERATORS[0]))])
    assert [r.code for r in again.tx_results] == [0] and updates(again) == [(consensus_key(9), 5)]
    holds(chain)


def test_edit_renames_only_the_signers_validator(chain):
    create(chain, 0, 5 * UNIT)
    chain.block([chain.tx(OPERATORS[0], MsgEditValidator("renamed"))])
    assert any(v["moniker"] == "renamed" for v in chain.answer("/staking/validators")["validators"])
    raw = chain.tx(OPERATORS[1], MsgEditValidator("nobody"))
    apphelpers.assert_rejected_without_state_change(
        chain, OPERATORS[1], raw, errors.NotFound.code, "operates no validator", MINTED
    )


@pytest.mark.parametrize(
    ("case", "code", "log_part"),
    [
        ("second_validator", errors.InvalidMessage.code, "already operates a validator"),
        ("key_taken", errors.InvalidMessage.code, "is taken (keys are never reused)"),
        ("key_not_theirs", errors.Unauthorized.code, "proof of possession does not verify"),
        ("below_minimum", errors.InsufficientStake.code, f"a validator needs at least {2 * UNIT}"),
        ("bond_above_balance", errors.InsufficientFunds.code, ""),
    ],
)
def test_a_validator_that_may_not_be_created_is_refused_and_changes_nothing(chain, case, code, log_part):
    create(chain, 0, 5 * UNIT)
    msg = {
        "second_validator": (OPERATORS[0], create_msg(5, "twice", UNIT, OPERATORS[0])),
        # its holder moving the key to another operator: still taken
        "key_taken": (OPERATORS[1], create_msg(0, "copycat", 5 * UNIT, OPERATORS[1])),
        # front-running: another's key, with the proof its holder made for itself (seen in the mempool)
        "key_not_theirs": (OPERATORS[1], create_msg(6, "thief", 5 * UNIT, OPERATORS[1], OPERATORS[2].address)),
        "below_minimum": (OPERATORS[1], create_msg(1, "small", UNIT, OPERATORS[1])),
        "bond_above_balance": (OPERATORS[1], create_msg(1, "rich", 2 * FUNDS, OPERATORS[1])),
    }[case]
    raw = chain.tx(msg[0], msg[1])
    apphelpers.assert_rejected_without_state_change(chain, msg[0], raw, code, log_part, MINTED)


def test_a_malformed_consensus_key_or_proof_of_possession_is_refused_at_decoding():
    good = create_msg(0, "x", 1, OPERATORS[0]).to_json()
    assert MsgCreateValidator.from_json(good) == create_msg(0, "x", 1, OPERATORS[0])
    with pytest.raises(ValueError, match="32-byte ed25519 public key"):
        MsgCreateValidator.from_json({**good, "pub_key": base64.b64encode(b"short").decode()})
    with pytest.raises(ValueError, match="printable"):
        MsgCreateValidator.from_json({**good, "moniker": "a\nb"})
    with pytest.raises(ValueError, match="64-byte ed25519 signature"):
        MsgCreateValidator.from_json({**good, "possession": base64.b64encode(b"\x01" * 63).decode()})
    with pytest.raises(ValueError, match="missing fields \\['possession'\\]"):
        MsgCreateValidator.from_json({k: v for k, v in good.items() if k != "possession"})


def test_the_same_blocks_give_the_same_updates_and_app_hash_on_every_validator(tmp_path: Path):
    """Determinism: two apps fed the same blocks agree on every update and every app hash."""
    nodes = []
    for name in ("a", "b"):
        node = Node(tmp_path / f"{name}.db")
        node.init(
            AppGenesis(
                accounts=tuple(GenesisAccount(k.address, FUNDS) for k in OPERATORS),
                staking=STAKING,
            )
        )
        nodes.append(node)
    txs = [
        [apphelpers.signed_tx(OPERATORS[i], 0, create_msg(i, f"v{i}", (i + 2) * UNIT, OPERATORS[i]))] for i in range(4)
    ]
    seen = [[(updates(n.block(t)), n.info().last_block_app_hash) for t in txs] for n in nodes]
    assert seen[0] == seen[1]
    assert sorted([u for u, _ in seen[0]][-1]) == sorted([(consensus_key(3), 5), (consensus_key(0), 0)])  # top 3 of 4


def duplicate_vote(key: bytes, height: int):
    from tendermint.abci import types_pb2 as abci

    evidence = abci.Misbehavior(type=abci.DUPLICATE_VOTE, height=height, total_voting_power=100)
    evidence.validator.address = hashlib.sha256(key).digest()[:20]
    evidence.validator.power = 5
    return evidence


def test_a_double_signer_among_others_is_removed_once_and_its_operator_never_returns(chain):
    create(chain, 0, 5 * UNIT)
    response = chain.block(misbehavior=[duplicate_vote(consensus_key(0), chain.height)])
    assert updates(response) == [(consensus_key(0), 0)]  # one update, from the end of the block
    assert updates(chain.block(misbehavior=[duplicate_vote(consensus_key(0), chain.height - 1)])) == []
    raw = chain.tx(OPERATORS[0], create_msg(7, "back again", 0, OPERATORS[0]))
    apphelpers.assert_rejected_without_state_change(
        chain, OPERATORS[0], raw, errors.InvalidMessage.code, "jailed for a duplicate vote", MINTED
    )


def test_evidence_against_a_validator_that_left_slashes_it_but_sends_no_second_removal(chain):
    """The attack that halted the chain: leave at H, evidence of a vote before arrives later.
    CometBFT no longer has the validator: a removal would fail the block on every validator."""
    create(chain, 0, 5 * UNIT)
    assert updates(chain.block([chain.tx(OPERATORS[0], MsgLeaveValidator())])) == [(consensus_key(0), 0)]
    bonded = int(chain.answer("/staking/stake", OPERATORS[0].address.encode())["bonded"])
    response = chain.block(misbehavior=[duplicate_vote(consensus_key(0), chain.height - 1)])
    assert updates(response) == []
    assert int(chain.answer("/staking/stake", OPERATORS[0].address.encode())["bonded"]) < bonded  # slashed all the same
    holds(chain)


def test_the_last_validator_leaving_leaves_the_set_as_it_is_until_another_has_the_stake(chain):
    """The genesis validator alone: its operator leaves; an empty set would halt CometBFT, so no
    update is sent — until a newcomer can take over, then both changes go together."""
    left = chain.block([chain.tx(GENESIS_OPERATOR, MsgLeaveValidator())])
    assert [r.code for r in left.tx_results] == [0] and updates(left) == []
    assert sorted(updates(create(chain, 0, 5 * UNIT))) == sorted([(GENESIS_KEY, 0), (consensus_key(0), 5)])
    holds(chain)


def test_no_validator_gets_more_power_than_cometbft_can_take(tmp_path: Path):
    from haca.chain.modules.staking.keeper import MAX_VALIDATOR_POWER

    node = Node(tmp_path / "huge.db")
    huge = 10**30
    init = node.init(
        AppGenesis(
            accounts=(GenesisAccount(OPERATORS[0].address, FUNDS),),
            staking=StakingParams(power_unit=1, min_validator_stake=1),
            bonds=((GENESIS_OPERATOR.address, huge),),
            validators=((base64.b64encode(GENESIS_KEY).decode(), GENESIS_OPERATOR.address),),
        )
    )
    assert [u.power for u in init.validators] == [MAX_VALIDATOR_POWER]
    node.close()


# --- liveness: downtime jailing ----------------------------------------------------------------

WINDOW, JAIL = 10, 5
LIVENESS = dataclasses.replace(STAKING, signed_blocks_window=WINDOW, min_signed_bps=5000, downtime_jail_blocks=JAIL)
GENESIS_ADDRESS = hashlib.sha256(GENESIS_KEY).digest()[:20]
V0_ADDRESS = hashlib.sha256(consensus_key(0)).digest()[:20]


@pytest.fixture
def live_chain(tmp_path: Path):
    node = genesis_chain(tmp_path, LIVENESS)
    create(node, 0, 5 * UNIT)  # v0 joins with power 5
    yield node
    node.close()


def commit(v0_signed: bool) -> list[tuple[bytes, bool]]:
    return [(GENESIS_ADDRESS, True), (V0_ADDRESS, v0_signed)]


def events_of(response, kind: str) -> list[dict[str, str]]:
    return [{a.key: a.value for a in e.attributes} for e in response.events if e.type == kind]


def v0_record(chain: Node) -> dict:
    return next(v for v in chain.answer("/staking/validators")["validators"] if v["moniker"] == "v0")


def test_a_validator_missing_more_than_its_share_of_the_window_is_jailed_then_unjails_after_its_time(live_chain):
    chain = live_chain
    for _ in range(WINDOW - 1):  # a full window must be seen before anyone is judged
        assert updates(chain.block(votes=commit(False))) == []
    assert v0_record(chain)["liveness"] == {"counter": WINDOW - 1, "missed": WINDOW - 1}
    response = chain.block(votes=commit(False))
    assert updates(response) == [(consensus_key(0), 0)]
    (jail,) = events_of(response, "jail")
    until = chain.height + JAIL
    assert jail == {
        "validator": V0_ADDRESS.hex(),
        "operator": OPERATORS[0].address,
        "reason": "downtime",
        "missed": str(WINDOW),
        "window": str(WINDOW),
        "until": str(until),
    }
    assert v0_record(chain)["jailed"] is True and v0_record(chain)["jailed_until"] == until
    bonded = chain.answer("/staking/stake", OPERATORS[0].address.encode())["bonded"]
    assert bonded == str(5 * UNIT)  # jailed, not slashed
    early = chain.tx(OPERATORS[0], MsgUnjail())
    apphelpers.assert_rejected_without_state_change(
        chain, OPERATORS[0], early, errors.InvalidMessage.code, f"jailed until height {until}", MINTED
    )
    while chain.height < until - 1:
        chain.block(votes=[(GENESIS_ADDRESS, True)])
    response = chain.block([chain.tx(OPERATORS[0], MsgUnjail())], votes=[(GENESIS_ADDRESS, True)])
    assert [r.code for r in response.tx_results] == [0]
    assert updates(response) == [(consensus_key(0), 5)]  # back with the power of its bond
    assert v0_record(chain)["liveness"] == {"counter": 0, "missed": 0}  # judged afresh
    holds(chain)


def test_a_validator_missing_exactly_its_allowed_share_stays_in_the_set(live_chain):
    chain = live_chain
    for i in range(3 * WINDOW):
        assert updates(chain.block(votes=commit(i % 2 == 0))) == []  # half missed: allowed
    assert v0_record(chain)["jailed"] is False
    assert v0_record(chain)["liveness"] == {"counter": 3 * WINDOW, "missed": WINDOW // 2}


def test_a_validator_that_is_not_jailed_or_was_jailed_for_a_duplicate_vote_cannot_unjail(live_chain):
    chain = live_chain
    raw = chain.tx(OPERATORS[0], MsgUnjail())
    apphelpers.assert_rejected_without_state_change(
        chain, OPERATORS[0], raw, errors.InvalidMessage.code, "is not jailed", MINTED
    )
    for _ in range(WINDOW):
        chain.block(votes=commit(False))
    assert v0_record(chain)["jailed"] is True  # for downtime...
    response = chain.block(misbehavior=[duplicate_vote(consensus_key(0), chain.height - 1)])
    assert [e["reason"] for e in events_of(response, "slash")] == ["duplicate_vote"]  # ...no shield from evidence
    for _ in range(JAIL):
        chain.block()
    raw = chain.tx(OPERATORS[0], MsgUnjail())
    apphelpers.assert_rejected_without_state_change(
        chain, OPERATORS[0], raw, errors.InvalidMessage.code, "jailed for a duplicate vote: for good", MINTED
    )
    holds(chain)


def test_liveness_is_counted_the_same_on_every_validator(tmp_path: Path):
    """Determinism: two apps fed the same blocks and commits agree on every jail and app hash."""
    chains = [genesis_chain(tmp_path / name, LIVENESS) for name in ("a", "b")]
    seen = []
    for node in chains:
        create(node, 0, 5 * UNIT)
        seen.append(
            [(updates(node.block(votes=commit(i % 3 == 0))), node.info().last_block_app_hash) for i in range(15)]
        )
        node.close()
    assert seen[0] == seen[1]
    assert any(u == [(consensus_key(0), 0)] for u, _ in seen[0])  # missed 2 of 3: jailed


def test_a_validator_jailed_for_downtime_cannot_leave_and_come_back_with_a_new_key_before_its_time(live_chain):
    chain = live_chain
    for _ in range(WINDOW):
        chain.block(votes=commit(False))
    until = v0_record(chain)["jailed_until"]
    raw = chain.tx(OPERATORS[0], MsgLeaveValidator())
    apphelpers.assert_rejected_without_state_change(
        chain, OPERATORS[0], raw, errors.InvalidMessage.code, f"jailed until height {until}", MINTED
    )
    while chain.height < until:
        chain.block()
    assert [r.code for r in chain.block([chain.tx(OPERATORS[0], MsgLeaveValidator())]).tx_results] == [0]
    holds(chain)


def test_evidence_against_a_validator_its_operator_left_also_jails_the_one_it_runs_now(chain):
    """Leave A, create B, then evidence of A's duplicate vote: the operator is tombstoned and B,
    its validator now, leaves the set too; later evidence against B still slashes."""
    create(chain, 0, 5 * UNIT)
    chain.block([chain.tx(OPERATORS[0], MsgLeaveValidator())])
    assert updates(chain.block([chain.tx(OPERATORS[0], create_msg(8, "b", 0, OPERATORS[0]))])) == [
        (consensus_key(8), 5)
    ]
    response = chain.block(misbehavior=[duplicate_vote(consensus_key(0), chain.height - 3)])
    assert updates(response) == [(consensus_key(8), 0)]
    bonded = int(chain.answer("/staking/stake", OPERATORS[0].address.encode())["bonded"])
    response = chain.block(misbehavior=[duplicate_vote(consensus_key(8), chain.height - 1)])
    assert [e["reason"] for e in events_of(response, "slash")] == ["duplicate_vote"]
    assert int(chain.answer("/staking/stake", OPERATORS[0].address.encode())["bonded"]) < bonded
    holds(chain)
