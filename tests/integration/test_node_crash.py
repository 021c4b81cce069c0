"""A node SIGKILLed with 100 receipts queued settles every one exactly once after restart."""

from __future__ import annotations

import signal
import sys
import time

import httpx
import pytest

from haca.client.sdk import Client
from haca.devnet.processes import free_ports, signal_group, spawn, wait_group_gone
from tests.integration.helpers import wait_height

pytestmark = [pytest.mark.devnet, pytest.mark.slow]
RECEIPTS = 100


def start_node(net, port: int, data, log, flush_interval: float):
    args = [
        sys.executable,
        "-m",
        "haca.node.main",
        "--home",
        str(net.home),
        "--key",
        "dev7",
        "--port",
        str(port),
        "--data-dir",
        str(data),
        "--models",
        "iris",
        "--batch-size",
        "1000" if flush_interval > 60 else "32",
        "--flush-interval",
        str(flush_interval),
    ]
    pid = spawn(args, log)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return pid
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.2)


def test_sigkilled_node_settles_each_queued_receipt_exactly_once(inference_devnet, tmp_path):
    net = inference_devnet
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    node_address = net.keys.get("dev7").address
    pid = start_node(net, port, tmp_path / "node", tmp_path / "node.log", flush_interval=3600)  # settler idle
    try:
        _crash_and_settle(net, url, port, tmp_path, node_address, pid)
    finally:  # whichever node runs now stops with the test (the first one too, if the test fails early)
        signal_group(pid, signal.SIGKILL)
        wait_group_gone(pid, time.monotonic() + 10)


def _crash_and_settle(net, url: str, port: int, tmp_path, node_address: str, pid: int) -> None:
    with Client(url, net.keys.get("dev2").key, net.clients()[1]) as client:
        deposited = client.deposit(10**9)
        for rpc in net.clients():  # committed on val1; the node reads val0, which may be a block behind
            wait_height(rpc.rpc, deposited.height)
        escrow_before, node_before = client.escrow(), net.client.balance(node_address)
        receipts = [client.infer("iris", [[5.0, 3.4, 1.5, 0.2 + i / 1000]]) for i in range(RECEIPTS)]
        assert httpx.get(f"{url}/healthz").json()["pending_receipts"] == RECEIPTS
        signal_group(pid, signal.SIGKILL)
        wait_group_gone(pid, time.monotonic() + 10)

        pid = start_node(net, port, tmp_path / "node", tmp_path / "node.log", flush_interval=0.5)
        try:
            records = [client.wait_settled(r.receipt_id, timeout=120) for r in receipts]
        finally:
            signal_group(pid, signal.SIGTERM)
            wait_group_gone(pid, time.monotonic() + 20)
        fee = receipts[0].receipt.receipt.fee
        settled = [r.record for r in records]
        assert None not in settled, "each receipt settled alone"
        settlement_fee = settled[0].settlement_fee  # type: ignore[union-attr]
        assert {r.receipt_id for r in records} == {r.receipt_id for r in receipts}
        assert all(r.status == "settled" for r in records)
        assert client.escrow() == escrow_before - RECEIPTS * (fee + settlement_fee)
        tx_hashes = {h for h in (_settle_tx(net, r.height, node_address) for r in records) for h in h}
        tx_fees = sum(_tx_fee(net, h) for h in tx_hashes)
        assert net.client.balance(node_address) == node_before + RECEIPTS * fee - tx_fees


def _settle_tx(net, height: int, node: str) -> list[str]:
    """Hashes of the node's settlement txs in the block at `height`."""
    import base64
    import hashlib
    import json

    txs = net.client.rpc.block(height)["block"]["data"]["txs"] or []
    return [
        hashlib.sha256(base64.b64decode(t)).hexdigest().upper()
        for t in txs
        if json.loads(base64.b64decode(t))["signer"] == node
    ]


def _tx_fee(net, tx_hash: str) -> int:
    events = net.client.rpc.tx(tx_hash)["tx_result"]["events"]
    return int(next(a["value"] for e in events if e["type"] == "tx" for a in e["attributes"] if a["key"] == "fee"))
