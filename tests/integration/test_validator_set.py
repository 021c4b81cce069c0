"""A validator joins a running 4-validator devnet by stake and leaves it (issue 24): a fifth
validator home replays the chain, its operator bonds and creates it, it signs blocks; app hashes
agree on all five; a client configured with the genesis set still verifies headers (its light
client follows the set change); the validator leaves and the chain goes on."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from haca.chain.home import ValidatorHome
from haca.chain.supervisor import identity
from haca.client.chain import ChainClient
from haca.client.errors import TxRejected
from haca.client.rpc import CometRpc
from haca.devnet.accounts import VALIDATOR_BOND
from haca.types import codes
from haca.types.staking import MsgCreateValidator, MsgLeaveValidator
from tests.integration.helpers import assert_devnet_supply_holds, wait_height

pytestmark = [pytest.mark.devnet, pytest.mark.slow]


def signers(rpc: CometRpc, height: int) -> set[str]:
    commit = rpc.commit(height)["signed_header"]["commit"]
    return {s["validator_address"].upper() for s in commit["signatures"] if s["block_id_flag"] == 2}


def in_set(rpc: CometRpc, address: str) -> bool:
    return any(v["address"].upper() == address for v in rpc.validators(rpc.height()))


def wait_for(condition: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.3)
    return time.monotonic() - started


def haca_cli(devnet: Any, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "haca.cli.main", "--home", str(devnet.home), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def validator_of(devnet, operator: str) -> dict:
    return next(v for v in devnet.client.query("/staking/validators")["validators"] if v["operator"] == operator)


def test_a_fifth_validator_joins_by_stake_signs_and_leaves_and_clients_follow_the_set(devnet):
    net, chain = devnet.net, devnet.client
    operator = devnet.keys.get("dev5").key
    record = net.add_validator("val4")
    net.start("val4")
    fifth = CometRpc(f"http://127.0.0.1:{record.rpc_port}")
    wait_height(fifth, chain.rpc.height(), timeout=90)  # replayed the chain from genesis
    address = identity(ValidatorHome(Path(record.home))).address.upper()
    assert not in_set(chain.rpc, address)

    created = haca_cli(
        devnet, "validator", "create", "--validator-home", record.home, "--moniker", "val4",
        "--self-bond", str(VALIDATOR_BOND), "--from", "dev5",
    )  # fmt: skip
    joined = created["height"]
    seconds = wait_for(lambda: address in signers(chain.rpc, chain.rpc.height()), 60, "the fifth validator signing")
    assert seconds < 60
    listed = {v["operator"]: v for v in haca_cli(devnet, "validator", "list")["validators"]}
    assert listed[operator.address]["power"] == 10 and listed[operator.address]["moniker"] == "val4"
    # CometBFT's commits reach the app's liveness count under the same consensus address
    wait_for(lambda: validator_of(devnet, operator.address)["liveness"]["counter"] >= 3, 30, "its signatures counted")
    live = validator_of(devnet, operator.address)["liveness"]
    assert live["missed"] < live["counter"] and validator_of(devnet, operator.address)["jailed"] is False

    # app hashes agree on all five from the block it joined in
    rpcs = [CometRpc(n.rpc) for n in net.load().nodes]
    top = min(r.height() for r in rpcs)
    for height in range(joined, top + 1):
        hashes = {r.commit(height)["signed_header"]["header"]["app_hash"] for r in rpcs}
        assert len(hashes) == 1, (height, hashes)

    # a client trusting only the genesis set verifies the latest header across the change
    client = ChainClient([n.rpc for n in net.load().nodes], devnet.config.chain_id, devnet.config.validators)
    try:
        assert client.verify_latest() >= joined + 2
        assert client.proven_balance(operator.address) == chain.balance(operator.address)
    finally:
        client.close()

    left = chain.send_msgs(operator, (MsgLeaveValidator(),))
    wait_height(chain.rpc, left.height + 3)
    assert not in_set(chain.rpc, address)
    after = chain.rpc.height()
    wait_height(chain.rpc, after + 3)  # the chain goes on with four
    assert address not in signers(chain.rpc, after + 3)
    fresh = ChainClient([net.load().nodes[0].rpc], devnet.config.chain_id, devnet.config.validators)
    try:
        assert fresh.verify_latest() >= after + 3  # bisected from genesis through both changes
    finally:
        fresh.close()
    assert_devnet_supply_holds(devnet)
    net.stop("val4")


def test_creating_a_validator_with_another_validators_key_is_refused(devnet):
    """The consensus key of a genesis validator cannot be claimed by another operator: it cannot
    prove it holds the key (and a key registered once is never registered again)."""
    genesis_key = base64.b64decode(identity(ValidatorHome(Path(devnet.net.load().nodes[0].home))).pub_key["value"])
    with pytest.raises(TxRejected, match="proof of possession does not verify") as refused:
        devnet.client.send_msgs(devnet.keys.get("dev6").key, (MsgCreateValidator(genesis_key, "thief", 0, bytes(64)),))
    assert refused.value.abci_code == codes.UNAUTHORIZED
