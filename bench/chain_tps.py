"""Committed transfers per second: a 4-validator HACA devnet vs CometBFT's built-in kvstore app.

A third network, "noop" (bench/noop_app.py: a Python app that accepts everything, behind
HACA's ABCI socket server), separates the cost of a Python socket app from HACA's own work.
All run on loopback with the same CometBFT binary, the same config changes and the same
`timeout_commit`, and get the same load: N txs submitted with `broadcast_tx_sync` by S
streams in parallel (S = number of HACA senders), each stream pinned to one validator's RPC and
sending its txs one after another (a HACA sender's nonces must reach one mempool in order).
The clock runs from the first submission until blocks holding all N txs are committed.

    .venv/bin/python bench/chain_tps.py [--txs 2000] [--profile]

Writes bench/results/chain_tps.json; see bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from common import cpu_times, devnet_pids, exit_on_sigterm, loadavg, machine, timestamp, work_dir

from haca.chain.home import cometbft_binary
from haca.chain.supervisor import set_toml_value
from haca.client.chain import ChainClient
from haca.crypto.keys import PrivateKey
from haca.devnet.accounts import dev_keys
from haca.devnet.network import Devnet, rpc_height, up
from haca.devnet.processes import free_ports
from haca.types.bank import MsgSend
from haca.types.tx import build_tx

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
LOG_LEVEL = "state:info,*:error"  # what the HACA devnet uses


class BenchError(RuntimeError):
    pass


# --- load: submit streams, watch blocks -------------------------------------------------------


@dataclass
class Stream:
    """Txs for one RPC, sent one at a time in this order."""

    rpc: str
    txs: list[bytes]


@dataclass(frozen=True)
class Block:
    height: int
    num_txs: int
    time: float  # header time, seconds since the epoch


@dataclass
class LoadResult:
    txs: int
    seconds: float  # first submission until the block with the last tx is seen committed
    submit_seconds: float  # first submission until the last broadcast_tx_sync answered
    start_height: int
    blocks: list[Block]
    rejected: list[str]
    latencies: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def tps(self) -> float:
        return self.txs / self.seconds

    def latency_ms(self) -> dict[str, float]:
        """broadcast_tx_sync round trips (CheckTx latency as a client sees it)."""
        if not self.latencies:
            return {}
        cuts = statistics.quantiles(self.latencies * 2, n=100)  # doubled: it needs two points
        return {
            "mean": round(1000 * statistics.fmean(self.latencies), 1),
            "p50": round(1000 * cuts[49], 1),
            "p90": round(1000 * cuts[89], 1),
            "p99": round(1000 * cuts[98], 1),
            "max": round(1000 * max(self.latencies), 1),
        }

    def block_stats(self) -> dict[str, Any]:
        loaded = [b for b in self.blocks if b.num_txs]
        times = [b.time for b in self.blocks]
        intervals = [b - a for a, b in itertools.pairwise(times)]
        return {
            "blocks": len(self.blocks),
            "blocks_with_txs": len(loaded),
            "max_txs_per_block": max((b.num_txs for b in loaded), default=0),
            "mean_txs_per_block": round(statistics.fmean(b.num_txs for b in loaded), 1) if loaded else 0,
            "mean_block_interval_s": round(statistics.fmean(intervals), 3) if intervals else None,
            "max_block_interval_s": round(max(intervals), 3) if intervals else None,
            "txs_per_block": [b.num_txs for b in self.blocks],
        }


def jsonrpc_body(method: str, **params: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()


def submit_stream(stream: Stream, rejected: list[str], lock: threading.Lock) -> list[float]:
    """Send the stream's txs one at a time; return each broadcast_tx_sync round trip in seconds."""
    latencies = []
    bodies = [jsonrpc_body("broadcast_tx_sync", tx=base64.b64encode(raw).decode()) for raw in stream.txs]
    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=stream.rpc, timeout=60) as http:
        for body in bodies:
            sent = time.perf_counter()
            for _ in range(200):
                doc = http.post("/", content=body, headers=headers).json()
                error = doc.get("error")
                if error and "mempool is full" in str(error.get("data", "")):
                    time.sleep(0.05)
                    continue
                break
            latencies.append(time.perf_counter() - sent)
            if error:
                problem = f"rpc error: {error.get('message', '')} {error.get('data', '')}"
            elif int(doc["result"]["code"]) != 0:
                problem = f"CheckTx code {doc['result']['code']}: {doc['result'].get('log', '')}"
            else:
                continue
            with lock:
                rejected.append(problem)
    return latencies


