"""Governance: genesis names the authorities; their MsgUpdateParams changes a module's params;
from anyone else, or with bad params, it is refused with its code and changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from haca.chain import errors
from haca.chain.genesis import AppGenesis, GenesisAccount, parse_app_genesis
from haca.chain.modules.inference.keeper import InferenceParams
from haca.crypto.keys import PrivateKey
from haca.types.gov import MsgUpdateParams
from haca.types.tx import decode_tx
from tests.unit.chain import apphelpers
from tests.unit.chain.apphelpers import FEES, Node

AUTHORITY, MALLORY = PrivateKey.from_seed("gov-authority"), PrivateKey.from_seed("gov-mallory")
GENESIS = AppGenesis(
    fees=FEES,
    accounts=(GenesisAccount(AUTHORITY.address, 10**12), GenesisAccount(MALLORY.address, 10**12)),
    authorities=(AUTHORITY.address,),
)


@pytest.fixture
def chain(tmp_path: Path):
    node = Node(tmp_path / "state.db")
    node.init(GENESIS)
    node.block()
    yield node
    node.close()


def rejected(chain: Node, key: PrivateKey, msg: MsgUpdateParams, code: int, log_part: str) -> None:
    raw = chain.tx(key, msg)
    apphelpers.assert_rejected_without_state_change(chain, key, raw, code, log_part, GENESIS.total_supply)


def test_genesis_names_the_authorities(chain) -> None:
    assert chain.answer("/gov/authorities") == {"authorities": [AUTHORITY.address]}


def test_an_authority_changes_some_params_of_a_module_and_the_rest_stay(chain) -> None:
    result = chain.deliver(AUTHORITY, MsgUpdateParams("inference", {"withdraw_delay": 40, "settlement_fee": "7"}))
    assert result.code == 0, result.log
    expected = {**InferenceParams().to_json(), "withdraw_delay": 40, "settlement_fee": 7}
    assert chain.answer("/inference/params") == expected
    (event,) = [e for e in result.events if e.type == "update_params"]
    assert {a.key: a.value for a in event.attributes}["withdraw_delay"] == "40"
    assert chain.deliver(AUTHORITY, MsgUpdateParams("registry", {"price_delay": 3})).code == 0
    assert chain.answer("/registry/params") == {"price_delay": 3}
    assert chain.deliver(AUTHORITY, MsgUpdateParams("auth", {"tx_fee_per_byte": 3})).code == 0
    assert chain.answer("/auth/params") == {"tx_fee_base": FEES.tx_fee_base, "tx_fee_per_byte": 3}


def test_a_non_authority_is_refused_with_unauthorized_and_nothing_changes(chain) -> None:
    rejected(chain, MALLORY, MsgUpdateParams("inference", {"settlement_fee_bps": 0}), errors.Unauthorized.code,
             "not a governance authority")  # fmt: skip
    assert chain.answer("/inference/params") == InferenceParams().to_json()


@pytest.mark.parametrize(
    ("msg", "log_part"),
    [
        (MsgUpdateParams("inference", {"settlement_fee_bps": 10_001}), "settlement_fee_bps must be at most 10000"),
        (MsgUpdateParams("inference", {"no_such_param": 1}), "unknown params ['no_such_param']"),
        (MsgUpdateParams("inference", {"withdraw_delay": -1}), "withdraw_delay"),
        (MsgUpdateParams("nowhere", {"x": 1}), "no module 'nowhere'"),
        (MsgUpdateParams("bank", {"x": 1}), "module 'bank' has no params"),
    ],
)
def test_bad_params_from_an_authority_are_refused_and_change_nothing(chain, msg, log_part) -> None:
    rejected(chain, AUTHORITY, msg, errors.InvalidMessage.code, log_part)


def test_a_chain_without_authorities_refuses_every_governance_message(tmp_path: Path) -> None:
    node = Node(tmp_path / "state.db")
    node.init(AppGenesis(fees=FEES, accounts=GENESIS.accounts))
    node.block()
    raw = node.tx(AUTHORITY, MsgUpdateParams("registry", {"price_delay": 1}))
    apphelpers.assert_rejected_without_state_change(
        node, AUTHORITY, raw, errors.Unauthorized.code, "not a governance authority", GENESIS.total_supply
    )
    node.close()


def test_the_message_round_trips_through_the_tx_codec(chain) -> None:
    raw = chain.tx(AUTHORITY, MsgUpdateParams("inference", {"revoke_delay": 9}))
    (msg,) = decode_tx(raw).msgs
    assert msg == MsgUpdateParams("inference", {"revoke_delay": 9})


@pytest.mark.parametrize("name", ["withdraw_delay", "revoke_delay"])
def test_a_delay_of_zero_is_refused_by_governance_and_genesis(chain, name) -> None:
    rejected(chain, AUTHORITY, MsgUpdateParams("inference", {name: 0}), errors.InvalidMessage.code,
             f"{name} must be at least 1")  # fmt: skip
    doc = GENESIS.to_json()
    doc["params"]["inference"][name] = "0"
    with pytest.raises(errors.InvalidGenesis, match=f"{name} must be at least 1"):
        parse_app_genesis(json.dumps(doc).encode())
