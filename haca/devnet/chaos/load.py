"""The bounded load generator of a chaos run: a few threads on loopback, each paying for one kind
of work at a fixed pace, recording every tx it sent and every receipt it was served.

Bounded: one request in flight per worker, a pause between requests, client timeouts; a worker
that fails (a node down, a validator paused) records the failure and tries again after its pause.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog

from haca.client.chain import ChainClient
from haca.client.errors import HacaError, TxRejected
from haca.client.sdk import Client
from haca.crypto.keys import PrivateKey
from haca.devnet.chaos.records import SentTx, ServedReceipt
from haca.types.bank import MsgSend
from haca.types.receipt import SignedReceipt
from haca.types.tx import build_tx

log = structlog.get_logger("haca.chaos.load")

TX_COMMIT_WAIT_S = 15.0  # then the same bytes are rebroadcast to the next validator
TX_REBROADCASTS = 4


@dataclass
class WorkerStats:
    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    last_error: dict[str, str] = field(default_factory=dict)  # per error type: its latest words

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "failed": self.failed, "errors": dict(self.errors), "last_error": self.last_error}


class LoadRecorder:
    """What the load generator and the perturbation probes did; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.txs: list[SentTx] = []
        self.receipts: list[ServedReceipt] = []
        self.stats: dict[str, WorkerStats] = defaultdict(WorkerStats)

    def tx(self, sent: SentTx) -> None:
        with self._lock:
            self.txs.append(sent)

    def receipt(self, signed: SignedReceipt, path: str) -> ServedReceipt:
        r = signed.receipt
        served = ServedReceipt(signed.id, r.request_id, r.client, r.node, r.fee, r.mode, path, time.time())
        with self._lock:
            self.receipts.append(served)
        return served

    def ok(self, worker: str) -> None:
        with self._lock:
            self.stats[worker].ok += 1

    def failed(self, worker: str, exc: BaseException) -> None:
        with self._lock:
            stats = self.stats[worker]
            stats.failed += 1
            stats.errors[type(exc).__name__] += 1
            stats.last_error[type(exc).__name__] = str(exc)[:300]

    def snapshot(self) -> tuple[list[SentTx], list[ServedReceipt], dict[str, Any]]:
        with self._lock:
            return list(self.txs), list(self.receipts), {k: v.to_json() for k, v in self.stats.items()}


@dataclass(frozen=True)
class Endpoints:
    """Where the load goes: the validators' RPCs, the chain, the nodes."""

    rpcs: tuple[str, ...]
    chain_id: str
    validators: tuple[dict[str, Any], ...]  # the trusted validator set (ChainClient's)
    node_url: str  # node0: single settlements, every mode
    batch_node_url: str = ""  # a node settling in batches (allowance-paid), when the run has one

    def chain(self, first: int = 0) -> ChainClient:
        """A client failing over across every RPC, starting at validator `first`."""
        urls = list(self.rpcs[first % len(self.rpcs) :] + self.rpcs[: first % len(self.rpcs)])
        return ChainClient(urls, self.chain_id, list(self.validators))


class Worker(threading.Thread):
    """One load thread: `step` once per `interval` seconds until stopped."""

    def __init__(self, name: str, recorder: LoadRecorder, interval: float, step: Callable[[], None]) -> None:
        super().__init__(name=f"chaos-{name}", daemon=True)
        self.label, self.recorder, self.interval, self.step = name, recorder, interval, step
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.step()
                self.recorder.ok(self.label)
            except Exception as exc:  # every failure is counted (with the last one's words); it goes on
                self.recorder.failed(self.label, exc)
            self.stop_event.wait(self.interval)


def inference_step(client: Client, recorder: LoadRecorder, model: str, data: Any, mode: str) -> Callable[[], None]:
    def step() -> None:
        result = client.infer(model, data, mode=mode)
        recorder.receipt(result.receipt, "single")

    return step


def chat_step(client: Client, recorder: LoadRecorder, model: str, mode: str, max_tokens: int) -> Callable[[], None]:
    prompts = ("Say hi.", "Name a colour.", "Count to two.")
    turn = [0]

    def step() -> None:
        turn[0] += 1
        messages = [{"role": "user", "content": prompts[turn[0] % len(prompts)]}]
        result = client.chat(model, messages, mode=mode, max_tokens=max_tokens, temperature=0.0)
        recorder.receipt(result.receipt, "single")

    return step