def parse_time(text: str) -> float:
    """RFC 3339 with up to nanoseconds -> epoch seconds."""
    main, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(main).replace(tzinfo=UTC).timestamp() + float(f"0.{frac or 0}")


def fetch_blocks(http: httpx.Client, low: int, high: int) -> list[Block]:
    """Block metas for heights low..high (the `blockchain` RPC returns at most 20 a call)."""
    blocks: list[Block] = []
    for start in range(low, high + 1, 20):
        end = min(start + 19, high)
        metas = http.post("/", content=jsonrpc_body("blockchain", minHeight=str(start), maxHeight=str(end))).json()
        for meta in metas["result"]["block_metas"]:
            header = meta["header"]
            blocks.append(Block(int(header["height"]), int(meta["num_txs"]), parse_time(header["time"])))
    return sorted(blocks, key=lambda b: b.height)


def run_load(
    streams: list[Stream], watch_rpc: str, timeout: float, cpu_pids: Callable[[], dict[str, int]]
) -> LoadResult:
    """Submit all streams in parallel; return once blocks after the start hold every tx."""
    total = sum(len(s.txs) for s in streams)
    rejected: list[str] = []
    lock = threading.Lock()
    pids = cpu_pids()
    cpu_before = cpu_times(pids)
    own_before = os.times()
    with httpx.Client(base_url=watch_rpc, timeout=10) as http:
        start_height = rpc_height(watch_rpc)
        seen, committed, blocks = start_height, 0, []
        submitted_at: list[float] = []
        t0 = time.perf_counter()
        pool = ThreadPoolExecutor(max_workers=len(streams))
        futures = [pool.submit(submit_stream, s, rejected, lock) for s in streams]
        try:
            while True:
                if not submitted_at and all(f.done() for f in futures):
                    submitted_at.append(time.perf_counter() - t0)
                    for f in futures:
                        f.result()  # raises a submitter's exception here
                height = rpc_height(watch_rpc)
                if height > seen:
                    new = fetch_blocks(http, seen + 1, height)
                    blocks += new
                    committed += sum(b.num_txs for b in new)
                    seen = height
                if committed >= total or (submitted_at and committed >= total - len(rejected)):
                    seconds = time.perf_counter() - t0
                    break
                if time.perf_counter() - t0 > timeout:
                    raise BenchError(
                        f"{committed}/{total} txs committed after {timeout:.0f}s ({len(rejected)} rejected)"
                    )
                time.sleep(0.05)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    if not submitted_at:
        submitted_at.append(time.perf_counter() - t0)
    latencies = [latency for f in futures for latency in f.result()]
    cpu_after = cpu_times(pids)
    own_after = os.times()
    cpu: dict[str, float] = {}
    for name, pid in pids.items():
        kind = name.split("/")[-1]
        cpu[kind] = cpu.get(kind, 0.0) + cpu_after.get(pid, 0.0) - cpu_before.get(pid, 0.0)
    cpu["bench_client"] = (own_after.user + own_after.system) - (own_before.user + own_before.system)
    return LoadResult(
        total - len(rejected),
        seconds,
        submitted_at[0],
        start_height,
        blocks,
        rejected,
        latencies,
        {k: round(v, 2) for k, v in cpu.items()},
    )


