"""Where the node's slow requests at concurrency 1 go: paid POST /v1/infer, one at a time, against a node
instrumented from the outside (the node's code is not changed).

    .venv/bin/python bench/node_stalls.py [--requests 3000] [--model iris] [--flush-interval S]

A 1-validator devnet as bench/node_overhead.py starts it; node0 is then restarted under this file's
`--wrap` mode, which runs `haca.node.main` unchanged with probes installed before it starts:

  gc         every collection (gc.callbacks): start, duration, generation, objects collected
  loop       every event-loop callback that ran longer than 2 ms (asyncio Handle._run timed)
  watchdog   a thread that, whenever the loop has been inside one callback for more than 4 ms, samples
             the main thread's stack (sys._current_frames) every 1 ms: what the loop was doing
  settler    each Settler.run_once: start and duration (a thread: it competes for the GIL)
  store      each ReceiptStore.add (the receipt's durable write, on the request path): duration
  threads    CPU seconds of every node thread over the run (/proc/PID/task), by thread name

The client records each request's send and answer time (time.perf_counter, CLOCK_MONOTONIC: the same
clock in both processes). Each request slower than 3x the median is matched with the events that
overlap it. Results: bench/results/node_stalls.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import os
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from common import group_cpu, node_requests, percentile, thread_cpu

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "node_stalls.json"

# --- the wrapper (runs inside the node process) -----------------------------------------------------------


def wrap(out: Path, argv: list[str]) -> None:
    events: dict[str, list[Any]] = collections.defaultdict(list)
    variant = os.environ.get("NODE_STALLS_VARIANT", "")
    if variant == "switch_1ms":
        sys.setswitchinterval(0.0005)
    if variant == "gc_freeze":
        gc.set_threshold(50_000, 50, 1000)
    main_ident = threading.get_ident()
    state = {"cb_start": 0.0, "cb_name": ""}
    gc_start: list[float] = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_start[0] = time.perf_counter()
        else:
            end = time.perf_counter()
            events["gc"].append(
                (gc_start[0], round((end - gc_start[0]) * 1e3, 3), info["generation"], info["collected"])
            )

    gc.callbacks.append(on_gc)

    import asyncio.events

    original_run = asyncio.events.Handle._run

    def timed_run(self: asyncio.events.Handle) -> None:
        start, cpu = time.perf_counter(), time.thread_time()
        state["cb_start"], state["cb_handle"] = start, self
        try:
            original_run(self)
        finally:
            end = time.perf_counter()
            state["cb_start"] = 0.0
            if end - start > 0.002:
                used = round((time.thread_time() - cpu) * 1e3, 3)
                events["loop"].append((start, round((end - start) * 1e3, 3), _describe(self), used))

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]

    def watchdog() -> None:
        while True:
            time.sleep(0.001)
            start = state["cb_start"]
            if start and time.perf_counter() - start > 0.004:
                frame = sys._current_frames().get(main_ident)
                if frame is None:
                    continue
                stack = traceback.extract_stack(frame)[-14:]
                text = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(stack))
                events["samples"].append((start, round((time.perf_counter() - start) * 1e3, 2), text))
                # and what the node's other threads are doing meanwhile (the settler, chain reads)
                names = {t.ident: t.name for t in threading.enumerate()}
                for ident, other in sys._current_frames().items():
                    name = names.get(ident, "?")
                    if ident in (main_ident, threading.get_ident()) or name.startswith("stall-"):
                        continue
                    top = traceback.extract_stack(other)[-6:]
                    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(top))
                    events["others"].append((start, name.split("_")[0], where))

    threading.Thread(target=watchdog, name="stall-watchdog", daemon=True).start()

    from haca.node import receipts, settler

    original_once = settler.Settler.run_once

    def run_once(self: Any) -> int:
        if variant == "settler_off":
            return 0
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return original_once(self)
        finally:
            end = time.perf_counter()
            events["settler"].append((start, round((end - start) * 1e3, 3), round((time.thread_time() - cpu) * 1e3, 3)))

    settler.Settler.run_once = run_once  # type: ignore[method-assign]
    original_add = receipts.ReceiptStore.add

    def add(self: Any, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        try:
            original_add(self, *args, **kwargs)
        finally:
            events["store"].append((start, round((time.perf_counter() - start) * 1e3, 3)))

    receipts.ReceiptStore.add = add  # type: ignore[method-assign]

    from haca.node import chainview

    original_load = chainview.ChainView._load

    def load(self: Any, key: tuple[str, str], reader: Any) -> Any:
        """A chain read started (a miss, or a stale entry revalidated): when, which, and how long it took."""
        start = time.perf_counter()
        on_loop = chainview.on_event_loop()

        def timed_reader() -> Any:
            try:
                return reader()
            finally:
                events["reads"].append((start, round((time.perf_counter() - start) * 1e3, 3), key[0], on_loop))

        return original_load(self, key, timed_reader)

    chainview.ChainView._load = load  # type: ignore[method-assign]
    original_forget = chainview.ChainView.forget

    def forget(self: Any, client: str, allowance_id: str | None = None) -> None:
        events["forget"].append((time.perf_counter(), 0.0))
        if variant != "no_forget":
            original_forget(self, client, allowance_id)

    chainview.ChainView.forget = forget  # type: ignore[method-assign]

    if variant == "debit":
        # The proposed haca change, emulated: a settled tx debits the cached escrow by what the chain
        # took from the lane (fees + settlement fees) instead of dropping the entry (see the module doc).
        def settled_chunk(self: Any, chunk: list[Any]) -> None:
            fees: dict[str, list[int]] = collections.defaultdict(list)
            for stored in chunk:
                self._unseen_passes.pop(stored.item.receipt.id, None)
                fees[stored.item.receipt.receipt.client].append(stored.item.receipt.receipt.fee)
            view = self.view
            for client, paid in fees.items():
                debit = sum(paid) + view.settlement_fee(sum(paid), len(paid))
                with view._lock:
                    hit = view._cache.get(("escrow", client))
                    if hit is not None:
                        view._cache[("escrow", client)] = (hit[0], hit[1] - debit, hit[2])
                    view._loading.pop(("escrow", client), None)

        settler.Settler._settled_chunk = settled_chunk  # type: ignore[method-assign]

    def dump() -> None:
        while True:
            time.sleep(1.0)
            snapshot = {k: list(v) for k, v in events.items()}
            snapshot["threads"] = thread_cpu(os.getpid())
            # the loop thread's scheduler figures: ns on a CPU, ns runnable but waiting for one; and its
            # context switches (voluntary: it blocked, on I/O or the GIL; involuntary: preempted)
            task = Path(f"/proc/{os.getpid()}/task/{os.getpid()}")
            run_ns, wait_ns = (int(x) for x in (task / "schedstat").read_text().split()[:2])
            switches = dict(
                line.split(":") for line in (task / "status").read_text().splitlines() if "ctxt_switches" in line
            )
            snapshot["loop_thread"] = {
                "run_s": run_ns / 1e9,
                "runqueue_wait_s": wait_ns / 1e9,
                **{k: int(v) for k, v in switches.items()},
            }
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(snapshot))
            os.replace(tmp, out)

    threading.Thread(target=dump, name="stall-dump", daemon=True).start()
    if variant == "gc_freeze":
        # after the imports and the app's start-up objects: freeze what exists when serving starts
        threading.Timer(20.0, gc.freeze).start()
    from haca.node.main import main as node_main

    node_main(argv)


def _describe(handle: Any) -> str:
    cb = getattr(handle, "_callback", None)
    name = getattr(cb, "__qualname__", None) or type(cb).__name__
    task = getattr(cb, "__self__", None)
    if isinstance(task, asyncio.Task):
        coro = task.get_coro()
        name = f"Task {getattr(coro, '__qualname__', coro)}"
    return str(name)


# --- the bench (client side) ------------------------------------------------------------------------------


async def timed_load(url: str, requests: list[tuple[bytes, dict[str, str]]]) -> list[tuple[float, float]]:
    """Concurrency 1, like node_overhead's load: (send time, latency s) per request."""
    import httpx

    out = []
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1), timeout=60) as http:
        for body, headers in requests:
            t = time.perf_counter()
            response = await http.post(url, content=body, headers={"content-type": "application/json", **headers})
            out.append((t, time.perf_counter() - t))
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
    return out


