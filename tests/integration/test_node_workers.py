"""One node identity served by two workers behind one front, its receipts and proof jobs on a
real PostgreSQL: 2,000 paid requests in vanilla, tee and zkml, and the worker holding the
settler's lease SIGKILLed mid-load. Every receipt settles exactly once, none is lost, and the
client's escrow, the node's balance and the burn are exact to the unit."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

from haca.chain.home import unix_socket_path
from haca.client.core import error_code
from haca.client.errors import AnswerLost, NodeUnavailable, QueryFailed, node_error
from haca.client.sdk import Client
from haca.devnet.layout import dev_srs_dir, example_circuits_dir, example_models_dir
from haca.devnet.network import DEV_ROOT_DIR
from haca.devnet.processes import free_ports, signal_group, spawn, wait_group_gone
from haca.devnet.services import approve_enclave_code, enclave_command, wait_http, wait_socket
from haca.proofs.tee.dev import issue_dev_platform
from haca.types.encoding import canonical_json
from haca.types.inference import EscrowAnswer
from haca.types.modes import UNSETTLED
from haca.types.outputs import ANSWER_LOST, idempotent_request_id
from haca.types.payment import decode_api_key
from haca.types.receipt import SignedReceipt
from tests.integration.conftest import DevnetHandle, _devnet
from tests.integration.helpers import genesis_supply, supply_holds, wait_height

pytestmark = [pytest.mark.devnet, pytest.mark.slow]

NODE_KEY, CLIENT_KEY = "dev7", "dev2"
REQUESTS = 2000
KILL_AFTER = 700  # answers served before the lease holder is SIGKILLed
THREADS = 8
TRIES = 60
IRIS = [[5.1, 3.5, 1.4, 0.2]]


def mode_of(i: int) -> str:
    # 4 zkml (a proof holds one of the 2 cores for ~20 s here), 666 tee, 1,330 vanilla
    return "zkml" if i % 500 == 0 else "tee" if i % 3 == 1 else "vanilla"


def paid_by_sdk(i: int) -> bool:
    """Some requests go through the SDK (a signed authorisation each, every answer checked), the
    rest on an API key as an OpenAI-style client sends them (one round trip, an Idempotency-Key)."""
    return mode_of(i) == "zkml" or i % 10 == 1


@dataclass
class Load:
    served: dict[str, tuple[str, int]] = field(default_factory=dict)  # receipt id -> (mode, fee)
    lost: list[str] = field(default_factory=list)  # request ids whose answer was lost (AnswerLost)
    errors: list[str] = field(default_factory=list)
    retried: int = 0  # 503s sent again
    by_key: set[str] = field(default_factory=set)  # receipt ids paid by the API key
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture(scope="module")
def workers_devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevnetHandle]:
    """Validators with 1 s blocks, the hub and the example models registered; the devnet's own
    node, its enclave and the explorer stopped: this test brings its node, and the machine's two
    cores are for its workers."""
    for handle in _devnet(tmp_path_factory, inference=True, timeout_commit="1s"):
        for name in ("node0", "enclave0", "explorer"):
            handle.net.stop(name)
        yield handle


def test_two_workers_on_postgres_settle_every_receipt_once_through_a_sigkill(
    workers_devnet, postgres_server, tmp_path: Path
):
    net = workers_devnet
    dsn = postgres_server.create_database("node_workers")
    node_address = net.keys.get(NODE_KEY).address
    hub = str(net.config.extra["hub"])
    front_port, *worker_ports = free_ports(3)
    front_url = f"http://127.0.0.1:{front_port}"
    groups: list[int] = []
    try:
        workers = []
        for i, port in enumerate(worker_ports):  # one after the other: the first registers and bonds
            data = tmp_path / f"w{i}"
            socket = unix_socket_path(data / "enclave.sock")
            issue_dev_platform(net.home / "devnet" / DEV_ROOT_DIR, data / "platform")  # each its own machine
            enclave = spawn(enclave_command(socket, data / "platform", data / "models", hub), data / "enclave.log")
            groups.append(enclave)
            wait_socket(socket, enclave, f"enclave {i}", data / "enclave.log")
            approve_enclave_code(net.home, socket)
            args = ["--home", str(net.home), "--key", NODE_KEY, "--port", str(port), "--endpoint", front_url]
            args += ["--data-dir", str(data), "--models", "iris,mlp-regressor", "--modes", "tee,vanilla,zkml"]
            args += ["--enclave", str(socket), "--circuits", str(example_circuits_dir())]
            args += ["--srs-dir", str(dev_srs_dir()), "--store", dsn, "--worker", f"w{i}", "--flush-interval", "0.5"]
            pid = spawn([sys.executable, "-m", "haca.node.main", *args], data / "node.log")
            groups.append(pid)
            wait_http(f"http://127.0.0.1:{port}/healthz", pid, f"worker {i}", data / "node.log", timeout=180)
            workers.append(pid)
        front = spawn(
            [sys.executable, "-m", "haca.cli.main", "node", "front", "--port", str(front_port)]
            + [arg for port in worker_ports for arg in ("--worker", f"http://127.0.0.1:{port}")],
            tmp_path / "front.log",
        )
        groups.append(front)
        wait_http(f"{front_url}/healthz", front, "front", tmp_path / "front.log")
        assert example_models_dir().exists()
        _load_kill_and_settle(net, dsn, front_url, node_address, workers, tmp_path)
    finally:
        for pgid in groups:
            signal_group(pgid, signal.SIGKILL)
        for pgid in groups:
            wait_group_gone(pgid, time.monotonic() + 10)


def _lease_holder(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT holder FROM leases WHERE name = 'settler' AND expires > now()").fetchone()
    return str(row[0]) if row else ""


def _load_kill_and_settle(net, dsn: str, front_url: str, node: str, workers: list[int], tmp_path: Path) -> None:
    client_key = net.keys.get(CLIENT_KEY).key
    with Client(front_url, client_key, net.clients()[1]) as client:
        deposited = client.deposit(10**12)
        for rpc in net.clients():
            wait_height(rpc.rpc, deposited.height)
    start = net.client.rpc.height()
    wait_height(net.client.rpc, start + 1)
    before = _balances(net, client_key.address, node, start)
    holder = _lease_holder(dsn)
    assert holder in {"w0", "w1"}, "one worker settles"
    victim = workers[int(holder[1])]

    load = Load()
    killed = threading.Event()
    zk_input = _zk_input()
    http = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=THREADS))

    with Client(front_url, client_key, net.clients()[0]) as client:
        api_key = client.create_api_key(node, cap=10**11, expires_in=100_000)
    allowance = decode_api_key(api_key).value

    def infer(client: Client, i: int, mode: str) -> SignedReceipt:
        """Sent again after a 503 (the provers booked, a chain RPC too busy to answer: nothing was
        charged), as a client does."""
        for _ in range(TRIES):
            try:
                if paid_by_sdk(i):
                    model, data = ("mlp-regressor", zk_input) if mode == "zkml" else ("iris", iris(i))
                    return client.infer(model, data, mode=mode).receipt
                return by_api_key(i, mode)
            except NodeUnavailable as exc:
                if exc.status != 503:
                    raise
                with load.lock:
                    load.retried += 1
                time.sleep(2)
        raise AssertionError(f"request {i} ({mode}) was refused {TRIES} times")

    def by_api_key(i: int, mode: str) -> SignedReceipt:
        """One POST; an answer the front lost with its worker is fetched by its Idempotency-Key
        (any worker has it if the receipt was queued: 404 means it was never served)."""
        key = f"node-workers-load-{i:06d}"
        headers = {"Authorization": f"Bearer {api_key}", "Idempotency-Key": key}
        answer = http.post(
            f"{front_url}/v1/infer", json={"model": "iris", "mode": mode, "input": iris(i)}, headers=headers
        )
        if answer.status_code == 502 and error_code(answer) == ANSWER_LOST:
            request_id = idempotent_request_id(allowance.id, key)
            answer = http.get(f"{front_url}/v1/outputs/{request_id}", headers=headers)
            if answer.status_code == 404:
                raise AnswerLost("lost before its receipt was queued", request_id)
        if answer.status_code != 200:
            raise node_error(answer.status_code, answer.json(), answer.text)
        receipt = SignedReceipt.from_json(answer.json()["receipt"])
        assert receipt.receipt.client == client_key.address and receipt.receipt.mode == mode
        return receipt

    def one(i: int, client: Client) -> None:
        mode = mode_of(i)
        try:
            receipt = infer(client, i, mode)
        except AnswerLost as exc:
            with load.lock:
                load.lost.append(exc.request_id)
            return
        except Exception as exc:
            with load.lock:
                load.errors.append(f"{i} {mode}: {exc!r}")
            return
        with load.lock:
            load.served[receipt.id] = (mode, receipt.receipt.fee)
            if not paid_by_sdk(i):
                load.by_key.add(receipt.id)
            if len(load.served) == KILL_AFTER and not killed.is_set():
                killed.set()
                signal_group(victim, signal.SIGKILL)  # the settler's lease holder, mid-load

    def thread(n: int) -> None:
        with Client(front_url, client_key, net.clients()[n % 4]) as client:
            for i in range(n, REQUESTS, THREADS):
                one(i, client)

    began = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(thread, range(THREADS)))
    loaded = time.monotonic() - began
    http.close()
    assert killed.is_set()
    assert load.errors == [], "\n".join(load.errors)
    assert len(load.served) + len(load.lost) == REQUESTS
    assert len(load.lost) <= THREADS  # at most the requests the killed worker had in flight

    # the other worker takes the lease and settles everything, its own receipts and the dead one's
    deadline = time.monotonic() + 300
    while (left := _unsettled(dsn)) > 0:
        assert time.monotonic() < deadline, f"{left} receipts still unsettled; see {tmp_path}"
        time.sleep(1)
    assert _lease_holder(dsn) not in {"", holder}
    end = net.client.rpc.height()
    for rpc in net.clients():
        wait_height(rpc.rpc, end)

    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, status, worker, error FROM receipts").fetchall()
    assert {r[0] for r in rows} == set(load.served), "every answer served has its receipt, and no other"
    verdict = {"vanilla": "settled", "tee": "verified", "zkml": "verified"}  # tee, zkml: their evidence checked
    modes = {rid: mode for rid, (mode, _) in load.served.items()}
    wrong = [(modes[rid], status, error) for rid, status, _, error in rows if status != verdict[modes[rid]]]
    assert wrong == []
    assert {r[2] for r in rows} == {"w0", "w1"}, "both workers served"
    settlement_fees = 0
    for receipt_id, (mode, fee) in load.served.items():
        record = net.client.query("/inference/receipt", receipt_id.encode())
        assert record["status"] == verdict[mode] and int(record["fee"]) == fee, (receipt_id, mode, record)
        settlement_fees += int(record["settlement_fee"])
    for request_id in load.lost:  # lost before its receipt was written: never charged
        with pytest.raises(QueryFailed, match="has not been settled"):
            net.client.query("/inference/request", f"{client_key.address}/{request_id}".encode(), height=end)
    after = _balances(net, client_key.address, node, end)
    fees = sum(fee for _, fee in load.served.values())
    node_tx_fees, all_tx_fees = _tx_fees(net, start + 1, end, node)
    assert before["escrow"] - after["escrow"] == fees + settlement_fees
    assert after["node"] - before["node"] == fees - node_tx_fees
    assert after["burned"] - before["burned"] == settlement_fees + all_tx_fees
    supply_holds(net.client, _accounts(net), genesis_supply(net), height=end)  # every figure read at one height
    spent = net.client.query("/inference/allowance", canonical_json(allowance.to_json()), height=end)["spent"]
    assert int(spent) == sum(load.served[rid][1] for rid in load.by_key)  # the API key's share, exactly
    served_modes = sorted({mode for mode, _ in load.served.values()})
    assert served_modes == ["tee", "vanilla", "zkml"]
    print(
        f"\nRESULT node workers: {len(load.served)} served, {len(load.lost)} lost with the worker,"
        f" {load.retried} 503s sent again,"
        f" load {loaded:.1f}s, settled by height {end}"
    )


def iris(i: int) -> list[list[float]]:
    return [[5.1, 3.5, 1.4, 0.2 + i / 10_000]]


def _accounts(net) -> list[str]:
    """Every account that holds part of the devnet's supply (its keys, escrow, staking)."""
    from haca.chain.modules.inference.keeper import ESCROW_ACCOUNT
    from haca.chain.modules.staking.keeper import STAKING_ACCOUNT

    return [k.address for k in net.keys.list()] + [ESCROW_ACCOUNT, STAKING_ACCOUNT]


