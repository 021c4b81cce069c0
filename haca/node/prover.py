"""The node's prover: zkml receipts wait in `proving` while EZKL proves them in worker processes
(spawned, not forked: proving holds the GIL, and a forked EZKL can hang), then their proofs are
stored as evidence and the settler takes them. Jobs live in the receipt store, so a restart loses
none: every receipt still `proving` is proved again. A job that fails (an EZKL error, a worker
killed for memory) is retried up to `max_attempts` times, then the receipt ends `failed` with the
reason."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import structlog

from haca.node.metrics import Metrics
from haca.node.payments import ProvingLoad
from haca.node.receipts import ProofJob, ReceiptQueue
from haca.proofs.zk.circuit import Circuit

log = structlog.get_logger("haca.prover")


def prove_in_worker(circuit: Circuit, inputs: list[list[float]], srs: str) -> bytes:
    """Runs in a worker process: the proof JSON of `inputs` through `circuit`."""
    from haca.proofs.zk.proof import prove

    return prove(circuit, inputs, Path(srs)).proof


class Prover:
    def __init__(
        self,
        store: ReceiptQueue,
        circuits: Mapping[str, Circuit],  # model id -> its circuit (built or fetched for this node)
        srs_for: Callable[[Circuit], Path],
        workers: int = 1,
        max_attempts: int = 3,
        poll_interval: float = 0.5,
        on_proof: Callable[[], None] | None = None,
        metrics: Metrics | None = None,
        load: ProvingLoad | None = None,
    ) -> None:
        self.store, self.circuits, self.srs_for = store, circuits, srs_for
        self.workers, self.max_attempts, self.poll_interval = workers, max_attempts, poll_interval
        self.on_proof = on_proof
        self._pool = self._new_pool()
        self._running: dict[str, Future[bytes]] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prover", daemon=True)
        self.proved_total = self.failed_total = 0
        self.metrics = metrics  # the node's, when it runs in one
        self.load = load  # the payment gate's estimate, fed each proof's time

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def notify(self) -> None:
        """A zkml receipt was queued."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # keep proving after an unexpected failure
                log.exception("prover_error")
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    def run_once(self) -> int:
        """Collect finished proofs, start new jobs up to the worker count; how many finished."""
        finished = self._collect()
        if self._running:
            self.store.renew_proof_claims(list(self._running))
        free = self.workers - len(self._running)
        if free > 0:
            for job in self.store.claim_proof_jobs(free, exclude=frozenset(self._running)):
                self._start(job)
        return finished

    def drain(self, timeout: float = 600.0) -> None:
        """Prove everything queued now, in this thread (for tests and tools)."""
        import time

        deadline = time.monotonic() + timeout
        while self.store.proof_jobs(1) or self._running:
            self.run_once()
            if time.monotonic() > deadline:
                raise TimeoutError("proof jobs still running")
            time.sleep(0.05)

    def _start(self, job: ProofJob) -> None:
        circuit = self.circuits.get(job.circuit)
        if circuit is None:
            self._failed(job, f"this node has no circuit for model {job.circuit}", final=True)
            return
        try:
            future = self._pool.submit(prove_in_worker, circuit, job.inputs, str(self.srs_for(circuit)))
        except BrokenProcessPool:
            self._pool = self._new_pool()
            future = self._pool.submit(prove_in_worker, circuit, job.inputs, str(self.srs_for(circuit)))
        self._running[job.receipt_id] = future
        started = time.monotonic()

        def done(finished: Future[bytes]) -> None:
            seconds = time.monotonic() - started  # queue wait in the pool included
            if self.metrics is not None:
                self.metrics.proving.observe(seconds)
            if self.load is not None and not finished.cancelled() and finished.exception() is None:
                self.load.observe(seconds)
            self._wake.set()

        future.add_done_callback(done)

    def _collect(self) -> int:
        finished = 0
        for receipt_id, future in list(self._running.items()):
            if not future.done():
                continue
            del self._running[receipt_id]
            finished += 1
            try:
                proof = future.result()
            except BrokenProcessPool as exc:  # a worker died (e.g. out of memory): the pool is gone
                self._pool = self._new_pool()
                self._retry_or_fail(receipt_id, f"the prover process died: {exc}")
                continue
            except Exception as exc:
                self._retry_or_fail(receipt_id, f"{type(exc).__name__}: {exc}")
                continue
            self.store.proof_done(receipt_id, proof)
            self.proved_total += 1
            log.info("proved", receipt=receipt_id, bytes=len(proof))
            if self.on_proof is not None:
                self.on_proof()
        return finished

    def _retry_or_fail(self, receipt_id: str, error: str) -> None:
        job = next((j for j in self.store.proof_jobs(1 << 16) if j.receipt_id == receipt_id), None)
        if job is not None:
            self._failed(job, error, final=job.attempts + 1 >= self.max_attempts)

    def _failed(self, job: ProofJob, error: str, final: bool) -> None:
        self.store.proof_failed(job.receipt_id, error, final)
        log.warning("proof_failed", receipt=job.receipt_id, attempt=job.attempts + 1, final=final, error=error)
        if final:
            self.failed_total += 1