def analyse(timings: list[tuple[float, float]], events: dict[str, Any], slow_factor: float) -> dict[str, Any]:
    lat = sorted(latency for _, latency in timings)
    p50 = lat[len(lat) // 2]
    limit = slow_factor * p50
    slow = [(t, latency) for t, latency in timings if latency > limit]

    def overlapping(kind: str, t: float, latency: float) -> list[Any]:
        return [e for e in events.get(kind, []) if e[0] < t + latency and e[0] + e[1] / 1e3 > t]

    causes: collections.Counter[str] = collections.Counter()
    detail = []
    for t, latency in slow:
        row: dict[str, Any] = {"at_s": round(t - timings[0][0], 3), "ms": round(latency * 1e3, 2)}
        for kind in ("gc", "loop", "settler", "store", "reads"):
            found = overlapping(kind, t, latency)
            if found:
                row[kind] = found[:4]
        samples = [s for s in events.get("samples", []) if t <= s[0] <= t + latency]
        if samples:
            row["stack"] = max(samples, key=lambda s: s[1])[2]
        if row.get("gc") and any(g[1] > 1.0 for g in row["gc"]):
            causes["gc > 1 ms"] += 1
        if row.get("settler"):
            causes["settler run_once overlapping"] += 1
        if row.get("store") and any(s[1] > 2.0 for s in row["store"]):
            causes["ReceiptStore.add > 2 ms"] += 1
        if row.get("loop"):
            causes["a loop callback > 2 ms"] += 1
        if row.get("reads"):
            causes["a chain read (escrow / allowance) in flight"] += 1
        detail.append(row)
    gcs = events.get("gc", [])
    return {
        "requests": len(timings),
        "p50_ms": round(p50 * 1e3, 3),
        "p99_ms": round(lat[int(0.99 * len(lat))] * 1e3, 3),
        "max_ms": round(lat[-1] * 1e3, 3),
        "slow_limit_ms": round(limit * 1e3, 3),
        "slow_requests": len(slow),
        "slow_causes": dict(causes),
        "gc_collections": {
            str(g): {
                "count": sum(1 for e in gcs if e[2] == g),
                "max_ms": max((e[1] for e in gcs if e[2] == g), default=0),
                "total_ms": round(sum(e[1] for e in gcs if e[2] == g), 1),
            }
            for g in (0, 1, 2)
        },
        "settler_runs": len(events.get("settler", [])),
        "forgets": len(events.get("forget", [])),
        "chain_reads": collections.Counter(e[2] for e in events.get("reads", [])),
        "chain_read_ms": spread_ms([e[1] for e in events.get("reads", [])]),
        "settler_wall_ms_slowest": sorted(e[1] for e in events.get("settler", []))[-5:],
        "settler_cpu_ms_total": round(sum(e[2] for e in events.get("settler", [])), 1),
        "settler_cpu_share_of_run": round(
            sum(e[2] for e in events.get("settler", [])) / 1e3 / (timings[-1][0] + timings[-1][1] - timings[0][0]), 3
        ),
        "store_add_ms": spread_ms([e[1] for e in events.get("store", [])]),
        "long_callbacks": collections.Counter(e[2] for e in events.get("loop", [])).most_common(8),
        # wall ms vs the loop thread's own CPU ms in those callbacks: the rest it waited for a core or the GIL
        "long_callbacks_wall_ms": round(sum(e[1] for e in events.get("loop", [])), 1),
        "long_callbacks_cpu_ms": round(sum(e[3] for e in events.get("loop", [])), 1),
        "threads_cpu_s": events.get("threads"),
        # while the loop was stuck in a callback: where the other threads were (most frequent first)
        "other_threads_during_long_callbacks": collections.Counter(
            f"{e[1]}: {e[2]}" for e in events.get("others", [])
        ).most_common(12),
        "slow_detail": detail[:40],
    }


def renice(groups: list[int], nice: int) -> None:
    """Lower the CPU priority of every process in these groups (the validator's, the hub's, the enclave's)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) in groups:
                    for task in (entry / "task").iterdir():
                        os.setpriority(os.PRIO_PROCESS, int(task.name), nice)


def spread_ms(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"p50": percentile(values, 0.5), "p99": percentile(values, 0.99), "max": max(values)}


def bench(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    from haca.client.sdk import Client
    from haca.devnet import services
    from haca.devnet.layout import example_models_dir
    from haca.devnet.network import Devnet, up
    from haca.devnet.processes import spawn
    from haca.devnet.services import wait_http

    entry = next(
        m for m in json.loads((example_models_dir() / "manifest.json").read_text())["models"] if m["name"] == args.model
    )
    work = ROOT / ".work" / "node_stalls"
    shutil.rmtree(work, ignore_errors=True)
    home = work / "home"
    events_path = work / "events.json"
    try:
        net = up(home, validators=1, timeout_commit="500ms")  # inside: a failed start is stopped too
        state = net.load()
        svc = next(s for s in state.services if s.name == "node0")
        net.stop("node0")
        command = services.node_command(home, "node0", svc.port, net.enclave_socket("enclave0"))
        command += ["--flush-interval", str(args.flush_interval)]
        wrapper = [sys.executable, str(Path(__file__).resolve()), "--wrap", str(events_path), "--", *command[3:]]
        state = net.load()
        svc = next(s for s in state.services if s.name == "node0")
        svc.pid = spawn(wrapper, work / "node0-wrapped.log")
        net.save(state)
        wait_http(f"{svc.url}/healthz", svc.pid, "node0", work / "node0-wrapped.log")
        client = Client.from_home(home, "dev1")
        client.deposit(10**15)
        url = f"{svc.url}/v1/infer"
        asyncio.run(timed_load(url, node_requests(client, url, args.model, entry["example_input"], 300)))
        reqs = node_requests(client, url, args.model, entry["example_input"], args.requests)
        time.sleep(1.5)
        client_cpu = time.process_time()
        events_before = json.loads(events_path.read_text())
        groups = [n.pid for n in net.load().nodes] + [s.pid for s in net.load().services if s.name != "node0"]
        if args.nice_chain:
            renice(groups, args.nice_chain)
        cpu_before = group_cpu(groups)
        node_cpu_before = group_cpu([svc.pid])
        timings = asyncio.run(timed_load(url, reqs))
        cpu_after, node_cpu_after = group_cpu(groups), group_cpu([svc.pid])
        time.sleep(2.5)  # one more dump of the events
        events = json.loads(events_path.read_text())
        before = events_before.get("threads", {})
        events["loop_thread"] = {
            k: round(v - events_before["loop_thread"][k], 3) for k, v in events["loop_thread"].items()
        }
        events["threads"] = {k: round(v - before.get(k, 0.0), 2) for k, v in events["threads"].items()}
        first, last = timings[0][0], timings[-1][0] + timings[-1][1]
        for kind in ("gc", "loop", "samples", "settler", "store", "reads", "forget", "others"):
            events[kind] = [e for e in events.get(kind, []) if first - 0.1 <= e[0] <= last]
        result = analyse(timings, events, args.slow_factor)
        wall = timings[-1][0] + timings[-1][1] - timings[0][0]
        result["wall_s"] = round(wall, 2)
        result["loop_thread"] = events["loop_thread"]
        result["cpu_s_during_run"] = {
            "node": round(node_cpu_after - node_cpu_before, 2),
            "validator_and_other_devnet_processes": round(cpu_after - cpu_before, 2),
            "this_client": round(time.process_time() - client_cpu, 2),
        }
        result["pending_after"] = httpx.get(f"{svc.url}/healthz").json().get("pending_receipts")
        client.close()
        return result
    finally:
        Devnet(home).stop()
        if not os.environ.get("NODE_STALLS_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--wrap":
        rest = sys.argv[3:]
        wrap(Path(sys.argv[2]), rest[1:] if rest[:1] == ["--"] else rest)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--model", default="iris")
    parser.add_argument("--slow-factor", type=float, default=3.0)
    parser.add_argument("--flush-interval", type=float, default=1.0, help="the node's settlement flush interval")
    parser.add_argument("--nice-chain", type=int, default=0, help="renice the devnet's other processes (validator)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = bench(args)
    result["loadavg_1m"] = round(os.getloadavg()[0], 2)
    result["variant"] = (os.environ.get("NODE_STALLS_VARIANT", "") or "as is") + (
        f", devnet's other processes at nice {args.nice_chain}" if args.nice_chain else ""
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    short = {k: v for k, v in result.items() if k != "slow_detail"}
    print(json.dumps(short, indent=2))
    for row in result["slow_detail"][:15]:
        print(json.dumps(row)[:700])


if __name__ == "__main__":
    main()
