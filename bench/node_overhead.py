"""What HACA's paid, receipted /v1/infer costs over the same model behind a minimal endpoint.

Three ways to run the same ONNX session on the same input, measured in one run:
  bare     session.run in process (no HTTP),
  fastapi  a minimal FastAPI endpoint (bench/minimal_server.py: parse JSON, run, answer JSON),
  node     the HACA node on a devnet: x402 payment check (EIP-712 signature, escrow), model run,
           signed receipt written to the durable queue, background settlement on chain.
Each HTTP target gets the same load (concurrency 1 and 16, pre-built requests; every node request
carries its own pre-signed payment authorisation). Results: bench/results/node_overhead.json.
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

from haca.client.payment import PaymentOffer, sign_payment
from haca.client.sdk import Client
from haca.devnet.layout import example_models_dir
from haca.devnet.network import Devnet, up
from haca.devnet.processes import free_ports, http_ok

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "node_overhead.json"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


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


async def load(url: str, requests: list[tuple[bytes, dict[str, str]]], concurrency: int) -> dict[str, float]:
    """Send every request once, `concurrency` in flight; all must answer 200."""
    queue: asyncio.Queue[tuple[bytes, dict[str, str]]] = asyncio.Queue()
    for item in requests:
        queue.put_nowait(item)
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:

        async def worker() -> None:
            while not queue.empty():
                body, headers = queue.get_nowait()
                t = time.perf_counter()
                response = await http.post(url, content=body, headers={"content-type": "application/json", **headers})
                latencies.append(time.perf_counter() - t)
                if response.status_code != 200:
                    raise RuntimeError(f"{url}: HTTP {response.status_code}: {response.text[:300]}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return summary(latencies, elapsed)


def node_requests(client: Client, url: str, model: str, example: Any, n: int) -> list[tuple[bytes, dict[str, str]]]:
    """`n` node requests, each with its own signed payment (signing is the client's cost, done here)."""
    body = json.dumps({"model": model, "mode": "vanilla", "input": example}).encode()
    first = httpx.post(url, content=body, headers={"content-type": "application/json"}).json()
    offer = PaymentOffer.from_402(first, model, "vanilla")
    fee = offer.fee(len(example) if offer.price_unit == "row" else 1)
    return [(body, {"X-PAYMENT": sign_payment(client.key, offer, fee)[1]}) for _ in range(n)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    entry = next(
        m for m in json.loads((example_models_dir() / "manifest.json").read_text())["models"] if m["name"] == args.model
    )
    model_path = example_models_dir() / entry["file"]
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
        result: dict[str, Any] = {"model": args.model, "requests": args.requests}
        print(f"bare session.run x {args.requests} …", flush=True)
        result["bare"] = bench_bare(model_path, entry["example_input"], args.requests)
        plain = json.dumps({"input": entry["example_input"]}).encode()
        for concurrency in (1, 16):
            print(f"concurrency {concurrency}: minimal FastAPI …", flush=True)
            asyncio.run(load(f"http://127.0.0.1:{port}/infer", [(plain, {})] * 200, concurrency))  # warm-up
            result[f"fastapi_c{concurrency}"] = asyncio.run(
                load(f"http://127.0.0.1:{port}/infer", [(plain, {})] * args.requests, concurrency)
            )
            print(f"concurrency {concurrency}: HACA node (paid, receipted) …", flush=True)
            reqs = node_requests(client, node_url, args.model, entry["example_input"], args.requests + 200)
            asyncio.run(load(node_url, reqs[:200], concurrency))
            result[f"node_c{concurrency}"] = asyncio.run(load(node_url, reqs[200:], concurrency))
        receipts = httpx.get(node_url.replace("/v1/infer", "/healthz")).json()["pending_receipts"]
        result["node_pending_receipts_after"] = receipts
        client.close()
    finally:
        baseline.terminate()
        baseline.wait(10)
        Devnet(work / "home").stop()
    for c in (1, 16):
        result[f"ratio_vs_fastapi_c{c}"] = round(result[f"node_c{c}"]["rps"] / result[f"fastapi_c{c}"]["rps"], 3)
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "onnxruntime": ort.__version__}
    result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--model", default="iris")
    args = parser.parse_args()
    result = run(args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'target':<14}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}")
    for key in ("bare", "fastapi_c1", "node_c1", "fastapi_c16", "node_c16"):
        r = result[key]
        print(f"{key:<14}{r['p50_ms']:>9}{r['p99_ms']:>9}{r['rps']:>9}")
    print(
        f"\nnode / minimal FastAPI throughput: c1 {result['ratio_vs_fastapi_c1']}, c16 {result['ratio_vs_fastapi_c16']}"
        " (target >= 0.7 at c16)"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