def failed_results(rpc: str, blocks: list[Block]) -> Counter[str]:
    """Non-zero DeliverTx (FinalizeBlock) codes across `blocks`, as 'code N: log' counts."""
    failures: Counter[str] = Counter()
    with httpx.Client(base_url=rpc, timeout=30) as http:
        for block in blocks:
            if not block.num_txs:
                continue
            result = http.post("/", content=jsonrpc_body("block_results", height=str(block.height))).json()["result"]
            for tx in result.get("txs_results") or []:
                if int(tx.get("code", 0)) != 0:
                    failures[f"code {tx['code']}: {tx.get('log', '')}"] += 1
    return failures


def wait_connected(rpcs: list[str], min_height: int, timeout: float = 120.0) -> None:
    """Every node has all its peers and has reached `min_height`."""
    deadline = time.monotonic() + timeout
    for rpc in rpcs:
        while True:
            try:
                peers = int(httpx.get(f"{rpc}/net_info", timeout=2).json()["result"]["n_peers"])
            except (httpx.HTTPError, KeyError, ValueError):
                peers = -1
            if peers >= len(rpcs) - 1 and rpc_height(rpc) >= min_height:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{rpc}: {peers} peers, height {rpc_height(rpc)} after {timeout:.0f}s")
            time.sleep(0.2)


def split(count: int, parts: int) -> list[int]:
    return [count // parts + (1 if i < count % parts else 0) for i in range(parts)]


# --- HACA -------------------------------------------------------------------------------------


def sender_keys(count: int) -> list[PrivateKey]:
    """The dev accounts first; past 10, deterministic bench keys that `fund_senders` pays."""
    keys = [key for _, key in dev_keys()][:count]
    keys += [PrivateKey.from_seed(f"haca bench sender {i}") for i in range(len(keys), count)]
    return keys


def fund_senders(client: ChainClient, keys: list[PrivateKey], rpcs: list[str]) -> None:
    """Pay each non-dev sender from a dev account and wait until all are committed (untimed)."""
    dev = [key for _, key in dev_keys()]
    extra = keys[len(dev) :]
    if not extra:
        return
    params = client.query("/auth/params")
    nonces = {key.address: client.nonce(key.address) for key in dev}
    streams: dict[str, list[bytes]] = {}
    for i, key in enumerate(extra):
        payer = dev[i % len(dev)]
        tx = build_tx(
            payer,
            client.chain_id,
            nonces[payer.address],
            (MsgSend(to=key.address, amount=10**21),),
            params["tx_fee_base"],
            params["tx_fee_per_byte"],
        )
        nonces[payer.address] += 1
        streams.setdefault(payer.address, []).append(tx.encode())
    load = run_load([Stream(rpcs[0], txs) for txs in streams.values()], rpcs[0], 120, dict)
    if load.rejected:
        raise BenchError(f"funding bench senders failed: {load.rejected[:3]}")
    # The block is stored before the app commits it: poll until every payment shows.
    deadline = time.monotonic() + 30
    while unfunded := [key.address for key in extra if client.balance(key.address) <= 0]:
        if time.monotonic() > deadline:
            raise BenchError(f"bench senders not funded: {unfunded}")
        time.sleep(0.2)


def haca_streams(client: ChainClient, keys: list[PrivateKey], counts: list[int], rpcs: list[str]) -> list[Stream]:
    """Pre-signed transfers: sender k sends counts[k] txs (nonces from its current one) to sender k+1."""
    params = client.query("/auth/params")
    streams = []
    for k, (key, count) in enumerate(zip(keys, counts, strict=True)):
        to = keys[(k + 1) % len(keys)].address
        start = client.nonce(key.address)
        txs = [
            build_tx(
                key,
                client.chain_id,
                start + i,
                (MsgSend(to=to, amount=1 + i),),
                params["tx_fee_base"],
                params["tx_fee_per_byte"],
            ).encode()
            for i in range(count)
        ]
        streams.append(Stream(rpcs[k % len(rpcs)], txs))
    return streams


@dataclass
class NetworkRun:
    """One network's rounds (same network, `--txs` txs each) and what went wrong."""

    rounds: list[LoadResult] = field(default_factory=list)
    failed: Counter[str] = field(default_factory=Counter)
    tx_bytes: float = 0.0
    sign_seconds: list[float] = field(default_factory=list)
    profile: str | None = None

    @property
    def tps(self) -> float:
        return statistics.median(r.tps for r in self.rounds)

    @property
    def rejected(self) -> list[str]:
        return [problem for r in self.rounds for problem in r.rejected]


def wait_nonces(client: ChainClient, expected: dict[str, int], timeout: float = 30.0) -> None:
    """Each sender's nonce reaches what it sent (the app commits a little after the block is stored)."""
    deadline = time.monotonic() + timeout
    while True:
        wrong = {a: (client.nonce(a), n) for a, n in expected.items() if client.nonce(a) != n}
        if not wrong:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"sender nonces (got, expected): {wrong}")
        time.sleep(0.2)


