"""A validator run twice with the same key double-signs: evidence lands, it is slashed and leaves
the set, the chain goes on.

val3 is run a second time (`haca.devnet.evidence.start_twin`: a copy of its home with the same
priv_validator_key.json, reset signing state, fresh node key and data). Waiting almost no time
for proposals, the twin votes nil where val3 votes for the block; CometBFT on the other
validators detects the conflicting votes itself and commits DuplicateVoteEvidence, which the
app's staking module turns into a slash (burned) and a validator update with power 0."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from haca.client.rpc import CometRpc
from haca.devnet.accounts import operator_key
from haca.devnet.evidence import start_twin

from .helpers import assert_devnet_supply_holds, wait_height

pytestmark = pytest.mark.devnet
EVIDENCE_TIMEOUT = 120.0  # the twin block-syncs from genesis, then double-signs within a few heights


def _events(rpc: CometRpc, height: int, kind: str) -> list[dict[str, str]]:
    result = rpc.call("block_results", height=str(height))
    events = result.get("finalize_block_events") or []
    return [{a["key"]: a["value"] for a in e["attributes"]} for e in events if e["type"] == kind]


def _duplicate_votes(rpc: CometRpc, height: int) -> list[dict[str, Any]]:
    evidence = rpc.block(height)["block"]["evidence"]["evidence"] or []
    return [e["value"] for e in evidence if e["type"] == "tendermint/DuplicateVoteEvidence"]


def _wait_slash(
    rpc: CometRpc, start: int, twin_alive: Callable[[], bool]
) -> tuple[int, list[dict[str, Any]], dict[str, str]]:
    """The first height from `start` whose block carries duplicate-vote evidence, that evidence
    and the app's slash event at that height."""
    deadline = time.monotonic() + EVIDENCE_TIMEOUT
    height = start
    while time.monotonic() < deadline:
        assert twin_alive(), "the twin exited"
        while height <= rpc.height():
            evidence = _duplicate_votes(rpc, height)
            if evidence:
                slashes = _events(rpc, height, "slash")
                assert len(slashes) == 1, slashes
                return height, evidence, slashes[0]
            height += 1
        time.sleep(0.3)
    raise AssertionError(f"no duplicate-vote evidence in blocks {start}..{height - 1}")


def test_validator_run_twice_is_slashed_and_leaves_the_set(devnet):
    rpcs = [c.rpc for c in devnet.clients()]
    honest, rpc = rpcs[:3], rpcs[0]
    val3 = devnet.net.load().node("val3")
    key = json.loads((Path(val3.home) / "cometbft" / "config" / "priv_validator_key.json").read_text())
    address = key["address"].upper()
    operator = operator_key("val3").address
    bps = int(devnet.client.query("/staking/params")["double_sign_slash_bps"])
    bond = int(devnet.client.query("/staking/stake", operator.encode())["bonded"])
    others = {
        n.name: int(devnet.client.query("/staking/stake", operator_key(n.name).address.encode())["bonded"])
        for n in devnet.net.load().nodes
        if n.name != "val3"
    }
    assert bps > 0 and bond > 0
    assert address in {v["address"] for v in rpc.validators(rpc.height())}

    start = rpc.height()
    twin = start_twin(devnet.net, "val3")
    try:
        height, evidence, slash = _wait_slash(rpc, start, twin.alive)
    finally:
        twin.stop()

    # CometBFT's own evidence: two votes of val3's key for one height, round and type, different blocks.
    assert {e["vote_a"]["validator_address"] for e in evidence} == {address}
    first = evidence[0]
    a, b = first["vote_a"], first["vote_b"]
    assert (a["height"], a["round"], a["type"]) == (b["height"], b["round"], b["type"])
    assert a["block_id"]["hash"] != b["block_id"]["hash"]

    # The app: slashed double_sign_slash_bps of the bond (burned), jailed.
    slashed = bond * bps // 10_000
    assert slash == {
        "validator": address.lower(),
        "operator": operator,
        "height": str(first["vote_a"]["height"]),
        "slashed": str(slashed),
        "reason": "duplicate_vote",
    }
    assert int(devnet.client.query("/staking/stake", operator.encode(), height)["bonded"]) == bond - slashed
    burned = [int(devnet.client.query("/bank/supply", b"", h)["burned"]) for h in (height - 1, height)]
    assert burned[1] - burned[0] == slashed  # no txs in the test: the block burned the slash only
    records = {v["address"].upper(): v for v in devnet.client.query("/staking/validators", b"", height)["validators"]}
    assert records[address]["jailed"] is True and records[address]["operator"] == operator
    assert [r["jailed"] for addr, r in records.items() if addr != address] == [False] * 3
    for name, bonded in others.items():
        assert int(devnet.client.query("/staking/stake", operator_key(name).address.encode())["bonded"]) == bonded

    # CometBFT applies the update (power 0) two heights later: val3 is out of the set.
    wait_height(rpc, height + 2, timeout=60)
    assert address in {v["address"] for v in rpc.validators(height)}
    after = {v["address"] for v in rpc.validators(height + 2)}
    assert address not in after and len(after) == 3

    # The chain goes on with the three others alone: val3 stopped too.
    devnet.net.stop("val3")
    resumed = max(r.height() for r in honest)
    for r in honest:
        wait_height(r, resumed + 5, timeout=60)
    latest = rpc.height()
    assert address not in {v["address"] for v in rpc.validators(latest)}
    # Later evidence of the same fault (other heights, other reporters) slashes no more.
    assert not [s for h in range(height + 1, latest + 1) for s in _events(rpc, h, "slash")]
    assert int(devnet.client.query("/staking/stake", operator.encode())["bonded"]) == bond - slashed
    assert_devnet_supply_holds(devnet)
