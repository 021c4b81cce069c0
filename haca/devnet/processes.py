"""Background processes of a devnet: each in its own session (process group), so one signal to
the group reaches a supervisor and its children at once."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx


def spawn(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env
        )
    return proc.pid


def signal_group(pgid: int, sig: signal.Signals) -> None:
    if pgid and process_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)


def wait_group_gone(pgid: int, deadline: float) -> None:
    """Wait for every process of the group to exit; SIGKILL it once `deadline` passes."""
    while pgid and group_alive(pgid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        reap(pgid)
        time.sleep(0.05)


# Ports are chosen below the kernel's ephemeral range: a port picked there (bind to 0) and left
# unbound until its service starts can be taken meanwhile by any outgoing connection on the machine,
# which made a devnet's hub die with "address in use" under a parallel test run.
_PORT_FLOOR = 15000
_RESERVATION_TTL_S = 3600.0


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _reserve(port: int) -> bool:
    """Claim `port` for this machine's devnets for an hour (a file per port, created exclusively), so
    two devnets made at once by parallel test workers never pick the same free port."""
    folder = Path(tempfile.gettempdir()) / "haca-ports"
    folder.mkdir(exist_ok=True)
    mark = folder / str(port)
    with contextlib.suppress(FileNotFoundError):
        if time.time() - mark.stat().st_mtime > _RESERVATION_TTL_S:
            mark.unlink()
    try:
        os.close(os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports free now, outside the ephemeral range and reserved against other
    devnets being made on this machine at the same time."""
    ceiling = _ephemeral_floor()
    floor = _PORT_FLOOR if ceiling - _PORT_FLOOR > 1000 else 1024
    rng = random.SystemRandom()
    chosen: list[int] = []
    tries = 50 * count + 100
    while len(chosen) < count and tries:
        tries -= 1
        port = rng.randrange(floor, ceiling)
        if port not in chosen and _bindable(port) and _reserve(port):
            chosen.append(port)
    if len(chosen) == count:
        return chosen
    raise OSError(f"no {count} free loopback ports found between {floor} and {ceiling}")


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    reap(pid)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # A group of zombies only is dead too.
    return any(process_alive(int(p)) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pgid)


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return -1


def reap(pid: int) -> None:
    """Collect `pid` if it is our exited child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