def bench_haca(args: argparse.Namespace, root: Path) -> NetworkRun:
    home = root / "haca"
    net: Devnet | None = None
    profiler: Profiler | None = None
    run = NetworkRun()
    try:
        # validators only: no hub or inference node competing for CPU
        net = devnet = up(home, args.validators, timeout_commit=args.timeout_commit, inference=False)
        net.wait_ready(2, 120)
        state = net.load()
        rpcs = [n.rpc for n in state.nodes]
        wait_connected(rpcs, 3)
        client = ChainClient(rpcs, state.chain_id)
        try:
            keys = sender_keys(args.senders)
            fund_senders(client, keys, rpcs)
            counts = split(args.txs, len(keys))
            for round_no in range(args.rounds):
                start_nonces = {key.address: client.nonce(key.address) for key in keys}
                t = time.perf_counter()
                streams = haca_streams(client, keys, counts, rpcs)
                run.sign_seconds.append(time.perf_counter() - t)
                run.tx_bytes = statistics.fmean(len(tx) for s in streams for tx in s.txs)
                print(
                    f"  round {round_no + 1}: signed {args.txs} transfers in {run.sign_seconds[-1]:.1f}s "
                    f"(mean {run.tx_bytes:.0f} bytes); submitting"
                )
                if args.profile and round_no == 0:
                    app_pid = devnet_pids(net)[f"{state.nodes[0].name}/haca_app"]
                    profiler = Profiler(app_pid, root / "haca_app.raw")
                load = run_load(streams, rpcs[0], args.deadline, lambda: devnet_pids(devnet))
                if profiler:
                    run.profile = profiler.finish()
                    profiler = None
                run.rounds.append(load)
                print(f"    {load.tps:.1f} tx/s")
                # All committed with code 0: each sender's nonce moved by what it sent (FinalizeBlock
                # bumps the nonce even when a message fails, so the result codes are checked too).
                wait_nonces(client, {k.address: start_nonces[k.address] + n for k, n in zip(keys, counts, strict=True)})
                run.failed += failed_results(rpcs[0], load.blocks)
            return run
        finally:
            client.close()
    finally:
        if profiler:
            profiler.finish()
        if net is not None and net.exists():
            net.stop()
        shutil.rmtree(home, ignore_errors=True)


# --- plain CometBFT networks: kvstore (in-process Go app) and noop (Python app over the socket) ---


