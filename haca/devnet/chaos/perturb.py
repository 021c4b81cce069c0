"""Perturbations, after CometBFT's e2e ones (kill, pause, disconnect, restart), and the services' and
TEE faults. Each is injected, held, healed, and then probed until its target answers again: the
time from heal to that answer is its recovery time.

How each is made real, without root, on loopback:
- validator kill: SIGKILL to the validator's process group (supervisor, app, CometBFT); restart.
- app kill / CometBFT kill: SIGKILL to that one process; its supervisor (haca.chain.supervisor)
  sees a child gone and stops the other with SIGTERM, as it does in production; restart.
- pause: SIGSTOP / SIGCONT to the validator's process group.
- disconnect: the validator is restarted with its P2P listener moved to a fresh port, no
  persistent peers, PEX off and an empty address book: it dials nobody and the others' dials to
  its old address are refused. Heal: restarted with its devnet configuration. (A restart is part
  of the step: a running CometBFT cannot be cut from loopback peers without root.)
- node / batching node / enclave / hub kill: SIGKILL to the process group; restart.
- prover kill: SIGKILL to the node's EZKL worker processes while a proof runs; the node's pool
  must replace them and prove again: recovered once a receipt that waited for its proof settles.
- measurement revoked: the governance authority revokes the enclave's measurement, then approves
  it again.
- attestation expiry: the governance authority shortens the heartbeat interval and the enclave is
  paused until the chain's coverage of its key lapses; heal: resume it, restore the interval.
- minimum TCB raised: the enclave's DEV platform reports an out-of-date TCB (a file in its
  directory), the authority raises the policy's minimum above it: the next heartbeat is refused
  and coverage lapses; heal: the platform is patched, the policy restored.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog

from haca.chain.home import ValidatorHome
from haca.chain.supervisor import configure
from haca.client.chain import ChainClient
from haca.client.errors import HacaError
from haca.client.sdk import Client
from haca.crypto.keys import PrivateKey
from haca.devnet import services
from haca.devnet.chaos.load import LoadRecorder
from haca.devnet.chaos.records import ServedReceipt, StepRecord
from haca.devnet.network import Devnet, DevnetState, NodeRecord, rpc_height
from haca.devnet.processes import free_ports, group_alive, process_alive, signal_group, wait_group_gone
from haca.proofs.tee.dev import TCB_STATUS_FILE
from haca.types.tee import GLOBAL_SCOPE, MsgApproveMeasurement, MsgRevokeMeasurement, MsgSetTeePolicy
from haca.types.tx import Msg

log = structlog.get_logger("haca.chaos")

RECOVERY_TIMEOUT_S = 180.0
SHORT_HEARTBEAT = 12  # blocks: the attestation-expiry step's heartbeat interval
NOT_APPROVED = "not approved"  # the chain's refusal of a receipt whose measurement was revoked
BEHIND_TCB = "SWHardeningNeeded"  # the TCB status node0's DEV platform falls back to in raise-min-tcb


class StepFailed(RuntimeError):
    """A perturbation could not be made (its precondition never held): reported, never faked."""


@dataclass
class ChaosContext:
    """What the perturbations act on and probe with."""

    net: Devnet
    chain: ChainClient  # fails over across every validator
    recorder: LoadRecorder
    authority: PrivateKey  # the devnet's governance authority (dev0)
    probe: Client  # a paying client of node0 for probe inferences
    zkml_model: str | None  # a model node0 serves in zkml, if any
    zkml_input: Any
    tee_model: str = "iris"
    tee_input: Any = ((5.1, 3.5, 1.4, 0.2),)
    batch_node: BatchNode | None = None
    excused: list[str] = field(default_factory=list)  # refusal reasons this run's faults cause
    last_probe_error: str = ""
    clients: list[str] = field(default_factory=list)  # the accounts that pay for the run's inferences
    client_names: dict[str, str] = field(default_factory=dict)  # address -> what it pays for

    def state(self) -> DevnetState:
        return self.net.load()

    def validator(self, name: str) -> NodeRecord:
        return self.state().node(name)

    def service_pid(self, name: str) -> int:
        return next(s.pid for s in self.state().services if s.name == name)

    def service_url(self, name: str) -> str:
        return next(s.url for s in self.state().services if s.name == name)

    def governance(self, msg: Msg) -> None:
        self.chain.send_msgs(self.authority, (msg,))

    def probe_infer(self, mode: str) -> ServedReceipt | None:
        """One paid inference by the probe client; its receipt (recorded: it must settle too), or
        None when the node did not serve it."""
        try:
            if mode == "zkml":
                assert self.zkml_model is not None
                result = self.probe.infer(self.zkml_model, self.zkml_input, mode="zkml")
            else:
                result = self.probe.infer(self.tee_model, [list(r) for r in self.tee_input], mode=mode)
        except (HacaError, httpx.HTTPError) as exc:  # polled while a target recovers: kept, not logged
            self.last_probe_error = f"{mode}: {exc}"[:300]
            return None
        return self.recorder.receipt(result.receipt, "single")

    def node_enclaves(self) -> list[dict[str, Any]]:
        node = next(s.address for s in self.state().services if s.kind == "node")
        return list(self.chain.query("/tee/node_enclaves", node.encode())["enclaves"])

    def latest_enclave(self) -> dict[str, Any]:
        enclaves = self.node_enclaves()
        if not enclaves:
            raise StepFailed("node0 has no registered enclave key")
        return max(enclaves, key=lambda e: int(e["attested_height"]))


class BatchNode:
    """An extra inference node the run starts, settling allowance-paid receipts in batches."""

    def __init__(self, start: Callable[[], int], url: str) -> None:
        self._start, self.url = start, url
        self.pid = start()

    def restart(self) -> None:
        self.pid = self._start()

    def kill(self) -> None:
        signal_group(self.pid, signal.SIGKILL)
        wait_group_gone(self.pid, time.monotonic() + 20)

    def stop(self) -> None:
        signal_group(self.pid, signal.SIGTERM)
        wait_group_gone(self.pid, time.monotonic() + 20)


class Perturbation:
    """inject → hold → heal → poll `recovered`: a step of a scenario."""

    kind = "perturbation"
    recovery_timeout_s = RECOVERY_TIMEOUT_S

    def __init__(self, name: str, target: str, hold_s: float) -> None:
        self.name, self.target, self.hold_s = name, target, hold_s
        self.detail: dict[str, Any] = {}

    def inject(self, ctx: ChaosContext) -> None:
        raise NotImplementedError

    def heal(self, ctx: ChaosContext) -> None:
        raise NotImplementedError

    def recovered(self, ctx: ChaosContext) -> bool:
        raise NotImplementedError

    def run(self, ctx: ChaosContext) -> StepRecord:
        record = StepRecord(self.name, self.kind, self.target, started=time.time())
        ctx.last_probe_error = ""
        log.info("perturbation_start", step=self.name, target=self.target)
        try:
            self.inject(ctx)
            time.sleep(self.hold_s)
            record.healed = time.time()
            self.heal(ctx)
            recovery_timeout = self.recovery_timeout_s
            deadline = time.monotonic() + recovery_timeout
            while not self.recovered(ctx):
                if time.monotonic() > deadline:
                    probe = f"; last probe: {ctx.last_probe_error}" if ctx.last_probe_error else ""
                    raise StepFailed(f"{self.target} did not recover within {recovery_timeout:.0f}s of the heal{probe}")
                time.sleep(0.25)
            record.recovered = time.time()
            record.recovery_s = round(record.recovered - record.healed, 3)
        except Exception as exc:  # reported as the step's error; the run goes on
            record.error = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("perturbation_failed", step=self.name, error=record.error)
            with contextlib.suppress(Exception):
                self.cleanup(ctx)
        record.detail = dict(self.detail)
        log.info("perturbation_done", step=self.name, recovery_s=record.recovery_s)
        return record

    def cleanup(self, ctx: ChaosContext) -> None:
        """After a failed step: leave the devnet whole for the next one."""
        self.heal(ctx)


# --- validators ------------------------------------------------------------------------------------


def chain_height(ctx: ChaosContext, exclude: str = "") -> int:
    """The highest height any validator but `exclude` reports."""
    return max((rpc_height(n.rpc) for n in ctx.state().nodes if n.name != exclude), default=-1)


def child_pids(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry))
    return found


def descendants(root: int) -> list[int]:
    found, frontier = [], [root]
    while frontier:
        children = [c for p in frontier for c in child_pids(p)]
        found += children
        frontier = children
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class _ValidatorStep(Perturbation):
    """Recovered once the validator is back at (or past) the height the others had at the heal,
    and its chain advances."""

    def heal_mark(self, ctx: ChaosContext) -> None:
        self.catch_up_to = chain_height(ctx, exclude=self.target) + 1
        self.detail["network_height_at_heal"] = self.catch_up_to - 1

    def recovered(self, ctx: ChaosContext) -> bool:
        return rpc_height(ctx.validator(self.target).rpc) >= self.catch_up_to


class ValidatorKill(_ValidatorStep):
    """SIGKILL a validator (part "all"), or only its app or its CometBFT, then restart it."""

    kind = "kill"

    def __init__(self, target: str, hold_s: float, part: str = "all") -> None:
        super().__init__(f"kill-{part}-{target}" if part != "all" else f"kill-{target}", target, hold_s)
        self.part = part

    def inject(self, ctx: ChaosContext) -> None:
        node = ctx.validator(self.target)
        self.detail["height_at_kill"] = rpc_height(node.rpc)
        if self.part == "all":
            ctx.net.stop(self.target, kill=True)
            return
        marker = "haca.chain.main" if self.part == "app" else "cometbft"
        victims = [pid for pid in child_pids(node.pid) if marker in cmdline(pid)]
        if not victims:
            raise StepFailed(f"{self.target} has no running {self.part} process")
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        wait_group_gone(node.pid, time.monotonic() + 30)  # its supervisor stops the other and exits
        self.detail["supervisor_exited"] = not group_alive(node.pid)

    def heal(self, ctx: ChaosContext) -> None:
        self.heal_mark(ctx)
        ctx.net.stop(self.target, kill=True)  # whatever is left of the group (nothing, normally)
        ctx.net.start(self.target)


class ValidatorPause(_ValidatorStep):
    kind = "pause"

    def __init__(self, target: str, hold_s: float) -> None:
        super().__init__(f"pause-{target}", target, hold_s)

    def inject(self, ctx: ChaosContext) -> None:
        signal_group(ctx.validator(self.target).pid, signal.SIGSTOP)

    def heal(self, ctx: ChaosContext) -> None:
        self.heal_mark(ctx)
        signal_group(ctx.validator(self.target).pid, signal.SIGCONT)


class ValidatorDisconnect(_ValidatorStep):
    kind = "disconnect"

    def __init__(self, target: str, hold_s: float) -> None:
        super().__init__(f"disconnect-{target}", target, hold_s)
        self.original_config = ""

    def _restart(self, ctx: ChaosContext, change: Callable[[ValidatorHome], None]) -> None:
        home = ValidatorHome(Path(ctx.validator(self.target).home))
        ctx.net.stop(self.target)
        change(home)
        (home.cometbft / "config" / "addrbook.json").unlink(missing_ok=True)  # no address learnt before
        ctx.net.start(self.target)

    def _isolate(self, home: ValidatorHome) -> None:
        self.original_config = home.config_toml.read_text()
        (isolated_port,) = free_ports(1)
        settings = {
            ("p2p", "laddr"): f"tcp://127.0.0.1:{isolated_port}",
            ("p2p", "persistent_peers"): "",
            ("p2p", "pex"): False,
        }
        configure(home, settings)

    def _restore(self, home: ValidatorHome) -> None:
        if self.original_config:
            home.config_toml.write_text(self.original_config)

    def inject(self, ctx: ChaosContext) -> None:
        self._restart(ctx, self._isolate)
        node = ctx.validator(self.target)
        deadline = time.monotonic() + 60
        while rpc_height(node.rpc) < 0:  # its RPC answers again (at its last height)
            if time.monotonic() > deadline:
                raise StepFailed(f"{self.target} did not restart isolated")
            time.sleep(0.2)
        time.sleep(2.0)
        self.detail["peers_while_isolated"] = _peers(node.rpc)
        self.detail["height_isolated"] = rpc_height(node.rpc)
        self.detail["network_height_isolated"] = chain_height(ctx, exclude=self.target)
        if self.detail["peers_while_isolated"] != 0:
            raise StepFailed(f"{self.target} still has peers: {self.detail['peers_while_isolated']}")

    def heal(self, ctx: ChaosContext) -> None:
        self.detail["height_before_heal"] = rpc_height(ctx.validator(self.target).rpc)
        self.heal_mark(ctx)
        self._restart(ctx, self._restore)  # its devnet configuration, byte for byte


def _peers(rpc: str) -> int:
    try:
        return int(httpx.get(f"{rpc}/net_info", timeout=3).json()["result"]["n_peers"])
    except (httpx.HTTPError, KeyError, ValueError):
        return -1


# --- services ------------------------------------------------------------------------------------


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def _pending(url: str) -> int:
    try:
        return int(httpx.get(f"{url}/healthz", timeout=3).json()["pending_receipts"])
    except (httpx.HTTPError, KeyError, ValueError):
        return -1


class ServiceKill(Perturbation):
    """SIGKILL a devnet service (node0, the hub) and restart it. node0 is killed right after it
    answered a zkml request, so a proof is in flight ("mid-proof"), with receipts queued."""

    kind = "kill"

    def __init__(self, target: str, hold_s: float) -> None:
        super().__init__(f"kill-{target}", target, hold_s)

    def inject(self, ctx: ChaosContext) -> None:
        url = ctx.service_url(self.target)
        if self.target.startswith("node") and ctx.zkml_model:
            self.detail["zkml_request_before_kill"] = ctx.probe_infer("zkml") is not None
        if self.target.startswith("node"):
            self.detail["pending_receipts_at_kill"] = _pending(url)
        ctx.net.stop(self.target, kill=True)

    def heal(self, ctx: ChaosContext) -> None:
        ctx.net.start(self.target)

    def recovered(self, ctx: ChaosContext) -> bool:
        url = ctx.service_url(self.target)
        if not _healthy(url):
            return False
        return ctx.probe_infer("vanilla") is not None if self.target.startswith("node") else True


class BatchNodeKill(Perturbation):
    """SIGKILL the batching node while receipts wait for their batch; restart it."""

    kind = "kill"

    def __init__(self, hold_s: float) -> None:
        super().__init__("kill-batch-node", "batch-node", hold_s)

    def inject(self, ctx: ChaosContext) -> None:
        node = ctx.batch_node
        if node is None:
            raise StepFailed("this run has no batching node")
        deadline = time.monotonic() + 20
        while (pending := _pending(node.url)) <= 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        self.detail["pending_receipts_at_kill"] = pending
        node.kill()

    def heal(self, ctx: ChaosContext) -> None:
        assert ctx.batch_node is not None
        ctx.batch_node.restart()

    def recovered(self, ctx: ChaosContext) -> bool:
        return ctx.batch_node is not None and _healthy(ctx.batch_node.url)

    def cleanup(self, ctx: ChaosContext) -> None:
        if ctx.batch_node is not None and not process_alive(ctx.batch_node.pid):
            ctx.batch_node.restart()


class EnclaveKill(Perturbation):
    """SIGKILL node0's enclave and restart it: it comes back with a new key, which the node must
    register before tee requests are served again."""

    kind = "kill"

    def __init__(self, hold_s: float) -> None:
        super().__init__("kill-enclave0", "enclave0", hold_s)

    def inject(self, ctx: ChaosContext) -> None:
        self.keys_before = {e["key"] for e in ctx.node_enclaves()}
        ctx.net.stop("enclave0", kill=True)

    def heal(self, ctx: ChaosContext) -> None:
        ctx.net.start("enclave0")
        # The DEV measurement covers the enclave's source files: in a tree edited since the devnet
        # started, the restarted enclave measures differently. The devnet approves its own enclave
        # code when it starts node0 (services.approve_enclave_code); it does not when it starts the
        # enclave alone, so the step does, and reports it (None: same code, nothing to approve).
        self.detail["approved_new_measurement"] = services.approve_enclave_code(
            ctx.net.home, ctx.net.enclave_socket("enclave0")
        )

    def recovered(self, ctx: ChaosContext) -> bool:
        if ctx.probe_infer("tee") is None:
            return False
        new = {e["key"] for e in ctx.node_enclaves()} - self.keys_before
        self.detail["new_enclave_keys"] = sorted(new)
        if not new:
            raise StepFailed("tee is served again but no new enclave key was registered")
        return True


class ProverKill(Perturbation):
    """SIGKILL node0's EZKL worker processes while a proof runs. There is nothing to restart: the
    node must replace its pool and prove again; recovered once a zkml receipt that was waiting for
    its proof at the kill settles (proofs take tens of seconds on a loaded 2-core machine)."""

    kind = "kill"
    recovery_timeout_s = 420.0

    def __init__(self) -> None:
        super().__init__("kill-provers", "node0-provers", 0.0)

    def inject(self, ctx: ChaosContext) -> None:
        if not ctx.zkml_model:
            raise StepFailed("node0 serves no zkml model")
        deadline = time.monotonic() + 120
        while ctx.probe_infer("zkml") is None:  # the prover may be busy with the load's proofs
            if time.monotonic() > deadline:
                raise StepFailed(f"node0 refused every zkml request meant to start a proof: {ctx.last_probe_error}")
            time.sleep(2.0)
        self.waiting = [r.receipt_id for r in ctx.recorder.snapshot()[1] if r.mode == "zkml" and not _settled(ctx, r)]
        node_pid = ctx.service_pid("node0")
        deadline = time.monotonic() + 30
        workers: list[int] = []
        while not workers and time.monotonic() < deadline:
            workers = [p for p in descendants(node_pid) if "spawn_main" in cmdline(p)]
            time.sleep(0.1)
        if not workers:
            raise StepFailed("node0 has no prover worker process")
        log_file = ctx.net.dir / "logs" / "node0.log"
        self.log_offset = log_file.stat().st_size if log_file.exists() else 0
        time.sleep(0.5)  # inside the proof
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.detail["workers_killed"] = len(workers)
        self.detail["zkml_receipts_waiting"] = len(self.waiting)

    def heal(self, ctx: ChaosContext) -> None:
        return None

    def recovered(self, ctx: ChaosContext) -> bool:
        if not any(_settled(ctx, receipt_id) for receipt_id in self.waiting):
            return False
        with contextlib.suppress(OSError), open(ctx.net.dir / "logs" / "node0.log", "rb") as log_file:
            log_file.seek(self.log_offset)
            self.detail["node_saw_prover_die"] = b"prover process died" in log_file.read()
        return True

    def cleanup(self, ctx: ChaosContext) -> None:
        return None


def _settled(ctx: ChaosContext, receipt: ServedReceipt | str) -> bool:
    """Whether the chain has a settlement record for the receipt (zkml receipts settle alone)."""
    receipt_id = receipt if isinstance(receipt, str) else receipt.receipt_id
    try:
        ctx.chain.query("/inference/receipt", receipt_id.encode())
    except HacaError:
        return False
    return True


# --- TEE faults ------------------------------------------------------------------------------------


class MeasurementRevoked(Perturbation):
    """The authority revokes node0's enclave measurement (tee requests must be refused), then
    approves it again (tee served again)."""

    kind = "tee-revoke"

    def __init__(self, hold_s: float) -> None:
        super().__init__("revoke-measurement", "enclave0", hold_s)

    def inject(self, ctx: ChaosContext) -> None:
        self.measurement = str(ctx.latest_enclave()["measurement_id"])
        ctx.excused.append(NOT_APPROVED)
        ctx.governance(MsgRevokeMeasurement(self.measurement, GLOBAL_SCOPE))
        time.sleep(1.0)
        self.detail["measurement_id"] = self.measurement
        # what a tee request meets meanwhile: the node's refusal, or the client's (its SDK checks
        # the enclave's standing on chain), or an answer
        served = ctx.probe_infer("tee")
        self.detail["tee_while_revoked"] = "served and accepted" if served else ctx.last_probe_error

    def heal(self, ctx: ChaosContext) -> None:
        ctx.governance(MsgApproveMeasurement(self.measurement, GLOBAL_SCOPE))

    def recovered(self, ctx: ChaosContext) -> bool:
        return ctx.probe_infer("tee") is not None

    def cleanup(self, ctx: ChaosContext) -> None:
        if hasattr(self, "measurement"):
            self.heal(ctx)


class AttestationExpiry(Perturbation):
    """The authority shortens the heartbeat interval; once node0's enclave key is attested under
    it, the enclave is paused until the chain's coverage of the key lapses (tee refused). Heal:
    the enclave resumes, the interval is restored; recovered once tee is served again."""

    kind = "tee-expiry"

    def __init__(self, hold_s: float, wait_s: float = 120.0) -> None:
        super().__init__("attestation-expiry", "enclave0", hold_s)
        self.wait_s = wait_s

    def inject(self, ctx: ChaosContext) -> None:
        self.original = int(ctx.chain.query("/tee/policy")["heartbeat_interval"])
        ctx.governance(MsgSetTeePolicy({"heartbeat_interval": SHORT_HEARTBEAT}))
        deadline = time.monotonic() + self.wait_s
        while True:  # the node re-attests when half its coverage is gone: then under the short interval
            enclave = ctx.latest_enclave()
            if int(enclave["good_until"]) - int(enclave["attested_height"]) <= SHORT_HEARTBEAT:
                break
            if time.monotonic() > deadline:
                raise StepFailed(f"node0 did not re-attest under the {SHORT_HEARTBEAT}-block interval")
            time.sleep(0.5)
        self.paused_pid = ctx.service_pid("enclave0")
        signal_group(self.paused_pid, signal.SIGSTOP)
        good_until = int(enclave["good_until"])
        while chain_height(ctx) <= good_until + 1:  # coverage has lapsed at the chain's height
            if time.monotonic() > deadline:
                raise StepFailed(f"the chain did not pass the key's coverage (good until {good_until})")
            time.sleep(0.3)
        self.detail["good_until"] = good_until
        self.detail["lapsed_at_height"] = chain_height(ctx)
        self.detail["key"] = enclave["key"]

    def heal(self, ctx: ChaosContext) -> None:
        if hasattr(self, "paused_pid"):
            signal_group(self.paused_pid, signal.SIGCONT)
        if hasattr(self, "original"):
            ctx.governance(MsgSetTeePolicy({"heartbeat_interval": self.original}))

    def recovered(self, ctx: ChaosContext) -> bool:
        return ctx.probe_infer("tee") is not None


class MinTcbRaised(Perturbation):
    """node0's DEV platform falls behind (it reports `BEHIND_TCB`), which the authority first
    accepts; then it raises the minimum TCB back to UpToDate, under a short heartbeat interval: the
    key's next heartbeat is refused and its coverage lapses (tee refused). A raised minimum applies
    at each key's next attestation, so the exposure is at most one heartbeat interval. Heal: the
    platform is patched (UpToDate again) and the policy restored; recovered once tee is served."""

    kind = "tee-tcb"

    def __init__(self, hold_s: float, wait_s: float = 120.0) -> None:
        super().__init__("raise-min-tcb", "enclave0", hold_s)
        self.wait_s = wait_s

    def inject(self, ctx: ChaosContext) -> None:
        policy = ctx.chain.query("/tee/policy")
        self.original = {k: policy[k] for k in ("heartbeat_interval", "min_tcb_status")}
        self.status_file = ctx.net.dir / "enclave0" / TCB_STATUS_FILE
        ctx.governance(MsgSetTeePolicy({"min_tcb_status": BEHIND_TCB, "heartbeat_interval": SHORT_HEARTBEAT}))
        self.status_file.write_text(BEHIND_TCB)
        deadline = time.monotonic() + self.wait_s
        while True:  # re-attested from the platform that fell behind, under the short interval
            enclave = ctx.latest_enclave()
            short = int(enclave["good_until"]) - int(enclave["attested_height"]) <= SHORT_HEARTBEAT
            if short and enclave.get("tcb_status") == BEHIND_TCB:
                break
            if time.monotonic() > deadline:
                raise StepFailed(f"node0 did not re-attest with TCB {BEHIND_TCB} under a policy that allows it")
            time.sleep(0.5)
        ctx.governance(MsgSetTeePolicy({"min_tcb_status": "UpToDate"}))
        enclave = ctx.latest_enclave()  # as of the raise: a heartbeat may have landed just before it
        good_until = int(enclave["good_until"])
        while chain_height(ctx) <= good_until + 1:  # the heartbeats meanwhile are refused: coverage lapses
            if time.monotonic() > deadline:
                raise StepFailed(f"the chain did not pass the key's coverage (good until {good_until})")
            time.sleep(0.3)
        after = ctx.latest_enclave()
        if after["key"] == enclave["key"] and int(after["attested_height"]) != int(enclave["attested_height"]):
            raise StepFailed(f"a heartbeat with TCB {after.get('tcb_status')} was accepted under the raised minimum")
        self.detail.update(key=enclave["key"], good_until=good_until, lapsed_at_height=chain_height(ctx))
        served = ctx.probe_infer("tee")
        self.detail["tee_while_lapsed"] = "served and accepted" if served else ctx.last_probe_error

    def heal(self, ctx: ChaosContext) -> None:
        if hasattr(self, "status_file"):
            self.status_file.unlink(missing_ok=True)  # patched: UpToDate
        if hasattr(self, "original"):
            ctx.governance(MsgSetTeePolicy(self.original))

    def recovered(self, ctx: ChaosContext) -> bool:
        return ctx.probe_infer("tee") is not None

    def cleanup(self, ctx: ChaosContext) -> None:
        self.heal(ctx)


def resume_all(ctx: ChaosContext) -> None:
    """SIGCONT every devnet process group (a failed step must not leave one stopped)."""
    state = ctx.state()
    for pid in [n.pid for n in state.nodes] + [s.pid for s in state.services]:
        signal_group(pid, signal.SIGCONT)
