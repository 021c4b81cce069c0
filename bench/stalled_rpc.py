"""What one stalled chain RPC costs the node's answers (issue 19, attack 6).

The node runs in process (its FastAPI app over httpx's ASGI transport) with a real ChainView and
CometRpc against a fake CometBFT RPC server (tests/unit/node/test_stalled_rpc.FakeRpc). Each round
measures, with the RPC healthy (the baseline) and then stalled (it accepts every request and never
answers), the latency of `GET /healthz` and of a paid `POST /v1/infer` from a client whose escrow
the node read before. Target: under the stall both answer within 100 ms (median over the rounds
of each round's p50 and max). Results: bench/results/stalled_rpc.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from common import spread

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from haca.client.payment import PaymentOffer, sign_payment  # noqa: E402
from tests.unit.node.nodehelpers import CLIENT  # noqa: E402
from tests.unit.node.test_api import INPUT, PRICE  # noqa: E402
from tests.unit.node.test_stalled_rpc import node_over_fake_rpc  # noqa: E402

RESULTS = ROOT / "results" / "stalled_rpc.json"
TARGET_MS = 100.0


async def one_round(work: Path, requests: int) -> dict[str, dict[str, list[float]]]:
    """Per state (healthy, stalled) and route: the latencies in ms of `requests` calls."""
    out: dict[str, dict[str, list[float]]] = {}
    with node_over_fake_rpc(work, 10**12, read_wait=3.0) as node:
        transport = httpx.ASGITransport(app=node.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node", timeout=60) as http:
            required = (await http.post("/v1/infer", json={"model": "double"})).json()
            offer = PaymentOffer.from_402(required, "double", "vanilla")
            body = {"model": "double", "input": INPUT}

            async def measure(state: str) -> None:
                healthz, infer = [], []
                for _ in range(requests):
                    started = time.perf_counter()
                    assert (await http.get("/healthz")).status_code == 200
                    healthz.append((time.perf_counter() - started) * 1000)
                    headers = {"X-PAYMENT": sign_payment(CLIENT, offer, PRICE)[1]}  # signed outside the timing
                    started = time.perf_counter()
                    answer = await http.post("/v1/infer", json=body, headers=headers)
                    infer.append((time.perf_counter() - started) * 1000)
                    assert answer.status_code == 200, answer.text
                out[state] = {"healthz_ms": healthz, "paid_known_client_ms": infer}

            await measure("healthy")
            node.rpc.stall()
            await asyncio.sleep(0.3)  # past the view's TTL: every cached read is stale now
            await measure("stalled")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=50, help="calls of each route per state per round")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rounds: list[dict[str, dict[str, list[float]]]] = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="haca-bench-stall-") as tmp:
            rounds.append(asyncio.run(one_round(Path(tmp), args.requests)))
    summary: dict[str, Any] = {}
    for state in ("healthy", "stalled"):
        for route in ("healthz_ms", "paid_known_client_ms"):
            p50 = [statistics.median(r[state][route]) for r in rounds]
            worst = [max(r[state][route]) for r in rounds]
            summary[f"{state}_{route}_p50"] = spread(p50, 2, runs=False)
            summary[f"{state}_{route}_max"] = spread(worst, 2, runs=False)
    for route in ("healthz_ms", "paid_known_client_ms"):
        healthy = [statistics.median(r["healthy"][route]) for r in rounds]
        stalled = [statistics.median(r["stalled"][route]) for r in rounds]
        summary[f"{route}_p50_ratio_stalled_vs_healthy"] = spread(
            [s / h for s, h in zip(stalled, healthy, strict=True)], 2, runs=False
        )
    met = all(summary[f"stalled_{route}_max"]["median"] < TARGET_MS for route in ("healthz_ms", "paid_known_client_ms"))
    result = {
        "bench": "stalled_rpc",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "rounds": args.rounds,
        "requests_per_route_per_state": args.requests,
        "target_ms": TARGET_MS,
        "target_met": met,
        "summary": summary,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in summary.items():
        print(f"{key:>48}  {value['min']:>8} / {value['median']:>8} / {value['max']:>8}")
    print(f"target: stalled healthz and known-client paid requests < {TARGET_MS:g} ms (median of max): {met}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
