"""What the bench scripts share: statistics, which `haca` was measured and on what machine, process
cleanup, CPU accounting from /proc, the devnet's stop, HTTP load on a node, and formatting.

A bench script imports it as `from common import ...` (a script run as `python bench/NAME.py` has
bench/ first on sys.path). Bench scripts import nothing else from each other. At import time this
module loads only the standard library: `haca` and `httpx` are imported inside the functions that
need them, so node_stalls.py's wrapper (which runs inside the node's process) loads nothing more.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from haca.client.sdk import Client
    from haca.devnet.network import Devnet

BENCH = Path(__file__).resolve().parent
WORK = BENCH / ".work"  # git-ignored; each run makes its own folder in it and deletes it
CLK_TCK = os.sysconf("SC_CLK_TCK")

Requests = list[tuple[bytes, dict[str, str]]]  # (JSON body, extra headers) per request


# --- statistics -------------------------------------------------------------------------------------------


def spread(values: Sequence[float], digits: int | None = 3, *, runs: bool = True) -> dict[str, float]:
    """min / median / max of `values` (one per round), rounded to `digits` (None: not rounded), and
    with `runs` the number of values. The median is `statistics.median`: the middle value for an odd
    count, the mean of the middle two for an even one."""

    def r(x: float) -> float:
        return x if digits is None else round(x, digits)

    out: dict[str, float] = {"min": r(min(values)), "median": r(statistics.median(values)), "max": r(max(values))}
    if runs:
        out["runs"] = len(values)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The value at rank int(q * n) of the sorted values (the largest one for q near 1): always one of
    `values`, never interpolated."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def fmt(s: dict[str, float]) -> str:
    """A `spread` as the tables print it: 'min / median / max'."""
    return f"{s['min']} / {s['median']} / {s['max']}"


# --- what was measured, where, when -----------------------------------------------------------------------


def timestamp() -> str:
    """Now, in UTC, as 2025-01-31T12:34:56Z."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def loadavg() -> float:
    """The 1-minute load average, rounded to 0.01."""
    return round(os.getloadavg()[0], 2)


