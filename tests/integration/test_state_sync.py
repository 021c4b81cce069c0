"""Issue 24, part 3, on a live devnet: a fifth validator joins a running 4-validator chain past
height 500 by state sync (`haca validator join`: a light-client-verified trust header, CometBFT
fetches a peer's snapshot, the app restores it and the app hash must be the verified one), never
replaying from genesis; its operator bonds and creates it and it signs within 60 s; app hashes agree
from there; it leaves and the chain goes on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from haca.chain.home import ValidatorHome
from haca.chain.supervisor import identity
from haca.client.rpc import CometRpc
from haca.devnet.accounts import VALIDATOR_BOND
from haca.types.staking import MsgLeaveValidator
from tests.integration.helpers import assert_devnet_supply_holds, wait_height
from tests.integration.test_validator_set import haca_cli, in_set, signers, wait_for

pytestmark = [pytest.mark.devnet, pytest.mark.slow]

JOIN_AT = 500  # the height: state sync from there beats a replay


def test_a_validator_joins_past_height_500_by_state_sync_and_signs(fast_devnet):
    devnet = fast_devnet
    net, chain = devnet.net, devnet.client
    wait_height(chain.rpc, JOIN_AT, timeout=600)
    record = net.add_validator("val4")
    joined = haca_cli(devnet, "validator", "join", "--validator-home", record.home)
    assert joined["trust_height"] >= JOIN_AT - 300 - 5
    started = time.monotonic()
    net.start("val4")
    fifth = CometRpc(f"http://127.0.0.1:{record.rpc_port}")
    wait_height(fifth, chain.rpc.height(), timeout=120)
    synced_in = time.monotonic() - started
    # restored from a snapshot: its app holds no state below the snapshot's height
    earliest = int(fifth.status()["sync_info"]["earliest_block_height"])
    assert earliest > JOIN_AT - 100, earliest  # its block store starts at the snapshot, not at 1
    log = (Path(record.home) / "logs").glob("*.log")
    assert any("snapshot_restored" in p.read_text(errors="replace") for p in log)

    address = identity(ValidatorHome(Path(record.home))).address.upper()
    created = haca_cli(
        devnet, "validator", "create", "--validator-home", record.home, "--moniker", "val4",
        "--self-bond", str(VALIDATOR_BOND), "--from", "dev5",
    )  # fmt: skip
    seconds = wait_for(lambda: address in signers(chain.rpc, chain.rpc.height()), 60, "the fifth validator signing")
    assert seconds < 60
    rpcs = [CometRpc(n.rpc) for n in net.load().nodes]
    top = min(r.height() for r in rpcs)
    for height in range(created["height"], top + 1):
        hashes = {r.commit(height)["signed_header"]["header"]["app_hash"] for r in rpcs}
        assert len(hashes) == 1, (height, hashes)

    left = chain.send_msgs(devnet.keys.get("dev5").key, (MsgLeaveValidator(),))
    wait_height(chain.rpc, left.height + 3)
    assert not in_set(chain.rpc, address)
    wait_height(chain.rpc, chain.rpc.height() + 3)  # the chain goes on with four
    assert_devnet_supply_holds(devnet)
    net.stop("val4")
    print(f"state sync: caught up {synced_in:.1f} s after start, signing {seconds:.1f} s after create")