@dataclass
class CometNode:
    home: Path
    rpc_port: int
    p2p_port: int
    node_id: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def rpc(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    @property
    def socket(self) -> Path:
        return self.home / "app.sock"


class CometNet:
    """N CometBFT nodes configured like the HACA devnet, running `app`: "kvstore" (CometBFT's
    built-in app, in-process) or "noop" (bench/noop_app.py behind a unix socket)."""

    def __init__(self, root: Path, app: str, validators: int, timeout_commit: str) -> None:
        self.root = root
        self.app = app
        self.timeout_commit = timeout_commit
        ports = free_ports(2 * validators)
        self.nodes = [CometNode(root / f"node{i}", ports[2 * i], ports[2 * i + 1]) for i in range(validators)]

    def create(self) -> None:
        validators = []
        for i, node in enumerate(self.nodes):
            cometbft("init", "--home", str(node.home))
            node.node_id = cometbft("show-node-id", "--home", str(node.home)).strip()
            key = json.loads((node.home / "config" / "priv_validator_key.json").read_text())
            validators.append({"address": key["address"], "pub_key": key["pub_key"], "power": "10", "name": f"n{i}"})
        genesis = json.loads((self.nodes[0].home / "config" / "genesis.json").read_text())
        genesis.update(
            genesis_time=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            chain_id=f"{self.app}-bench",
            initial_height="1",
            validators=validators,
            app_hash="",
        )
        for node in self.nodes:
            (node.home / "config" / "genesis.json").write_text(json.dumps(genesis, indent=2))
            peers = ",".join(f"{n.node_id}@127.0.0.1:{n.p2p_port}" for n in self.nodes if n is not node)
            config = node.home / "config" / "config.toml"
            text = config.read_text()
            for (section, key), value in {
                ("", "moniker"): node.home.name,
                ("", "proxy_app"): "kvstore" if self.app == "kvstore" else f"unix://{node.socket}",
                ("rpc", "laddr"): f"tcp://127.0.0.1:{node.rpc_port}",
                ("p2p", "laddr"): f"tcp://127.0.0.1:{node.p2p_port}",
                ("p2p", "persistent_peers"): peers,
                ("p2p", "addr_book_strict"): False,
                ("p2p", "allow_duplicate_ip"): True,
                ("consensus", "timeout_commit"): self.timeout_commit,
                ("", "log_level"): LOG_LEVEL,
            }.items():
                text = set_toml_value(text, section, key, value)
            config.write_text(text)

    def start(self) -> None:
        for node in self.nodes:
            with open(node.home / "node.log", "ab") as log:
                if self.app == "noop":
                    node.procs["noop_app"] = spawn([sys.executable, str(BENCH / "noop_app.py"), str(node.socket)], log)
                    deadline = time.monotonic() + 30
                    while not node.socket.exists():
                        if node.procs["noop_app"].poll() is not None or time.monotonic() > deadline:
                            raise BenchError(f"noop app for {node.home.name} did not start; see {log.name}")
                        time.sleep(0.05)
                proxy = ["--proxy_app=kvstore"] if self.app == "kvstore" else []
                node.procs["cometbft"] = spawn([cometbft_binary(), "node", "--home", str(node.home), *proxy], log)

    def pids(self) -> dict[str, int]:
        return {f"{n.home.name}/{kind}": proc.pid for n in self.nodes for kind, proc in n.procs.items()}

    def stop(self) -> None:
        for kind in ("cometbft", "noop_app"):  # CometBFT first: it must not see its app vanish
            procs = [n.procs[kind] for n in self.nodes if kind in n.procs and n.procs[kind].poll() is None]
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def spawn(argv: list[str], log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )


def cometbft(*args: str) -> str:
    done = subprocess.run([cometbft_binary(), *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"cometbft {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def kv_streams(counts: list[int], tx_bytes: int, rpcs: list[str], tag: str) -> list[Stream]:
    """Unique `key=value` txs of `tx_bytes` bytes, split like the HACA load."""
    streams = []
    for k, count in enumerate(counts):
        txs = []
        for i in range(count):
            key = f"bench-{tag}-{k:03d}-{i:06d}"
            filler = max(1, tx_bytes - len(key) - 1)
            txs.append(f"{key}={os.urandom(filler).hex()[:filler]}".encode())
        streams.append(Stream(rpcs[k % len(rpcs)], txs))
    return streams


def bench_comet(args: argparse.Namespace, root: Path, app: str, tx_bytes: int) -> NetworkRun:
    net = CometNet(root / app, app, args.validators, args.timeout_commit)
    run = NetworkRun(tx_bytes=tx_bytes)
    try:
        net.create()
        net.start()
        rpcs = [n.rpc for n in net.nodes]
        wait_connected(rpcs, 3)
        for round_no in range(args.rounds):
            streams = kv_streams(split(args.txs, args.senders), tx_bytes, rpcs, f"r{round_no}")
            print(f"  round {round_no + 1}: {args.txs} txs of {tx_bytes} bytes; submitting")
            load = run_load(streams, rpcs[0], args.deadline, net.pids)
            run.rounds.append(load)
            print(f"    {load.tps:.1f} tx/s")
            run.failed += failed_results(rpcs[0], load.blocks)
        return run
    finally:
        net.stop()
        shutil.rmtree(net.root, ignore_errors=True)


# --- profiling (optional: py-spy in the venv) -------------------------------------------------


class Profiler:
    """py-spy sampling one app process for the duration of the load."""

    def __init__(self, pid: int, raw: Path) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
        self.raw = raw
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", "200", "--nonblocking", "--format", "raw", "-o", str(raw)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # attach before the load starts

    def finish(self) -> str | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.raw.exists():
            return None
        return summarize_profile(self.raw.read_text())


def frame_name(frame: str) -> str:
    """'func (/long/path/pkg/mod.py:123)' -> 'func (pkg/mod.py)': one entry per function."""
    name, _, location = frame.partition(" (")
    path = location.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(Path(path).parts[-2:])})" if path else name


def summarize_profile(collapsed: str, top: int = 30) -> str:
    """Inclusive and self share of samples per function from py-spy's collapsed stacks."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [frame_name(frame) for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    if not total:
        return "no samples\n"
    lines = [f"{total} samples of the val0 app process (py-spy --rate 200, idle time excluded)", "", "inclusive:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    lines += ["", "self:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    return "\n".join(lines) + "\n"


# --- main -------------------------------------------------------------------------------------


def cometbft_version() -> str:
    try:
        return cometbft("version").strip()
    except (BenchError, FileNotFoundError):
        return "unknown"


def row(name: str, load: LoadResult) -> str:
    stats = load.block_stats()
    latency = load.latency_ms()
    return (
        f"{name:<11} {load.txs:>6} {load.seconds:>8.2f} {load.tps:>8.1f} {load.submit_seconds:>9.2f} "
        f"{stats['blocks_with_txs']:>7} {stats['max_txs_per_block']:>8} {stats['mean_block_interval_s'] or 0:>9.3f} "
        f"{latency.get('p50', 0):>7.1f} {latency.get('p99', 0):>7.1f}"
    )


def summarize_cpu(cpu: dict[str, float], seconds: float) -> dict[str, float]:
    """CPU seconds per process kind (haca_app, cometbft, supervisor, bench_client), summed over
    validators, and `cores_busy`: all of it divided by the wall time."""
    out = {k: round(v, 2) for k, v in sorted(cpu.items())}
    out["cores_busy"] = round(sum(cpu.values()) / seconds, 2)
    return out


def round_doc(load: LoadResult) -> dict[str, Any]:
    return {
        "tps": round(load.tps, 1),
        "seconds": round(load.seconds, 3),
        "submit_seconds": round(load.submit_seconds, 3),
        "checktx_latency_ms": load.latency_ms(),
        "cpu_seconds": summarize_cpu(load.cpu, load.seconds),
        "cpu_ms_per_tx": {k: round(1000 * v / load.txs, 2) for k, v in sorted(load.cpu.items())},
        **load.block_stats(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--txs", type=int, default=2000, help="txs per round and network (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="loads per network; tx/s is their median (default 3)")
    parser.add_argument("--validators", type=int, default=4)
    parser.add_argument(
        "--senders",
        type=int,
        default=10,
        help="parallel streams = HACA senders; the first 10 are the dev accounts, more get funded first (default 10)",
    )
    parser.add_argument("--timeout-commit", default="500ms", help="consensus.timeout_commit for all (default 500ms)")
    parser.add_argument("--deadline", type=float, default=900.0, help="give up on a round after this many seconds")
    parser.add_argument("--no-noop", action="store_true", help="skip the noop Python-socket-app network")
    parser.add_argument("--profile", action="store_true", help="sample val0's HACA app with py-spy in round 1")
    parser.add_argument("--output", type=Path, default=RESULTS / "chain_tps.json")
    args = parser.parse_args(argv)
    if min(args.txs, args.rounds, args.senders, args.validators) < 1:
        parser.error("--txs, --rounds, --senders and --validators must be positive")

    exit_on_sigterm()
    load_before = loadavg()
    runs: dict[str, NetworkRun] = {}
    with work_dir("chain_tps") as root:
        print(
            f"haca: {args.validators} validators, timeout_commit {args.timeout_commit}, "
            f"{args.rounds} x {args.txs} transfers from {args.senders} senders"
        )
        runs["haca"] = bench_haca(args, root)
        tx_bytes = round(runs["haca"].tx_bytes)
        for app in ("kvstore",) if args.no_noop else ("kvstore", "noop"):
            print(f"{app}: {args.validators} validators, same load")
            runs[app] = bench_comet(args, root, app, tx_bytes)

    problems = []
    for name, run in runs.items():
        problems += [f"{name}: CheckTx rejections: {run.rejected[:3]}"] if run.rejected else []
        problems += [f"{name}: txs failed in blocks: {dict(run.failed)}"] if run.failed else []

    haca, kv = runs["haca"], runs["kvstore"]
    ratio = haca.tps / kv.tps
    print()
    header = ("round", "txs", "seconds", "tx/s", "submit_s", "blocks", "max/blk", "blk_int_s", "p50_ms", "p99_ms")
    widths = (6, 8, 8, 9, 7, 8, 9, 7, 7)
    print(f"{header[0]:<11} " + " ".join(f"{h:>{w}}" for h, w in zip(header[1:], widths, strict=True)))
    for name, run in runs.items():
        for i, load in enumerate(run.rounds):
            print(row(f"{name} {i + 1}", load))
    print("\nmedian tx/s: " + ", ".join(f"{name} {run.tps:.1f}" for name, run in runs.items()))
    print(f"ratio haca/kvstore = {ratio:.2f} (target >= 0.5)")
    for name, run in runs.items():
        print(f"CPU seconds, {name} rounds: {[summarize_cpu(r.cpu, r.seconds) for r in run.rounds]}")
    if haca.profile:
        print("\n" + "\n".join(haca.profile.splitlines()[:25]))

    result: dict[str, Any] = {
        "haca_tps": round(haca.tps, 1),
        "kvstore_tps": round(kv.tps, 1),
        "ratio_vs_kvstore": round(ratio, 3),
    }
    if "noop" in runs:
        result["noop_socket_tps"] = round(runs["noop"].tps, 1)
    result.update(
        {
            "txs": args.txs,
            "rounds": args.rounds,
            "validators": args.validators,
            "timeout_commit": args.timeout_commit,
            "senders": args.senders,
            "tx_bytes": round(haca.tx_bytes, 1),
        }
    )
    for name, run in runs.items():
        result[name] = {
            "tps_median": round(run.tps, 1),
            "committed_ok": sum(r.txs for r in run.rounds) - sum(run.failed.values()),
            **({"sign_seconds": [round(x, 3) for x in run.sign_seconds]} if run.sign_seconds else {}),
            "rounds": [round_doc(r) for r in run.rounds],
        }
    result["machine"] = machine(load_before, cometbft=cometbft_version())
    result["date"] = timestamp()
    result["problems"] = problems
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    if haca.profile:
        (args.output.parent / "haca_app_profile.txt").write_text(haca.profile)
    print(f"wrote {args.output}")
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