def haca_source() -> str:
    """Where the measured `haca` package came from: its git commit (+ `-dirty` with uncommitted
    changes), or its path outside a git checkout."""
    import haca

    root = Path(haca.__file__).resolve().parents[1]
    done = subprocess.run(
        ["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else str(root)


def meminfo_mb(field: str) -> int:
    """A /proc/meminfo field (e.g. MemTotal) in MB; -1 if it is missing."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    return -1


def machine(load_before: float, foreign: int | None = None, **extra: Any) -> dict[str, Any]:
    """The `machine` block of a result: core count, `extra` (the bench's own facts), Python, platform,
    haca_source, the load average before (`load_before`) and now, and the other networks' CometBFT
    processes seen at the start (`foreign`, where the bench counted them)."""
    out: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        **extra,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "haca_source": haca_source(),
        "loadavg_1m_before": load_before,
        "loadavg_1m_after": loadavg(),
    }
    if foreign is not None:
        out["other_cometbft_processes_at_start"] = foreign
    return out


# --- processes --------------------------------------------------------------------------------------------


def terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `finally` blocks that stop the networks


def exit_on_sigterm() -> None:
    """SIGTERM exits through `finally` (which stops the devnets and deletes the work folders)."""
    signal.signal(signal.SIGTERM, terminate)


@contextlib.contextmanager
def work_dir(name: str) -> Iterator[Path]:
    """A fresh WORK/NAME-PID, deleted afterwards (and WORK with it when nothing else is left in it)."""
    WORK.mkdir(parents=True, exist_ok=True)
    work = WORK / f"{name}-{os.getpid()}"
    work.mkdir()
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):
            WORK.rmdir()


def cmdlines() -> dict[int, str]:
    """{pid: command line, arguments joined by spaces} of every process this user can read."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return out


def proc_cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except FileNotFoundError:
        return []


def group_members(pgid: int) -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(int(entry)) == pgid:
                    yield int(entry)


def foreign_devnet_processes(mine: Path) -> int:
    """CometBFT processes on this machine not under `mine` (other sessions' networks share the cores)."""
    return sum(1 for cmd in cmdlines().values() if "cometbft node" in cmd and str(mine) not in cmd)


def leftover_processes(home: Path) -> list[int]:
    return [pid for pid, cmd in cmdlines().items() if str(home) in cmd and pid != os.getpid()]


def stop_devnet(net: Devnet, home: Path) -> None:
    """Stop the devnet at `home`, kill (by id) any of its processes that outlived the stop, and delete
    `home`."""
    try:
        if net.exists():
            net.stop()
    finally:
        left = leftover_processes(home)
        for pid in left:  # ours, by id: a devnet process that outlived stop()
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)
        if left:
            print(f"killed {len(left)} devnet processes left after stop: {left}", flush=True)


def devnet_pids(net: Devnet) -> dict[str, int]:
    """{'val0/haca_app': pid, 'val0/cometbft': pid, ...} for the devnet's app and CometBFT processes."""
    out: dict[str, int] = {}
    for node in net.load().nodes:
        for pid in group_members(node.pid):
            cmdline = proc_cmdline(pid)
            if "haca.chain.main" in cmdline:
                out[f"{node.name}/haca_app"] = pid
            elif any(arg.endswith("cometbft") for arg in cmdline[:1]):
                out[f"{node.name}/cometbft"] = pid
            else:
                out[f"{node.name}/supervisor"] = pid
    return out


# --- CPU accounting from /proc ----------------------------------------------------------------------------


def stat_fields(path: Path) -> list[str]:
    """The fields of a /proc/.../stat file after the command name: [0] is the state, [2] the process
    group, [11] and [12] utime and stime in clock ticks."""
    return path.read_text().rsplit(")", 1)[1].split()


def stat_cpu(fields: list[str]) -> float:
    """utime + stime in seconds, from `stat_fields`."""
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (all its threads), from /proc."""
    return stat_cpu(stat_fields(Path(f"/proc/{pid}/stat")))


def cpu_times(pids: dict[str, int]) -> dict[int, float]:
    """utime + stime in seconds for each live pid."""
    out: dict[int, float] = {}
    for pid in pids.values():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            out[pid] = cpu_seconds(pid)
    return out


def group_cpu(groups: list[int]) -> float:
    """CPU seconds so far of every process in these process groups (a validator's supervisor, app and
    CometBFT share one)."""
    total, wanted = 0.0, set(groups)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            fields = stat_fields(entry / "stat")
            if int(fields[2]) in wanted:
                total += stat_cpu(fields)
    return total


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of each of `pid`'s threads, summed by thread name."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            name = (task / "comm").read_text().strip()
            out[name] = out.get(name, 0.0) + stat_cpu(stat_fields(task / "stat"))
    return out


# --- HTTP load on a node ----------------------------------------------------------------------------------


def node_requests(client: Client, url: str, model: str, example: Any, n: int, mode: str = "vanilla") -> Requests:
    """`n` requests in `mode`, each with its own signed payment for that mode (signing is the client's
    cost, done here, untimed)."""
    import json

    import httpx

    from haca.client.payment import PaymentOffer, sign_payment

    body = json.dumps({"model": model, "mode": mode, "input": example}).encode()
    first = httpx.post(url, content=body, headers={"content-type": "application/json"})
    if first.status_code != 402:
        raise RuntimeError(f"an unpaid {mode} request answered HTTP {first.status_code}, not 402")
    offer = PaymentOffer.from_402(first.json(), model, mode)
    fee = offer.fee(len(example) if offer.price_unit == "row" else 1)
    return [(body, {"X-PAYMENT": sign_payment(client.key, offer, fee)[1]}) for _ in range(n)]


async def post_all(url: str, requests: Requests, concurrency: int) -> tuple[list[float], float]:
    """POST every request once, `concurrency` in flight; each must answer 200. The latencies (s) in
    the order of `requests`, and the wall time of the whole load (s)."""
    import asyncio

    import httpx

    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(requests)):
        queue.put_nowait(i)
    latencies = [0.0] * len(requests)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                body, headers = requests[i]
                t = time.perf_counter()
                response = await http.post(url, content=body, headers={"content-type": "application/json", **headers})
                latencies[i] = time.perf_counter() - t
                if response.status_code != 200:
                    raise RuntimeError(f"{url}: HTTP {response.status_code}: {response.text[:300]}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, elapsed
