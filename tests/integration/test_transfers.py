"""200 transfers from 4 accounts on a real 4-validator devnet: agreement, invariants, replay."""

from __future__ import annotations

import json

import pytest
from tendermint.abci import types_pb2 as abci

from haca.chain.app import HacaApp
from haca.chain.store import CommitStore
from haca.client.rpc import b64
from haca.crypto.keys import PrivateKey

from .helpers import (
    app_hash_at,
    genesis_supply,
    module_accounts,
    signed_transfers,
    submit_parallel,
    supply_holds,
    wait_committed,
    wait_height,
)

pytestmark = pytest.mark.devnet
SENDERS = 4
PER_SENDER = 50


@pytest.fixture(scope="module")
def committed(devnet):
    """Submit 200 transfers (4 senders x 50, one validator each) and wait until all commit."""
    clients = devnet.clients()
    recipients = [devnet.keys.get(f"dev{i}").address for i in range(4, 8)]
    recipients.append(PrivateKey.from_seed("fresh recipient").address)
    batches = [
        (clients[i], signed_transfers(clients[i], devnet.keys.get(f"dev{i}").key, recipients, PER_SENDER))
        for i in range(SENDERS)
    ]
    hashes = submit_parallel(batches)
    heights = wait_committed(devnet.client, hashes)
    return {"hashes": hashes, "heights": heights, "recipients": recipients, "clients": clients}


def addresses(devnet, committed) -> list[str]:
    """Every funded genesis account (dev keys, node0, publisher) and every recipient."""
    return sorted({k.address for k in devnet.keys.list()} | set(committed["recipients"]) | set(module_accounts()))


def test_all_200_transfers_commit_with_code_zero(devnet, committed):
    assert len(committed["hashes"]) == SENDERS * PER_SENDER
    assert len(set(committed["hashes"])) == SENDERS * PER_SENDER
    for i in range(SENDERS):
        assert devnet.client.nonce(devnet.keys.get(f"dev{i}").address) == PER_SENDER


def test_validators_report_the_same_app_hash_at_every_height(devnet, committed):
    last = max(committed["heights"].values()) + 1
    for rpc in (c.rpc for c in committed["clients"]):
        wait_height(rpc, last)
    for height in range(1, last + 1):
        hashes = {app_hash_at(c.rpc, height) for c in committed["clients"]}
        assert len(hashes) == 1, f"validators disagree at height {height}: {hashes}"


def test_supply_invariant_holds_at_every_height_with_transfers(devnet, committed):
    minted = genesis_supply(devnet)
    for height in sorted(set(committed["heights"].values())):
        supply_holds(devnet.client, addresses(devnet, committed), minted, height)
    supply_holds(devnet.client, addresses(devnet, committed), minted)
    assert devnet.client.supply()["burned"] > 0


def test_replaying_committed_blocks_into_a_fresh_app_reproduces_every_app_hash(devnet, committed, tmp_path):
    genesis = devnet.genesis()
    rpc = devnet.client.rpc
    last = max(committed["heights"].values())
    wait_height(rpc, last + 1)
    app = HacaApp(CommitStore(tmp_path / "replay.db"))
    init = app.init_chain(
        abci.RequestInitChain(chain_id=genesis["chain_id"], app_state_bytes=json.dumps(genesis["app_state"]).encode())
    )
    assert init.app_hash.hex() == app_hash_at(rpc, 1).lower()
    for height in range(1, last + 1):
        answer = rpc.block(height)
        block, block_hash = answer["block"], bytes.fromhex(answer["block_id"]["hash"])
        txs = [b64(t) for t in block["data"]["txs"] or []]
        # The block hash CometBFT gives FinalizeBlock is the one RPC names the block by; the block's
        # last commit is the decided one (the app counts each validator's signatures in it).
        request = abci.RequestFinalizeBlock(height=height, txs=txs, hash=block_hash)
        signatures = (block.get("last_commit") or {}).get("signatures") or []
        if signatures:  # in the order of the previous block's set; an absent one names no address there
            voters = rpc.validators(height - 1)
            for signature, voter in zip(signatures, voters, strict=True):
                vote = request.decided_last_commit.votes.add(block_id_flag=int(signature["block_id_flag"]))
                vote.validator.address = bytes.fromhex(voter["address"])
        result = app.finalize_block(request)
        app.commit(abci.RequestCommit())
        assert result.app_hash.hex() == app_hash_at(rpc, height + 1).lower(), f"diverged at height {height}"
    assert app.store.height == last
