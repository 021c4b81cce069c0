"""Receipts settled per second end to end on a 4-validator HACA devnet: MsgSettleBatch (one root
signature per batch, hashing per receipt) against one receipt per MsgSettle tx, in the same run.

One devnet (validators only), one node account registered for a vanilla model, C clients with
escrow and a spending allowance each. Receipts are made before the clock (that is inference-time
work); the clock runs from the node's first batch build until the block holding its last tx is
committed (first seen on val0's RPC), so it covers what the node's settler does (assemble the
batch, sign its root and the tx, broadcast) and what the chain does (CheckTx on every validator,
proposal, execution, commit). Each round checks every receipt settled: the batch records
(settled = count, none rejected) or the single txs' codes, and the lanes' escrow moved by exactly
fee + settlement fee per receipt.

Also recorded per round: CPU seconds of the validators' app and CometBFT processes (from
/proc/PID/stat) per receipt, txs and receipts per block, tokens burned per block (settlement fees;
tx fees are burned too and counted apart).

    .venv/bin/python bench/settlement.py [--receipts 20000] [--batch 1000] [--singles 600] [--rounds 3]

Writes bench/results/settlement.json; see bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from common import cpu_times, devnet_pids, exit_on_sigterm, haca_source, loadavg, spread

import haca.types.messages  # noqa: F401  (registers message types with the tx decoder)
from haca.client.chain import ChainClient
from haca.crypto.hashing import sha256
from haca.crypto.keys import PrivateKey
from haca.devnet.accounts import dev_keys
from haca.devnet.network import Devnet, up
from haca.node.service import ensure_stake
from haca.types.batch import assemble_batch
from haca.types.inference import MsgDeposit, MsgSettle, SettlementItem
from haca.types.payment import SignedPayment, SpendingAllowance
from haca.types.receipt import Receipt, SignedReceipt
from haca.types.registry import MsgRegisterModel, MsgRegisterNode

BENCH = Path(__file__).resolve().parent
WORK = BENCH / ".work"
RESULTS = BENCH / "results"
PRICE = 1_000
MODEL = "bench-settle"
MODEL_ID = "sha256:" + sha256(b"bench settlement model").hex()
SCHEMA = {"x": {"dtype": "float32", "shape": [1, 4]}}
TARGET = 5_000.0


class BenchError(RuntimeError):
    pass


@dataclass
class Setup:
    chain: ChainClient
    chain_id: str
    node: PrivateKey
    clients: list[PrivateKey]
    allowances: list[SignedPayment]
    rpc: str
    rpcs: list[str]


@dataclass
class Round:
    kind: str
    receipts: int
    txs: int
    seconds: float
    first_height: int
    last_height: int
    cpu: dict[str, float]
    burned: int
    settlement_burned: int
    blocks: list[dict[str, int]] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        return self.receipts / self.seconds

    def doc(self) -> dict[str, Any]:
        blocks = max(1, self.last_height - self.first_height + 1)
        app = sum(v for k, v in self.cpu.items() if k.endswith("haca_app"))
        comet = sum(v for k, v in self.cpu.items() if k.endswith("cometbft"))
        return {
            "receipts_per_s": round(self.per_s, 1),
            "receipts": self.receipts,
            "txs": self.txs,
            "seconds": round(self.seconds, 3),
            "blocks": blocks,
            "receipts_per_block": round(self.receipts / blocks, 1),
            "validator_app_cpu_us_per_receipt": round(1e6 * app / self.receipts, 1),
            "validator_cometbft_cpu_us_per_receipt": round(1e6 * comet / self.receipts, 1),
            "cores_busy": round(sum(self.cpu.values()) / self.seconds, 2),
            "settlement_burned_per_block": self.settlement_burned // blocks,
            "burned_per_block": self.burned // blocks,
            "burned_per_receipt": round(self.burned / self.receipts, 1),
        }


class HeightWatcher:
    """Polls val0's height and records when each height was first seen (the clock's end)."""

    def __init__(self, rpc: str, interval: float = 0.02) -> None:
        self.rpc, self.interval = rpc, interval
        self.first_seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=2) as http:
            while not self._stop.is_set():
                with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                    info = http.get(f"{self.rpc}/status").json()["result"]["sync_info"]
                    height = int(info["latest_block_height"])
                    now = time.perf_counter()
                    for h in range(max(self.first_seen, default=height - 1) + 1, height + 1):
                        self.first_seen.setdefault(h, now)
                self._stop.wait(self.interval)

    def seen(self, height: int, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        while height not in self.first_seen:
            if time.monotonic() > deadline:
                raise BenchError(f"height {height} not seen")
            time.sleep(0.01)
        return self.first_seen[height]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def prepare(net: Devnet, clients: int) -> Setup:
    state = net.load()
    rpcs = [n.rpc for n in state.nodes]
    chain = ChainClient(rpcs, state.chain_id)
    keys = [key for _, key in dev_keys()]
    owner, node, payers = keys[0], keys[1], keys[2 : 2 + clients]
    if len(payers) < clients:
        raise BenchError(f"the devnet has {len(keys)} dev accounts; --clients {clients} needs {clients + 2}")
    register = MsgRegisterModel(MODEL, MODEL_ID, SCHEMA, SCHEMA, ("vanilla",), PRICE)
    chain.send_msgs(owner, (register,))
    ensure_stake(chain, node, ("vanilla",))
    chain.send_msgs(node, (MsgRegisterNode("http://127.0.0.1:9", ("vanilla",), (MODEL,), 0),))
    balance = chain.balance(payers[0].address)
    hashes = [chain.send_msgs(c, (MsgDeposit(node.address, balance // 2),), wait=False) for c in payers]
    for tx_hash in hashes:
        chain.wait_tx(str(tx_hash))
    allowances = []
    for n, payer in enumerate(payers):
        value = SpendingAllowance(state.chain_id, payer.address, node.address, cap=balance, expiry=10**9, nonce=n)
        allowances.append(SignedPayment("allowance", value, value.sign(payer)))
    return Setup(chain, state.chain_id, node, payers, allowances, rpcs[0], rpcs)


def make_receipts(setup: Setup, count: int, tag: str) -> list[tuple[Receipt, SignedPayment]]:
    height = setup.chain.rpc.height()
    out = []
    for n in range(count):
        k = n % len(setup.clients)
        digest = sha256(f"{tag}/{n}".encode())
        receipt = Receipt(
            setup.chain_id,
            setup.node.address,
            setup.clients[k].address,
            "0x" + digest.hex(),
            MODEL_ID,
            "vanilla",
            "0x" + sha256(digest + b"in").hex(),
            "0x" + sha256(digest + b"out").hex(),
            PRICE,
            height,
            1_700_000_000 + n,
        )
        out.append((receipt, setup.allowances[k]))
    return out


def escrows(setup: Setup) -> list[int]:
    return [
        int(setup.chain.query("/inference/escrow", f"{c.address}/{setup.node.address}".encode())["escrow"])
        for c in setup.clients
    ]


def settlement_fee(setup: Setup, fee: int) -> int:
    params = setup.chain.query("/inference/params")
    return int(params["settlement_fee"]) + fee * int(params["settlement_fee_bps"]) // 10_000


def run_round(setup: Setup, net: Devnet, kind: str, entries: list[tuple[Receipt, SignedPayment]], batch: int) -> Round:
    """Settle `entries` as batches of `batch` (kind "batched") or one per tx (kind "single")."""
    chain, node = setup.chain, setup.node
    singles: list[bytes] = []
    if kind == "single":  # the node's per-receipt signature is made when it answers, before the clock
        singles = [r.sign(node) for r, _ in entries]
    before_escrow, before_supply = escrows(setup), chain.supply()
    pids = devnet_pids(net)
    watcher = HeightWatcher(setup.rpc)
    cpu0 = cpu_times(pids)
    start = time.perf_counter()
    start_height = chain.rpc.height()
    nonce = chain.nonce(node.address)
    hashes: list[str] = []
    ids: list[str] = []
    if kind == "batched":
        for offset in range(0, len(entries), batch):
            msg, header = assemble_batch(setup.chain_id, node.address, "vanilla", entries[offset : offset + batch])
            msg = dataclasses.replace(msg, signature=header.sign(node))
            ids.append(header.id)
            hashes.append(chain.broadcast(chain.sign(node, (msg,), nonce=nonce)))
            nonce += 1
    else:
        for (receipt, payment), signature in zip(entries, singles, strict=True):
            item = SettlementItem(SignedReceipt(receipt, signature), payment)
            hashes.append(chain.broadcast(chain.sign(node, (MsgSettle((item,)),), nonce=nonce)))
            nonce += 1
    heights = []
    for tx_hash in hashes:
        outcome = chain.wait_tx(tx_hash, timeout=300)
        if outcome.code != 0:
            raise BenchError(f"{kind} tx {tx_hash} failed: {outcome.log}")
        heights.append(outcome.height)
    last = max(heights)
    end = watcher.seen(last)
    cpu1 = cpu_times(pids)
    watcher.stop()
    cpu = {name: cpu1.get(pid, 0.0) - cpu0.get(pid, 0.0) for name, pid in pids.items()}

    # Every receipt settled, and exactly: per batch, settled = count, nothing rejected; per lane,
    # the escrow moved by fee + settlement fee for each receipt.
    for batch_id in ids:
        record = chain.query("/inference/batch", batch_id.encode())
        if record["rejected"] or record["settled"] != record["count"]:
            raise BenchError(f"batch {batch_id}: {record['settled']} of {record['count']} settled")
    per_receipt = PRICE + settlement_fee(setup, PRICE)
    counts = [len(entries[k :: len(setup.clients)]) for k in range(len(setup.clients))]
    after_escrow = escrows(setup)
    for k, count in enumerate(counts):
        if before_escrow[k] - after_escrow[k] != count * per_receipt:
            raise BenchError(
                f"client {k}: escrow moved {before_escrow[k] - after_escrow[k]}, not {count * per_receipt}"
            )
    validators_agree(setup.rpcs, last)
    burned = chain.supply()["burned"] - before_supply["burned"]
    settlement_burned = len(entries) * settlement_fee(setup, PRICE)
    return Round(kind, len(entries), len(hashes), end - start, start_height + 1, last, cpu, burned, settlement_burned)


def validators_agree(rpcs: list[str], height: int, timeout: float = 30.0) -> None:
    """Every validator commits past `height` (one whose execution differed stops at the first header
    carrying the others' app hash)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as http:
        for rpc in rpcs:
            while True:
                info = http.get(f"{rpc}/status").json()["result"]["sync_info"]
                if int(info["latest_block_height"]) >= height + 2:
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"validator {rpc} stopped at height {info['latest_block_height']} (a fork?)")
                time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--receipts", type=int, default=20_000, help="receipts per batched round")
    parser.add_argument("--batch", type=int, default=1000, help="receipts per MsgSettleBatch")
    parser.add_argument("--singles", type=int, default=600, help="receipts per one-per-tx round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--timeout-commit", default="500ms")
    parser.add_argument("--output", type=Path, default=RESULTS / "settlement.json")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    started = datetime.now(UTC)
    load_before = loadavg()
    home = WORK / f"settlement-{os.getpid()}"
    net: Devnet | None = None
    rounds: list[Round] = []
    try:
        net = up(home, 4, timeout_commit=args.timeout_commit, inference=False)
        net.wait_ready(2, 120)
        setup = prepare(net, args.clients)
        try:
            for r in range(args.rounds):
                for kind, count in (("batched", args.receipts), ("single", args.singles)):
                    entries = make_receipts(setup, count, f"{kind}-{r}")
                    result = run_round(setup, net, kind, entries, args.batch)
                    rounds.append(result)
                    doc = result.doc()
                    print(
                        f"round {r + 1} {kind:>7}: {doc['receipts_per_s']:>8.1f} receipts/s"
                        f"  ({count} in {doc['txs']} txs,"
                        f" {doc['blocks']} blocks, app CPU {doc['validator_app_cpu_us_per_receipt']} us/receipt)",
                        flush=True,
                    )
        finally:
            setup.chain.close()
    finally:
        if net is not None and net.exists():
            net.stop()
        shutil.rmtree(home, ignore_errors=True)

    batched = [r for r in rounds if r.kind == "batched"]
    single = [r for r in rounds if r.kind == "single"]
    ratios = [b.per_s / s.per_s for b, s in zip(batched, single, strict=True)]
    summary: dict[str, Any] = {
        "bench": "settlement",
        "started": started.isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_before": load_before},
        "load_after": loadavg(),
        "haca": haca_source(),
        "params": vars(args) | {"output": str(args.output)},
        "batched_receipts_per_s": spread([r.per_s for r in batched], 1, runs=False),
        "single_receipts_per_s": spread([r.per_s for r in single], 1, runs=False),
        "batched_over_single": spread(ratios, 1, runs=False),
        "target_batched_receipts_per_s": TARGET,
        "target_met": statistics.median([r.per_s for r in batched]) >= TARGET,
        "validator_app_cpu_us_per_receipt": {
            "batched": spread([r.doc()["validator_app_cpu_us_per_receipt"] for r in batched], 1, runs=False),
            "single": spread([r.doc()["validator_app_cpu_us_per_receipt"] for r in single], 1, runs=False),
        },
        "settlement_burned_per_block": {
            "batched": spread([r.doc()["settlement_burned_per_block"] for r in batched], 1, runs=False),
            "single": spread([r.doc()["settlement_burned_per_block"] for r in single], 1, runs=False),
        },
        "rounds": [{"kind": r.kind, **r.doc()} for r in rounds],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    b, s = summary["batched_receipts_per_s"], summary["single_receipts_per_s"]
    print(f"batched {b['min']}/{b['median']}/{b['max']} receipts/s, single {s['min']}/{s['median']}/{s['max']};")
    print(f"target {TARGET:.0f}: {'met' if summary['target_met'] else 'NOT met'}; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
