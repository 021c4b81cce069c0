"""Helpers for devnet tests: load generation, per-height comparisons, the supply invariant."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from haca.client.chain import ChainClient
from haca.client.rpc import CometRpc
from haca.crypto.keys import PrivateKey
from haca.types.bank import MsgSend
from haca.types.tx import build_tx


def signed_transfers(client: ChainClient, key: PrivateKey, to: list[str], count: int, amount: int = 1) -> list[bytes]:
    """`count` transfers from `key` with consecutive nonces from its current one."""
    params = client.query("/auth/params")
    nonce = client.nonce(key.address)
    return [
        build_tx(
            key,
            client.chain_id,
            nonce + i,
            (MsgSend(to[i % len(to)], amount + i),),
            params["tx_fee_base"],
            params["tx_fee_per_byte"],
        ).encode()
        for i in range(count)
    ]


def submit_in_order(client: ChainClient, txs: list[bytes]) -> list[str]:
    """Submit one sender's txs to one validator in nonce order; retry while its mempool is full."""
    hashes = []
    for raw in txs:
        for attempt in range(50):
            try:
                hashes.append(client.broadcast(raw))
                break
            except Exception:
                if attempt == 49:
                    raise
                time.sleep(0.1)
    return hashes


def submit_parallel(batches: list[tuple[ChainClient, list[bytes]]]) -> list[str]:
    with ThreadPoolExecutor(len(batches)) as pool:
        results = list(pool.map(lambda b: submit_in_order(*b), batches))
    return [h for hashes in results for h in hashes]


def wait_committed(client: ChainClient, hashes: list[str], timeout: float = 120.0) -> dict[str, int]:
    """Height of each tx; fails if one is not committed with code 0 in time."""
    deadline = time.monotonic() + timeout
    heights = {}
    for tx_hash in hashes:
        outcome = client.wait_tx(tx_hash, timeout=max(1.0, deadline - time.monotonic()))
        heights[tx_hash] = outcome.height
    return heights


def wait_height(rpc: CometRpc, height: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if rpc.height() >= height:
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{rpc.url} did not reach height {height}")
        time.sleep(0.2)


def app_hash_at(rpc: CometRpc, height: int) -> str:
    """The app hash in the header of `height` (the state after height-1)."""
    return str(rpc.block(height)["block"]["header"]["app_hash"])


def supply_holds(client: ChainClient, addresses: list[str], genesis_supply: int, height: int = 0) -> None:
    total = sum(int(client.query("/bank/balance", a.encode(), height)["balance"]) for a in addresses)
    supply = client.query("/bank/supply", b"", height)
    assert int(supply["total"]) == total, f"supply {supply['total']} != sum of balances {total} at {height}"
    assert total + int(supply["burned"]) == genesis_supply


def assert_devnet_supply_holds(handle: Any) -> None:
    """genesis supply = balances + escrow + bonded + unbonding + burned: every devnet account, the
    escrow account (lanes and claims) and the staking account (bonds and unbonding) hold the
    supply, and supply + burned is what genesis minted."""
    from haca.chain.modules.inference.keeper import ESCROW_ACCOUNT
    from haca.chain.modules.staking.keeper import STAKING_ACCOUNT

    addresses = [k.address for k in handle.keys.list()] + [ESCROW_ACCOUNT, STAKING_ACCOUNT]
    supply = handle.client.supply()
    assert sum(handle.client.balance(a) for a in addresses) == supply["total"]
    assert supply["total"] + supply["burned"] == genesis_supply(handle)


def genesis_supply(handle: Any) -> int:
    """What the devnet's genesis minted: its accounts' balances and its bonds."""
    genesis = json.loads((Path(handle.net.load().nodes[0].home) / "cometbft" / "config" / "genesis.json").read_text())
    minted = sum(int(a["balance"]) for a in genesis["app_state"]["accounts"])
    return minted + sum(int(b["amount"]) for b in genesis["app_state"]["staking"]["bonds"])


def module_accounts() -> list[str]:
    """The accounts modules hold tokens in: escrow (lanes and claims), staking (bonds, unbonding)."""
    from haca.chain.modules.inference.keeper import ESCROW_ACCOUNT
    from haca.chain.modules.staking.keeper import STAKING_ACCOUNT

    return [ESCROW_ACCOUNT, STAKING_ACCOUNT]


def settlement_fee(client: ChainClient, fee: int) -> int:
    """What the chain burns from escrow when it settles a receipt of `fee` (its params now)."""
    p = client.query("/inference/params")
    return int(p["settlement_fee"]) + fee * int(p["settlement_fee_bps"]) // 10_000


def assert_validators_agree(handle: Any, after: int, timeout: float = 30.0) -> None:
    """Every validator commits past `after` with the same app hash: a validator whose execution
    differed from the others' stops at the first header carrying their app hash."""
    clients = handle.clients()
    try:
        deadline = time.monotonic() + timeout
        target = after + 2
        while min(c.rpc.height() for c in clients) < target:
            heights = [c.rpc.height() for c in clients]
            assert time.monotonic() < deadline, f"validators at heights {heights}: one stopped (did it fork?)"
            time.sleep(0.3)
        hashes = {c.rpc.block(target)["block"]["header"]["app_hash"] for c in clients}
        assert len(hashes) == 1, hashes
    finally:
        for c in clients:
            c.close()