def _zk_input() -> list[list[float]]:
    from tests.integration.test_zkml import EXAMPLE

    return EXAMPLE


def _unsettled(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        (count,) = conn.execute("SELECT count(*) FROM receipts WHERE status = ANY(%s)", (list(UNSETTLED),)).fetchone()
    return int(count)


def _balances(net, client: str, node: str, height: int) -> dict[str, int]:
    escrow = EscrowAnswer.from_json(net.client.query("/inference/escrow", f"{client}/{node}".encode(), height=height))
    return {
        "escrow": escrow.escrow,
        "node": int(net.client.query("/bank/balance", node.encode(), height=height)["balance"]),
        "burned": int(net.client.query("/bank/supply", height=height)["burned"]),
    }


def _tx_fees(net, first: int, last: int, node: str) -> tuple[int, int]:
    """(fees of the node's txs, fees of every tx) committed in blocks first..last."""
    import base64
    import json

    mine = every = 0
    for height in range(first, last + 1):
        txs = net.client.rpc.block(height)["block"]["data"]["txs"] or []
        results = net.client.rpc.call("block_results", height=str(height))["txs_results"] or []
        for raw, result in zip(txs, results, strict=True):
            fee = sum(
                int(a["value"])
                for e in result.get("events", [])
                if e["type"] == "tx"
                for a in e["attributes"]
                if a["key"] == "fee"
            )
            every += fee
            if json.loads(base64.b64decode(raw))["signer"] == node:
                mine += fee
    return mine, every
