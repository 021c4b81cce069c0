"""Reading back, after a chaos run, what the chain holds: every validator's headers (app hash,
time), every committed settlement (which receipt ids, how many times), the fate of each tx the
load generator sent, each node's word on the receipts that did not settle, and the supply."""

from __future__ import annotations

import base64
import contextlib
import json
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from haca.chain.modules.inference.keeper import ESCROW_ACCOUNT
from haca.chain.modules.staking.keeper import STAKING_ACCOUNT
from haca.client.chain import ChainClient
from haca.devnet.chaos.records import HeaderObservation
from haca.devnet.network import DevnetState
from haca.types.batch import MsgSettleBatch
from haca.types.inference import MsgSettle
from haca.types.tx import TxDecodeError, decode_tx

BLOCKCHAIN_PAGE = 20  # CometBFT's /blockchain answers at most 20 metas per call


def header_time(text: str) -> float:
    """An RFC 3339 CometBFT time (nanoseconds) as epoch seconds."""
    main, _, fraction = text.rstrip("Z").partition(".")
    seconds = datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return seconds + (int(fraction[:9].ljust(9, "0")) / 1e9 if fraction else 0.0)


def _get(http: httpx.Client, url: str, **params: Any) -> Any:
    response = http.get(url, params=params, timeout=10)
    response.raise_for_status()
    doc = response.json()
    if "error" in doc:
        raise RuntimeError(f"{url}: {doc['error']}")
    return doc["result"]


def headers(
    http: httpx.Client, validator: str, rpc: str, first: int, last: int
) -> tuple[list[HeaderObservation], dict[int, int]]:
    """The validator's headers from `first` to `last` (or its top) and each height's tx count."""
    found: list[HeaderObservation] = []
    tx_counts: dict[int, int] = {}
    low = first
    while low <= last:
        high = min(last, low + BLOCKCHAIN_PAGE - 1)
        try:
            metas = _get(http, f"{rpc}/blockchain", minHeight=low, maxHeight=high)["block_metas"]
        except (httpx.HTTPError, RuntimeError, KeyError):
            break  # not that far yet: what it has is what it reports
        for meta in metas:
            header = meta["header"]
            height = int(header["height"])
            found.append(HeaderObservation(validator, height, header["app_hash"], header_time(header["time"])))
            tx_counts[height] = int(meta["num_txs"])
        low = high + 1
    return found, tx_counts


def settlements(
    http: httpx.Client, chain: ChainClient, rpc: str, heights: Iterable[int]
) -> tuple[Counter[str], dict[str, str]]:
    """How many times each receipt id settled, from the committed txs of `heights`: each item of a
    successful MsgSettle, each item of a successful MsgSettleBatch that its batch did not reject;
    and each settled receipt's paying client and mode ("<client> <mode>")."""
    settled: Counter[str] = Counter()
    payer: dict[str, str] = {}
    for height in heights:
        txs = _get(http, f"{rpc}/block", height=height)["block"]["data"]["txs"] or []
        results = _get(http, f"{rpc}/block_results", height=height)["txs_results"] or []
        for raw, result in zip(txs, results, strict=True):
            if int(result.get("code", 0)) != 0:
                continue
            try:
                tx = decode_tx(base64.b64decode(raw))
            except (TxDecodeError, ValueError):
                continue
            for msg in tx.msgs:
                if isinstance(msg, MsgSettle):
                    for item in msg.items:
                        settled[item.receipt.id] += 1
                        payer[item.receipt.id] = f"{item.receipt.receipt.client.lower()} {item.receipt.receipt.mode}"
                elif isinstance(msg, MsgSettleBatch):
                    ids = msg.receipt_ids(tx.chain_id, tx.signer)
                    clients = msg.clients()
                    batch = chain.query("/inference/batch", msg.header(tx.chain_id, tx.signer).id.encode())
                    rejected = {int(r["index"]) for r in batch.get("rejected", [])}
                    for index, (rid, entry) in enumerate(zip(ids, msg.items, strict=True)):
                        if index not in rejected:
                            settled["0x" + rid.hex()] += 1
                            payer["0x" + rid.hex()] = f"0x{clients[entry.allowance].hex()} {msg.mode}"
    return settled, payer


def tx_codes(http: httpx.Client, rpcs: list[str], hashes: Iterable[str]) -> dict[str, int | None]:
    """Each tx's DeliverTx code from the first validator whose index has it (a validator SIGKILLed
    between saving a block and indexing it lacks that block's txs: the others have them)."""
    found: dict[str, int | None] = {}
    for tx_hash in hashes:
        found[tx_hash] = None
        for rpc in rpcs:
            with contextlib.suppress(httpx.HTTPError, RuntimeError, KeyError):
                result = _get(http, f"{rpc}/tx", hash="0x" + tx_hash)
                found[tx_hash] = int(result["tx_result"].get("code", 0))
                break
    return found


def node_refusals(http: httpx.Client, node_urls: dict[str, str], receipts: Iterable[tuple[str, str]]) -> dict[str, str]:
    """For each (node address, receipt id): the node's reason when it gave up settling it."""
    refusals: dict[str, str] = {}
    for node, receipt_id in receipts:
        url = node_urls.get(node.lower())
        if url is None:
            continue
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            stored = http.get(f"{url}/v1/receipts/{receipt_id}", timeout=5).json()
            if stored.get("status") == "rejected":
                refusals[receipt_id] = str(stored.get("error") or "rejected")
    return refusals


def supply_accounts(state: DevnetState, home: Path, extra: Iterable[str] = ()) -> list[str]:
    """Every account that can hold tokens on a devnet: the client home's keys (dev, service), the
    validators' operators, the escrow and staking module accounts, and any others named."""
    from haca.client.config import KeyStore
    from haca.devnet.accounts import operator_key

    accounts = {k.address.lower() for k in KeyStore(home).list()}
    accounts |= {operator_key(n.name).address.lower() for n in state.nodes}
    accounts |= {ESCROW_ACCOUNT.lower(), STAKING_ACCOUNT.lower()}
    accounts |= {a.lower() for a in extra}
    return sorted(accounts)


def genesis_minted(state: DevnetState) -> int:
    genesis = json.loads((Path(state.nodes[0].home) / "cometbft" / "config" / "genesis.json").read_text())
    app = genesis["app_state"]
    return sum(int(a["balance"]) for a in app["accounts"]) + sum(int(b["amount"]) for b in app["staking"]["bonds"])


def balances_at(chain: ChainClient, accounts: list[str], height: int) -> tuple[dict[str, int], int, int]:
    """Balances of `accounts`, the bank's total and burned, all read at one height."""
    balances = {a: int(chain.query("/bank/balance", a.encode(), height)["balance"]) for a in accounts}
    supply = chain.query("/bank/supply", b"", height)
    return balances, int(supply["total"]), int(supply["burned"])
