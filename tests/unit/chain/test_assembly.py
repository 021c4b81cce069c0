"""A genesis made by several operators (issue 24, part 2): each signs its validator's entry; the
collector takes only entries their operators signed, for this chain, paid from their own genesis
balance, with enough for power and nothing twice; the supply does not change; and the result
starts an app whose genesis set is those validators with power from their bonds."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from haca.chain.assembly import GenesisAssemblyError, collect_genesis, draft_genesis
from haca.chain.genesis import AppGenesis, GenesisAccount, parse_app_genesis
from haca.chain.modules.staking.keeper import StakingParams
from haca.crypto.consensus import sign_possession
from haca.crypto.keys import PrivateKey
from haca.types.staking import GenesisValidator
from tests.unit.chain.apphelpers import Node

CHAIN_ID = "haca-assembly"
UNIT = 10**6
OPERATORS = [PrivateKey.from_seed(f"assembly operator {i}") for i in range(3)]
OUTSIDER = PrivateKey.from_seed("assembly outsider")
BALANCE = 100 * UNIT
TEMPLATE = {"consensus_params": {"block": {"max_bytes": "22020096"}}}


def draft() -> dict:
    app = AppGenesis(
        accounts=tuple(GenesisAccount(k.address, BALANCE) for k in OPERATORS),
        staking=StakingParams(power_unit=UNIT, min_validator_stake=5 * UNIT),
    )
    return draft_genesis(TEMPLATE, CHAIN_ID, app, "2026-12-07T10:00:00.000000Z")


def entry(i: int, bond: int = 10 * UNIT, key: PrivateKey | None = None, **changes) -> tuple[GenesisValidator, bytes]:
    operator = OPERATORS[i]
    pub_key, possession = sign_possession(
        hashlib.sha256(f"consensus {i}".encode()).digest(), CHAIN_ID, operator.address
    )
    value = GenesisValidator(
        CHAIN_ID,
        operator.address,
        pub_key,
        f"val{i}",
        bond,
        hashlib.sha256(f"node {i}".encode()).hexdigest()[:40],
        f"10.0.0.{i + 1}:26656",
        possession,
    )
    value = dataclasses.replace(value, **changes)
    return value, value.sign(key or operator)


def test_three_operators_make_a_genesis_whose_set_is_theirs_and_whose_supply_is_unchanged(tmp_path: Path):
    entries = [entry(0, 10 * UNIT), entry(1, 20 * UNIT), entry(2, 30 * UNIT)]
    genesis, peers = collect_genesis(draft(), entries)
    assert peers == [f"{e.node_id}@10.0.0.{i + 1}:26656" for i, (e, _) in enumerate(entries)]
    powers = {v["name"]: int(v["power"]) for v in genesis["validators"]}
    assert powers == {"val0": 10, "val1": 20, "val2": 30}
    app_state = genesis["app_state"]
    assert {a["address"]: int(a["balance"]) for a in app_state["accounts"]} == {
        k.address: BALANCE - (i + 1) * 10 * UNIT for i, k in enumerate(OPERATORS)
    }
    total = sum(int(a["balance"]) for a in app_state["accounts"]) + sum(
        int(b["amount"]) for b in app_state["staking"]["bonds"]
    )
    assert total == 3 * BALANCE
    node = Node(tmp_path / "state.db")
    init = node.init(parse_app_genesis(json.dumps(app_state).encode()), CHAIN_ID)
    by_key = {base64.b64encode(bytes(u.pub_key.ed25519)).decode(): u.power for u in init.validators}
    assert by_key == {v["pub_key"]["value"]: int(v["power"]) for v in genesis["validators"]}
    node.close()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("signed_by_another", "not by its operator"),
        ("other_chain", "for chain 'other-chain'"),
        ("bond_above_balance", f"its genesis balance is {BALANCE}"),
        ("below_minimum", "below the minimum validator stake"),
        ("same_key_twice", "is in another entry"),
        ("key_not_theirs", "proof of possession does not verify"),
        ("no_entries", "at least one validator"),
    ],
)
def test_an_entry_that_cannot_be_in_the_genesis_is_refused_naming_why(case: str, message: str):
    entries = {
        "signed_by_another": [entry(0, key=OUTSIDER)],
        "other_chain": [entry(0, chain_id="other-chain")],
        "bond_above_balance": [entry(0, bond=BALANCE + 1)],
        "below_minimum": [entry(0, bond=5 * UNIT - 1)],
        # its holder's key listed twice (the proof made for the second operator): one entry only
        "same_key_twice": [
            entry(0),
            entry(
                1,
                pub_key=entry(0)[0].pub_key,
                possession=sign_possession(hashlib.sha256(b"consensus 0").digest(), CHAIN_ID, OPERATORS[1].address)[1],
            ),
        ],
        # another's key, with the proof its holder made for itself
        "key_not_theirs": [entry(1, pub_key=entry(0)[0].pub_key, possession=entry(0)[0].possession)],
        "no_entries": [],
    }[case]
    with pytest.raises(GenesisAssemblyError, match=message):
        collect_genesis(draft(), entries)


def test_an_entry_round_trips_through_json_and_its_fields_are_checked():
    value, _ = entry(0)
    assert GenesisValidator.from_json(value.to_json()) == value
    with pytest.raises(ValueError, match="node_id"):
        GenesisValidator.from_json({**value.to_json(), "node_id": "xyz"})
    with pytest.raises(ValueError, match="host:port"):
        GenesisValidator.from_json({**value.to_json(), "p2p": "10.0.0.1"})
