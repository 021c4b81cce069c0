"""How long a new node takes to join a running chain: state sync from a snapshot against a replay
from genesis (issue 24, part 3).

A one-validator devnet (short blocks, so heights come fast) runs until each target height. There,
each round adds a full node with the devnet's genesis and peers and starts it: either as it is (it
replays every block from genesis) or after `haca validator join`'s configuration (a light-client
verified trust header; CometBFT fetches the validator's latest snapshot and the app restores it).
The time is from start to the node's height reaching the chain's height at start (the validator
runs 1 s blocks while nodes join, so every round joins at about the target height). The chain's
blocks carry no txs (the validators' own liveness writes only): a replay of busy blocks costs
more, so the ratio here is a floor. Results: bench/results/statesync.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from common import exit_on_sigterm, fmt, haca_source, loadavg, machine, spread, stop_devnet, timestamp, work_dir

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from haca.chain.home import ValidatorHome  # noqa: E402
from haca.chain.supervisor import configure, configure_state_sync  # noqa: E402
from haca.client.config import ClientConfig, connect  # noqa: E402
from haca.client.rpc import CometRpc  # noqa: E402
from haca.devnet.network import Devnet, up  # noqa: E402

RESULTS = ROOT / "results" / "statesync.json"
TRUST_BACK = 300  # blocks below the latest: haca validator join's default
SNAPSHOT_INTERVAL = 500


def wait_height(rpc: CometRpc, height: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if rpc.height() >= height:
                return
        except Exception:  # not answering yet
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{rpc.url} did not reach height {height} in {timeout:.0f} s")
        time.sleep(0.1)


def block_time(net: Devnet, timeout_commit: str) -> None:
    """Restart the validator with another timeout_commit (fast to build heights, slow to measure)."""
    configure(ValidatorHome(Path(net.load().nodes[0].home)), {("consensus", "timeout_commit"): timeout_commit})
    net.stop("val0")
    net.start("val0")


def join(net: Devnet, home: Path, name: str, state_sync: bool, timeout: float) -> float:
    """Seconds from start until a new full node `name` is at the chain's height at its start."""
    record = net.add_validator(name)
    if state_sync:
        chain = connect(ClientConfig.load(home))
        try:
            height = max(1, chain.verify_latest() - TRUST_BACK)
            trust_hash = chain.verified_header_hash(height)
            config = chain.rpc.urls
        finally:
            chain.close()
        configure_state_sync(ValidatorHome(Path(record.home)), config, height, trust_hash, 3600 * 24 * 365)
    validator = CometRpc(net.load().nodes[0].rpc)
    target = validator.height()
    started = time.monotonic()
    net.start(name)
    try:
        wait_height(CometRpc(f"http://127.0.0.1:{record.rpc_port}"), target, timeout)
        return time.monotonic() - started
    finally:
        net.stop(name, kill=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heights", default="1000,5000", help="comma-separated target heights (the issue: 1k/5k/20k)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout-commit", default="10ms")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    exit_on_sigterm()
    heights = [int(h) for h in args.heights.split(",")]
    load_before = loadavg()
    results: dict[str, Any] = {}
    with work_dir("statesync") as work:
        home = work / "net"
        net = up(home, validators=1, timeout_commit=args.timeout_commit, inference=False)
        try:
            # At these block rates a devnet's snapshot every 100 blocks is pruned (keep 2) before a
            # joining node has fetched it: snapshot every SNAPSHOT_INTERVAL, keep more.
            validator = ValidatorHome(Path(net.load().nodes[0].home))
            settings = json.loads(validator.app_config.read_text())
            settings.update(snapshot_interval=SNAPSHOT_INTERVAL, snapshot_keep=5)
            validator.app_config.write_text(json.dumps(settings) + "\n")
            rpc = CometRpc(net.load().nodes[0].rpc)
            made = time.monotonic()
            for height in heights:
                block_time(net, args.timeout_commit)
                wait_height(rpc, height, timeout=3 * 3600)
                block_time(net, "1s")  # while nodes join: the chain barely grows between rounds
                rpc = CometRpc(net.load().nodes[0].rpc)
                wait_height(rpc, height, timeout=60)
                print(f"height {height} after {time.monotonic() - made:.0f} s", flush=True)
                times: dict[str, list[float]] = {"replay": [], "state_sync": []}
                for r in range(args.rounds):
                    for method in ("replay", "state_sync"):
                        seconds = join(net, home, f"{method[:2]}{height}r{r}", method == "state_sync", 1800)
                        times[method].append(seconds)
                        print(f"  {method:>10} round {r}: {seconds:.1f} s", flush=True)
                ratios = [a / b for a, b in zip(times["replay"], times["state_sync"], strict=True)]
                results[str(height)] = {
                    "replay_s": spread(times["replay"], 2),
                    "state_sync_s": spread(times["state_sync"], 2),
                    "replay_over_state_sync": spread(ratios, 2),
                }
        finally:
            stop_devnet(net, home)
    result = {
        "bench": "statesync",
        "when": timestamp(),
        "haca": haca_source(),
        "machine": machine(load_before),
        "timeout_commit": args.timeout_commit,
        "rounds": args.rounds,
        "trust_back_blocks": TRUST_BACK,
        "heights": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    for height, row in results.items():
        print(
            f"{height:>6}: replay {fmt(row['replay_s'])} s, state sync {fmt(row['state_sync_s'])} s,"
            f" ratio {fmt(row['replay_over_state_sync'])}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
