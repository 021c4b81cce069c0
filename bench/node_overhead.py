"""What HACA's paid, receipted /v1/infer costs over the same model behind a minimal endpoint.

Three ways to run the same ONNX session on the same input, measured in one run:
  bare     session.run in process (no HTTP),
  fastapi  a minimal FastAPI endpoint (bench/minimal_server.py: parse JSON, run, answer JSON),
  node     the HACA node on a devnet: x402 payment check (EIP-712 signature, escrow), model run,
           signed receipt written to the durable queue, background settlement on chain.
Each HTTP target gets the same load (concurrency 1 and 16, pre-built requests; every node request
carries its own pre-signed payment authorisation), `--rounds` times, alternating targets; the
ratios are reported as min/median/max over the rounds. A last scenario measures what unpaid
requests cost paying ones: paid latency at concurrency 1 alone, then with 4 senders posting
unpaid ~1 MB bodies as fast as they can. Results: bench/results/node_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
from common import Requests, haca_source, node_requests, percentile, post_all, spread

from haca.client.sdk import Client
from haca.devnet.layout import example_models_dir
from haca.devnet.network import Devnet, up
from haca.devnet.processes import free_ports, http_ok

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "node_overhead.json"
TARGET_C16, TARGET_C1 = 0.7, 0.6  # node req/s / minimal FastAPI req/s, median of the rounds
TARGET_P99_C1 = 2.0  # node p99 / minimal FastAPI p99 at concurrency 1, median of the rounds


def summary(latencies: list[float], elapsed: float) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(latencies, 0.50) * 1e3, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1e3, 3),
        "rps": round(len(latencies) / elapsed, 1),
        "requests": len(latencies),
    }


def bench_bare(model_path: Path, example: Any, n: int) -> dict[str, float]:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    meta = session.get_inputs()[0]
    feed = {meta.name: np.asarray(example, dtype=np.float32)}
    for _ in range(200):
        session.run(None, feed)
    latencies = []
    started = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        session.run(None, feed)
        latencies.append(time.perf_counter() - t)
    return summary(latencies, time.perf_counter() - started)


async def load(url: str, requests: Requests, concurrency: int) -> dict[str, float]:
    """Send every request once, `concurrency` in flight; all must answer 200."""
    return summary(*await post_all(url, requests, concurrency))


async def paid_under_unpaid_flood(
    url: str, requests: list[tuple[bytes, dict[str, str]]], senders: int, body: bytes
) -> tuple[dict[str, float], int]:
    """Paid requests at concurrency 1 while `senders` loops post unpaid `body`s (each must get a
    402); (the paid load's summary, how many unpaid requests were refused meanwhile)."""
    stop, refused = asyncio.Event(), [0]

    async def flood() -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            while not stop.is_set():
                response = await http.post(url, content=body, headers={"content-type": "application/json"})
                if response.status_code != 402:
                    raise RuntimeError(f"unpaid request answered HTTP {response.status_code}")
                refused[0] += 1

    tasks = [asyncio.create_task(flood()) for _ in range(senders)]
    await asyncio.sleep(0.5)  # the flood is running before the clock starts
    try:
        paid = await load(url, requests, 1)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return paid, refused[0]


def run(args: argparse.Namespace) -> dict[str, Any]:
    entry = next(
        m for m in json.loads((example_models_dir() / "manifest.json").read_text())["models"] if m["name"] == args.model
    )
    model_path = example_models_dir() / entry["file"]
    load_before = round(os.getloadavg()[0], 2)
    work = ROOT / ".work" / "node_overhead"
    shutil.rmtree(work, ignore_errors=True)
    print(f"devnet (1 validator, hub, node0) in {work} …", flush=True)
    net = up(work / "home", validators=1, timeout_commit="500ms")
    port = free_ports(1)[0]
    baseline = subprocess.Popen(
        [sys.executable, str(ROOT / "minimal_server.py"), "--model", str(model_path), "--port", str(port)]
    )
    try:
        while not http_ok(f"http://127.0.0.1:{port}/healthz"):
            time.sleep(0.1)
        client = Client.from_home(work / "home", "dev1")
        client.deposit(10**15)
        node_url = f"{net.status()['nodes'][0]['url']}/v1/infer"
        result: dict[str, Any] = {"model": args.model, "requests": args.requests, "rounds": args.rounds}
        print(f"bare session.run x {args.requests} …", flush=True)
        result["bare"] = bench_bare(model_path, entry["example_input"], args.requests)
        plain = json.dumps({"input": entry["example_input"]}).encode()
        fastapi_url = f"http://127.0.0.1:{port}/infer"
        for concurrency in (1, 16):
            asyncio.run(load(fastapi_url, [(plain, {})] * 200, concurrency))  # warm-up
            asyncio.run(
                load(node_url, node_requests(client, node_url, args.model, entry["example_input"], 200), concurrency)
            )
        rounds: list[dict[str, Any]] = []
        for n in range(args.rounds):
            measured: dict[str, Any] = {}
            for concurrency in (1, 16):
                print(
                    f"round {n + 1}/{args.rounds}, concurrency {concurrency}: minimal FastAPI, HACA node …", flush=True
                )
                measured[f"fastapi_c{concurrency}"] = asyncio.run(
                    load(fastapi_url, [(plain, {})] * args.requests, concurrency)
                )
                reqs = node_requests(client, node_url, args.model, entry["example_input"], args.requests)
                measured[f"node_c{concurrency}"] = asyncio.run(load(node_url, reqs, concurrency))
                measured[f"ratio_vs_fastapi_c{concurrency}"] = round(
                    measured[f"node_c{concurrency}"]["rps"] / measured[f"fastapi_c{concurrency}"]["rps"], 3
                )
                measured[f"p99_vs_fastapi_c{concurrency}"] = round(
                    measured[f"node_c{concurrency}"]["p99_ms"] / measured[f"fastapi_c{concurrency}"]["p99_ms"], 3
                )
                measured[f"loadavg_1m_c{concurrency}"] = round(os.getloadavg()[0], 2)
            rounds.append(measured)
        result["rounds_detail"] = rounds
        median_round = sorted(rounds, key=lambda r: r["ratio_vs_fastapi_c16"])[len(rounds) // 2]
        for key in ("fastapi_c1", "node_c1", "fastapi_c16", "node_c16"):
            result[key] = median_round[key]
        for c in (1, 16):
            result[f"ratio_vs_fastapi_c{c}"] = spread([r[f"ratio_vs_fastapi_c{c}"] for r in rounds], None)
            result[f"p99_vs_fastapi_c{c}"] = spread([r[f"p99_vs_fastapi_c{c}"] for r in rounds], None)
            for target in ("fastapi", "node"):
                for figure in ("p50_ms", "p99_ms", "rps"):
                    result[f"{target}_c{c}_{figure}"] = spread([r[f"{target}_c{c}"][figure] for r in rounds], None)
        result["targets"] = {
            "ratio_vs_fastapi_c16_min": TARGET_C16,
            "ratio_vs_fastapi_c1_min": TARGET_C1,
            "p99_vs_fastapi_c1_max": TARGET_P99_C1,
            "ratio_c16_met": result["ratio_vs_fastapi_c16"]["median"] >= TARGET_C16,
            "ratio_c1_met": result["ratio_vs_fastapi_c1"]["median"] >= TARGET_C1,
            "p99_c1_met": result["p99_vs_fastapi_c1"]["median"] <= TARGET_P99_C1,
        }

        print("paid latency alone, then with 4 senders of unpaid 1 MB bodies …", flush=True)
        flood_body = json.dumps({"model": args.model, "input": [entry["example_input"][0]] * 40_000}).encode()
        flood: list[dict[str, Any]] = []
        for _ in range(args.rounds):
            alone = asyncio.run(
                load(node_url, node_requests(client, node_url, args.model, entry["example_input"], 300), 1)
            )
            reqs = node_requests(client, node_url, args.model, entry["example_input"], 300)
            flooded, refused = asyncio.run(paid_under_unpaid_flood(node_url, reqs, 4, flood_body))
            flood.append(
                {
                    "alone_p50_ms": alone["p50_ms"],
                    "flooded_p50_ms": flooded["p50_ms"],
                    "flooded_p99_ms": flooded["p99_ms"],
                    "unpaid_refused": refused,
                    "p50_ratio": round(flooded["p50_ms"] / alone["p50_ms"], 3),
                }
            )
        result["unpaid_flood"] = {
            "senders": 4,
            "body_bytes": len(flood_body),
            "rounds_detail": flood,
            "p50_ratio": spread([f["p50_ratio"] for f in flood], None),
        }
        receipts = httpx.get(node_url.replace("/v1/infer", "/healthz")).json()["pending_receipts"]
        result["node_pending_receipts_after"] = receipts
        client.close()
    finally:
        baseline.terminate()
        baseline.wait(10)
        Devnet(work / "home").stop()
    result["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "haca_source": haca_source(),
        "loadavg_1m_before": load_before,
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }
    result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--model", default="iris")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    result = run(args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'target':<14}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}")
    for key in ("bare", "fastapi_c1", "node_c1", "fastapi_c16", "node_c16"):
        r = result[key]
        print(f"{key:<14}{r['p50_ms']:>9}{r['p99_ms']:>9}{r['rps']:>9}")
    c1, c16, p99 = result["ratio_vs_fastapi_c1"], result["ratio_vs_fastapi_c16"], result["p99_vs_fastapi_c1"]
    met = result["targets"]

    def says(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print(f"\nnode / minimal FastAPI over {c16['runs']} rounds (min / median / max):")
    for label, s, target, key, sign in (
        ("req/s c16", c16, TARGET_C16, "ratio_c16_met", ">="),
        ("req/s c1 ", c1, TARGET_C1, "ratio_c1_met", ">="),
        ("p99 c1   ", p99, TARGET_P99_C1, "p99_c1_met", "<="),
    ):
        print(f"  {label} {s['min']} / {s['median']} / {s['max']} (target {sign} {target}: {says(met[key])})")
    fl = result["unpaid_flood"]["p50_ratio"]
    print(f"paid p50 latency with 4 unpaid 1 MB senders / alone: {fl['min']} / {fl['median']} / {fl['max']}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