def batch_step(url: str, api_key: str, recorder: LoadRecorder, model: str, data: Any) -> Callable[[], None]:
    """An allowance-paid request to the batching node (its receipts settle in MsgSettleBatch)."""
    http = httpx.Client(timeout=30)
    headers = {"Authorization": f"Bearer {api_key}"}

    def step() -> None:
        response = http.post(
            f"{url}/v1/infer", json={"model": model, "mode": "vanilla", "input": data}, headers=headers
        )
        if response.status_code != 200:
            raise HacaError(f"batch node answered {response.status_code}: {response.text[:200]}")
        recorder.receipt(SignedReceipt.from_json(response.json()["receipt"]), "batch")

    return step


class TransferSender:
    """Bank transfers from one account, one at a time: each broadcast to the next validator in
    turn, then waited for; not committed in time, the same bytes are sent again elsewhere (a
    validator killed before gossiping drops its mempool), so a tx is lost only if no validator
    ever commits it."""

    def __init__(self, endpoints: Endpoints, key: PrivateKey, to: str, recorder: LoadRecorder) -> None:
        self.key, self.to, self.recorder = key, to, recorder
        self.chain = endpoints.chain()
        self.single = [ChainClient([url], endpoints.chain_id, list(endpoints.validators)) for url in endpoints.rpcs]
        self.turn = 0
        self.amount = 0

    def step(self) -> None:
        params = self.chain.query("/auth/params")
        nonce = self.chain.nonce(self.key.address)
        self.amount += 1
        msg = MsgSend(self.to, self.amount)
        raw = build_tx(
            self.key, self.chain.chain_id, nonce, (msg,), params["tx_fee_base"], params["tx_fee_per_byte"]
        ).encode()
        sent = SentTx(hashlib.sha256(raw).hexdigest().upper(), "transfer", False)
        self.recorder.tx(sent)
        for attempt in range(TX_REBROADCASTS + 1):
            if attempt and sent.accepted:
                sent.rebroadcasts += 1
            rpc = self.single[self.turn % len(self.single)]
            self.turn += 1
            try:
                rpc.broadcast(raw)
                sent.accepted = True
            except TxRejected as exc:
                if "already submitted" in str(exc):
                    sent.accepted = True  # this validator has it already (an earlier broadcast)
                else:
                    sent.error = exc.log or str(exc)
                    if not sent.accepted:  # a validator behind (restarted, catching up) refuses
                        continue  # the next nonce: another one may take it
            except HacaError as exc:  # that validator is down or paused: the next one
                sent.error = str(exc)[:200]
                continue
            if self._committed(sent.hash):
                return
        if not sent.accepted:
            raise HacaError(f"no validator accepted transfer {sent.hash}: {sent.error}")
        raise HacaError(f"transfer {sent.hash} not committed after {TX_REBROADCASTS} rebroadcasts")

    def _committed(self, tx_hash: str) -> bool:
        try:
            self.chain.wait_tx(tx_hash, timeout=TX_COMMIT_WAIT_S)
        except TxRejected:
            return True  # committed, refused in the block: counted by the checks
        except HacaError:
            return False
        return True

    def close(self) -> None:
        self.chain.close()
        for rpc in self.single:
            rpc.close()


class LoadGenerator:
    """The run's workers; `start` them, `stop` waits for each to finish its request."""

    def __init__(self, recorder: LoadRecorder) -> None:
        self.recorder = recorder
        self.workers: list[Worker] = []
        self._closers: list[Callable[[], None]] = []

    def add(
        self, name: str, interval: float, step: Callable[[], None], close: Callable[[], None] | None = None
    ) -> None:
        self.workers.append(Worker(name, self.recorder, interval, step))
        if close is not None:
            self._closers.append(close)

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def stop(self, timeout: float = 90.0) -> None:
        for worker in self.workers:
            worker.stop_event.set()
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            if worker.ident is not None:  # started
                worker.join(max(0.1, deadline - time.monotonic()))
        closers, self._closers = self._closers, []
        for close in closers:
            try:
                close()
            except Exception as exc:  # closing a client never fails the run
                log.debug("close_failed", error=str(exc))
