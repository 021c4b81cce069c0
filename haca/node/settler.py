"""Settler: drains the durable receipt queue into settlement txs and records each receipt's fate.
Survives restarts: a receipt already settled on chain (e.g. the node died after the tx committed)
is recognised and marked, never re-paid.

Two ways to the chain. Allowance-paid vanilla and tee receipts go in MsgSettleBatch (with a
`FlushPolicy`): thousands per tx under one root signature (the node's key, or the enclave's), flushed
when `max_receipts` wait, when none arrived for `idle` seconds, or when the oldest has waited
`max_age`. Everything else (per-request payments, zkml proofs), and any receipt a batch could not
settle, goes in MsgSettle (up to 64 per tx, each with its own signatures), whose refusals name the
receipt: that path gives a receipt its final verdict."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from haca.client.chain import ChainClient
from haca.client.errors import HacaError, TxRejected
from haca.client.records import parse_answer
from haca.crypto.keys import PrivateKey
from haca.node.chainview import ChainView
from haca.node.metrics import Metrics
from haca.node.receipts import ReceiptQueue, StoredReceipt
from haca.node.txlock import TxLock
from haca.types import codes
from haca.types.batch import (
    BATCH_MODES,
    MAX_BATCH_ALLOWANCES,
    MAX_BATCH_ITEMS,
    MAX_BATCH_MODELS,
    BatchRecord,
    MsgSettleBatch,
    assemble_batch,
)
from haca.types.inference import MsgSettle
from haca.types.modes import Mode, Status
from haca.types.payment import SpendingAllowance
from haca.types.receipt import NO_INSTANCES

log = structlog.get_logger("haca.settler")

# Refusals by the chain's settlement checks: they are about a receipt. Any other refusal (nonce,
# tx fee, the node's own balance, a duplicate in the mempool cache) leaves receipts pending.
RECEIPT_REFUSALS = frozenset(
    {
        codes.UNAUTHORIZED,
        codes.NOT_FOUND,
        codes.ALREADY_SETTLED,
        codes.AUTHORIZATION_EXPIRED,
        codes.FEE_ABOVE_LIMIT,
        codes.INSUFFICIENT_ESCROW,
        codes.INVALID_EVIDENCE,
        codes.INVALID_PAYMENT,
        codes.MEASUREMENT_NOT_APPROVED,
        codes.ENCLAVE_NOT_IN_GOOD_STANDING,
    }
)


# Refusals whose cause can go away while the payment lasts: the client tops its lane up, governance
# approves the measurement again, a late heartbeat extends the enclave's coverage. Such a receipt
# is tried again every `retry_interval` seconds until its payment expires, never given up at once
# (a client holding it could otherwise claim it and get the node slashed).
TRANSIENT_REFUSALS = frozenset(
    {codes.INSUFFICIENT_ESCROW, codes.MEASUREMENT_NOT_APPROVED, codes.ENCLAVE_NOT_IN_GOOD_STANDING}
)


@dataclass(frozen=True)
class FlushPolicy:
    """When the batchable receipts waiting at the node go to the chain as MsgSettleBatch."""

    max_receipts: int = 1000  # a full batch goes at once
    idle: float = 0.5  # seconds without a new receipt: traffic paused, settle what waits
    max_age: float = 5.0  # seconds the oldest waiting receipt may wait under steady traffic

    def __post_init__(self) -> None:
        if not 1 <= self.max_receipts <= MAX_BATCH_ITEMS:
            raise ValueError(f"max_receipts must be 1 to {MAX_BATCH_ITEMS}")
        if self.idle <= 0 or self.max_age <= 0:
            raise ValueError("idle and max_age must be positive")

    def due(self, waiting: int, now: float, last_queued: float, first_queued: float) -> bool:
        return waiting >= self.max_receipts or now - last_queued >= self.idle or now - first_queued >= self.max_age


RootSigner = Callable[[MsgSettleBatch], bytes]  # the batch root's signature: node key (vanilla), enclave (tee)


def batchable(stored: StoredReceipt) -> bool:
    """Whether a receipt can settle in a MsgSettleBatch: allowance-paid, vanilla or tee, no evidence."""
    item = stored.item
    receipt = item.receipt.receipt
    return (
        item.payment.kind == "allowance"
        and receipt.mode in BATCH_MODES
        and not item.evidence
        and receipt.instances_hash == NO_INSTANCES
    )


class Settler:
    def __init__(
        self,
        store: ReceiptQueue,
        chain: ChainClient,
        view: ChainView,
        key: PrivateKey,
        batch_size: int = 32,
        flush_interval: float = 1.0,
        max_inflight: int = 4,
        resubmit_after: int = 5,
        flush: FlushPolicy | None = None,
        sign_root: RootSigner | None = None,
        retry_interval: float = 5.0,
        claims_interval: float = 5.0,
        metrics: Metrics | None = None,
        tx_lock: TxLock | None = None,
    ) -> None:
        self.store, self.chain, self.view, self.key = store, chain, view, key
        self.batch_size, self.flush_interval, self.max_inflight = batch_size, flush_interval, max_inflight
        # Batching needs both: when to flush, and who signs the root.
        self.flush: FlushPolicy | None = flush if sign_root is not None else None
        self.sign_root: RootSigner | None = sign_root if flush is not None else None
        self._last_queued = self._first_queued = time.monotonic()
        self._waiting_since: float | None = None  # when the oldest batchable receipt not yet sent arrived
        self._single_only: set[str] = set()  # receipts a batch could not settle: MsgSettle decides them
        self.metrics = metrics  # the node's, when it runs in one
        # A sent tx may still be in a mempool: its receipts are re-sent only after this many passes
        # without a chain record (passes are `flush_interval` apart while nothing else changes).
        self.resubmit_after = resubmit_after
        self._unseen_passes: dict[str, int] = {}  # receipt id -> passes since its tx was sent
        self.retry_interval = retry_interval  # seconds between tries of a receipt refused for a transient cause
        self._retry_at: dict[str, float] = {}  # receipt id -> when to try it again
        self._outputs_checked = float("-inf")  # when expired outputs were last dropped
        # Pending claims on this node's receipts, read every `claims_interval` s: a claimed receipt
        # settles on its claim (the chain's hold pays), so it is tried again whatever became of the
        # node's own payment for it, alone, until it settles or the claim ends.
        self.claims_interval = claims_interval
        self._claims_read = float("-inf")
        self._claimed: set[str] = set()
        # held while txs of the node's account are in flight (shared with the enclave's attestations)
        self.tx_lock = tx_lock or store.new_tx_lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="settler", daemon=True)
        self.settled_total = 0
        self.rejected_total = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def notify(self) -> None:
        """A receipt was queued; flush early once a batch is full."""
        self._last_queued = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = self._last_queued
        full = self.flush.max_receipts if self.flush is not None else self.batch_size
        if self.store.unsettled_count() >= full:
            self._wake.set()

    def wake(self) -> None:
        """A proof is ready: settle now rather than at the next interval (the trust gap)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            wait = self.flush_interval if self.flush is None else min(self.flush_interval, self.flush.idle)
            self._wake.wait(wait)
            self._wake.clear()
            try:
                if not self.store.settler_lease():
                    continue  # another worker of this node settles (its lease lapses if it dies)
            except Exception:  # the shared store is away: try again at the next pass
                log.exception("settler_lease_error")
                continue
            try:
                self._drop_expired_outputs()
            except Exception:  # a failure here must not cost a settling pass
                log.exception("drop_outputs_error")
            try:
                while not self._stop.is_set():
                    with self.tx_lock:
                        # The lease checked again once the tx lock is ours: a settler that stalled
                        # past its lease while waiting for the lock does not send beside its successor.
                        if not self.store.settler_lease() or not self.run_once():
                            break
            except Exception:  # keep settling after a transient RPC failure
                log.exception("settler_error")

    def _drop_expired_outputs(self) -> None:
        """Outputs are kept for their client until the payment expires (at most once a minute)."""
        now = time.monotonic()
        if now < self._outputs_checked + 60:
            return
        self._outputs_checked = now
        dropped = self.store.drop_outputs(self.view.height())
        if dropped:
            log.info("outputs_dropped", outputs=dropped)

    def run_once(self) -> int:
        """Settle up to `max_inflight` batches (consecutive nonces, one block); return how many
        receipts changed state (settled, rejected, or sent back to pending), 0 when idle."""
        limit = self.batch_size * self.max_inflight
        if self.flush is not None:
            limit = max(limit, self.flush.max_receipts * self.max_inflight)
        self._follow_claims()
        now = time.monotonic()
        deferred = {rid for rid, due in self._retry_at.items() if due > now}
        batch = self.store.unsettled(limit, exclude=deferred)
        if not batch:
            self._waiting_since = None
            return 0
        done = self._reconcile([r for r in batch if r.status == Status.SUBMITTED])
        pending = [r for r in batch if r.status == Status.PENDING and self._may_try(r.item.receipt.id)]
        if self.flush is not None:
            batched = [r for r in pending if batchable(r) and r.item.receipt.id not in self._single_only]
            pending = [r for r in pending if not batchable(r) or r.item.receipt.id in self._single_only]
            if batched and self._batch_due(len(batched)):
                done += self._settle_batches(batched)
        chunks = settlement_chunks(pending, self.batch_size)
        return done + (self._submit_pipelined(chunks) if chunks else 0)

    def _batch_due(self, waiting: int) -> bool:
        assert self.flush is not None
        now = time.monotonic()
        first = self._waiting_since if self._waiting_since is not None else now
        return self.flush.due(waiting, now, self._last_queued, first)

    # --- MsgSettleBatch ---------------------------------------------------------------------------

    def _settle_batches(self, receipts: list[StoredReceipt]) -> int:
        """Send the waiting receipts as batches (per mode, consecutive nonces), then record each
        outcome. A batch refused whole sends its receipts the MsgSettle way."""
        assert self.flush is not None and self.sign_root is not None
        self._waiting_since = None
        by_mode: dict[str, list[StoredReceipt]] = {}
        for stored in receipts:
            by_mode.setdefault(stored.item.receipt.receipt.mode, []).append(stored)
        nonce = self.chain.nonce(self.key.address)
        sent: list[tuple[list[StoredReceipt], MsgSettleBatch, str]] = []
        done = 0
        for mode, group in sorted(by_mode.items()):
            for chunk in batch_chunks(group, self.flush.max_receipts):
                try:
                    msg = self._batch_msg(mode, chunk)
                    tx_hash = self.chain.broadcast(self.chain.sign(self.key, (msg,), nonce=nonce))
                except (HacaError, ValueError) as exc:  # refused whole (or the enclave would not sign)
                    log.warning("batch_refused", receipts=len(chunk), mode=mode, reason=str(exc))
                    done += self._send_single(chunk)
                    continue
                self._mark_submitted(chunk, tx_hash, "batch")
                sent.append((chunk, msg, tx_hash))
                nonce += 1
        return done + sum(self._await_batch(chunk, msg, tx_hash) for chunk, msg, tx_hash in sent)

    def _batch_msg(self, mode: str, chunk: list[StoredReceipt]) -> MsgSettleBatch:
        assert self.sign_root is not None
        entries = [(r.item.receipt.receipt, r.item.payment) for r in chunk]
        msg, _ = assemble_batch(self.chain.chain_id, self.key.address, mode, entries)
        return MsgSettleBatch(msg.mode, msg.models, msg.allowances, msg.items, self.sign_root(msg))

    def _send_single(self, chunk: list[StoredReceipt]) -> int:
        ids = [r.item.receipt.id for r in chunk]
        self._single_only.update(ids)
        self.store.mark(ids, Status.PENDING)
        for rid in ids:
            self._unseen_passes.pop(rid, None)
        return len(ids)

    def _await_batch(self, chunk: list[StoredReceipt], msg: MsgSettleBatch, tx_hash: str) -> int:
        try:
            outcome = self.chain.wait_tx(tx_hash, timeout=30)
        except TxRejected as exc:  # refused whole in FinalizeBlock (state changed since CheckTx)
            log.warning("batch_refused", receipts=len(chunk), reason=exc.log or str(exc))
            return self._send_single(chunk)
        except HacaError:
            return 0  # not committed yet: reconciled on a later pass
        batch_id = msg.header(self.chain.chain_id, self.key.address).id
        answer = self.chain.query("/inference/batch", batch_id.encode())
        rejected = {r.index for r in parse_answer(BatchRecord.from_json, answer, "batch record").rejected}
        status = Status.VERIFIED if msg.mode == Mode.TEE else Status.SETTLED
        settled = [r for i, r in enumerate(chunk) if i not in rejected]
        self.store.mark([r.item.receipt.id for r in settled], status, height=outcome.height)
        self._count(settled, status)
        retry = [r for i, r in enumerate(chunk) if i in rejected and not self._settled_on_chain(r)]
        if retry:  # each gets its verdict from MsgSettle, which names why the chain refuses it
            self._send_single(retry)
        self._settled_chunk(chunk, outcome.height)
        self.settled_total += len(settled)
        log.info("settled_batch", batch=batch_id, receipts=len(settled), rejected=len(rejected), height=outcome.height)
        return len(chunk)

    # --- MsgSettle --------------------------------------------------------------------------------

    def _reconcile(self, submitted: list[StoredReceipt]) -> int:
        """Receipts whose tx was sent: settled once the chain has their record; back to pending
        when their tx has had time to commit and did not (or was sent before a restart)."""
        changed = 0
        for stored in submitted:
            receipt_id = stored.item.receipt.id
            if self._settled_on_chain(stored):
                changed += 1
                continue
            # Sent before a restart (unknown here): re-send now; a duplicate is refused harmlessly.
            passes = self._unseen_passes.get(receipt_id, self.resubmit_after) + 1
            self._unseen_passes[receipt_id] = passes
            if passes > self.resubmit_after:
                self.store.mark([receipt_id], Status.PENDING)
                self._unseen_passes.pop(receipt_id, None)
                changed += 1
        return changed

    def _settled_on_chain(self, stored: StoredReceipt) -> bool:
        """Whether the chain settled this receipt (alone or in a batch): its request's record names it."""
        receipt = stored.item.receipt
        record = self.view.request_record(receipt.receipt.client, receipt.receipt.request_id)
        receipt_id = receipt.id
        if record is None or record.receipt_id != receipt_id:
            return False
        self.store.mark([receipt_id], Status(record.status), height=record.height)
        self._count([stored], Status(record.status))
        self._unseen_passes.pop(receipt_id, None)
        # a batch item's record (a pointer) names no allowance
        self._refresh_view(receipt.receipt.client, None, record.height)
        self.settled_total += 1
        return True

    def _submit_pipelined(self, chunks: list[list[StoredReceipt]]) -> int:
        nonce = self.chain.nonce(self.key.address)
        sent: list[tuple[list[StoredReceipt], str]] = []
        done = 0
        for chunk in chunks:
            chunk, tx_hash, rejected, refusal = self._send_dropping_refused(chunk, nonce)
            done += rejected
            if not chunk:
                continue  # every receipt of it was refused by name: the nonce is still free
            if tx_hash is None:
                if refusal is not None and not sent and refusal.abci_code in RECEIPT_REFUSALS:
                    return done + self._isolate(chunk, refusal)  # a refusal that names no receipt
                break  # a tx-level refusal, or later batches: all stay pending for the next pass
            self._mark_submitted(chunk, tx_hash)
            sent.append((chunk, tx_hash))
            nonce += 1
        return done + sum(self._await(chunk, tx_hash) for chunk, tx_hash in sent)

    def _send_dropping_refused(
        self, chunk: list[StoredReceipt], nonce: int
    ) -> tuple[list[StoredReceipt], str | None, int, TxRejected | None]:
        """Broadcast `chunk`; each receipt CheckTx names as refused is marked rejected, dropped,
        and the rest resent at the same nonce, so one bad receipt costs one CheckTx, not a block
        per receipt. (what was sent, its tx hash or None, receipts rejected, the last refusal)."""
        rejected = 0
        refusal: TxRejected | None = None
        while chunk:
            try:
                return chunk, self.chain.broadcast(self._settle_tx(chunk, nonce)), rejected, None
            except TxRejected as exc:
                refusal = exc
                bad = refused_receipt(chunk, exc)
                if bad is None:
                    return chunk, None, rejected, exc
                rejected += self._rejected(bad, exc)
                chunk = [r for r in chunk if r is not bad]
        return chunk, None, rejected, refusal

    def _settle_tx(self, chunk: list[StoredReceipt], nonce: int | None = None) -> bytes:
        return self.chain.sign(self.key, (MsgSettle(tuple(r.item for r in chunk)),), nonce=nonce)

    def _count(self, receipts: list[StoredReceipt], status: str) -> None:
        """Receipts whose settlement ended: by status, and (settled ones) the lag since the answer."""
        if self.metrics is None or not receipts:
            return
        self.metrics.settled.labels(str(status)).inc(len(receipts))
        if status in (Status.SETTLED, Status.VERIFIED):
            now = time.time()
            for stored in receipts:
                self.metrics.settlement_lag.observe(max(0.0, now - stored.item.receipt.receipt.timestamp))

    def _mark_submitted(self, chunk: list[StoredReceipt], tx_hash: str, kind: str = "single") -> None:
        if self.metrics is not None:
            self.metrics.settlement_txs.labels(kind).inc()
        ids = [r.item.receipt.id for r in chunk]
        self.store.mark(ids, Status.SUBMITTED, tx_hash=tx_hash)
        self._unseen_passes.update((rid, 0) for rid in ids)

    def _isolate(self, chunk: list[StoredReceipt], cause: TxRejected) -> int:
        """A tx was refused for one of its receipts without naming it: send each alone, at
        consecutive nonces in one block, so each refusal names its receipt and no other is held
        back. Stops at the first refusal that is not about a receipt (the rest stay pending)."""
        # Sent one a block (each waited for), a chunk took a minute and a node isolating pass
        # after pass fell behind its payments' expiry (the chaos campaign, issue 23).
        log.warning("settler_isolating", receipts=len(chunk), code=cause.abci_code, reason=cause.log or str(cause))
        done = 0
        nonce = self.chain.nonce(self.key.address)
        sent: list[tuple[StoredReceipt, str]] = []
        for stored in chunk:
            try:
                tx_hash = self.chain.broadcast(self._settle_tx([stored], nonce))
            except TxRejected as single:
                if single.abci_code not in RECEIPT_REFUSALS:
                    break
                done += self._rejected(stored, single)
                continue
            self._mark_submitted([stored], tx_hash)
            sent.append((stored, tx_hash))
            nonce += 1
        return done + sum(self._await([stored], tx_hash, isolate=False) for stored, tx_hash in sent)

    def _await(self, chunk: list[StoredReceipt], tx_hash: str, isolate: bool = True) -> int:
        ids = [r.item.receipt.id for r in chunk]
        try:
            outcome = self.chain.wait_tx(tx_hash, timeout=30)
        except TxRejected as exc:  # failed in FinalizeBlock (state changed since CheckTx)
            self.store.mark(ids, Status.PENDING)
            for rid in ids:
                self._unseen_passes.pop(rid, None)
            if exc.abci_code not in RECEIPT_REFUSALS:
                return 0
            bad = refused_receipt(chunk, exc)
            if bad is not None:  # the rest are pending again and go in the next pass
                return self._rejected(bad, exc)
            if len(chunk) == 1:
                return self._rejected(chunk[0], exc)
            return self._isolate(chunk, exc) if isolate else 0
        except HacaError:
            return 0  # not committed yet: reconciled on a later pass
        statuses = settled_statuses(outcome.events)
        by_status: dict[Status, list[str]] = {}
        for rid in ids:
            by_status.setdefault(statuses.get(rid, Status.SETTLED), []).append(rid)
        for status, marked in sorted(by_status.items()):
            self.store.mark(marked, status, height=outcome.height)
            self._count([r for r in chunk if r.item.receipt.id in set(marked)], status)
        self._settled_chunk(chunk, outcome.height)
        self.settled_total += len(ids)
        log.info("settled", receipts=len(ids), height=outcome.height, tx=tx_hash)
        return len(ids)

    def _settled_chunk(self, chunk: list[StoredReceipt], height: int) -> None:
        """A tx of these receipts committed at `height`: stop counting its passes, refresh what it changed."""
        for stored in chunk:
            self._unseen_passes.pop(stored.item.receipt.id, None)
            payment = stored.item.payment
            allowance_id = payment.value.id if isinstance(payment.value, SpendingAllowance) else None
            self._refresh_view(stored.item.receipt.receipt.client, allowance_id, height)

    def _refresh_view(self, client: str, allowance_id: str | None, height: int) -> None:
        """Settled receipts leave the node's unsettled counts; the cached escrow (and allowance
        spend) must not lag behind them — nor be read again from a validator that has not seen
        block `height` yet — or the gate would accept what the escrow cannot pay."""
        forget = getattr(self.view, "forget", None)  # test doubles may not cache at all
        if forget is not None:
            forget(client, allowance_id, height)

    def _follow_claims(self) -> None:
        """Put this node's claimed receipts back in the queue (a refusal of the node's own payment,
        an expiry, is no reason to leave them: the claim pays), to be settled alone."""
        now = time.monotonic()
        if now - self._claims_read < self.claims_interval:
            return
        self._claims_read = now
        try:
            answer = self.chain.query("/inference/node_claims", self.key.address.encode())
        except HacaError:  # the chain unreachable for now: the next pass reads them again
            return
        claimed = {str(c["receipt_id"]) for c in answer.get("claims", [])}
        for receipt_id in sorted(claimed - self._claimed):
            stored = self.store.get(receipt_id)
            if stored is None:
                continue
            self._single_only.add(receipt_id)
            self._retry_at.pop(receipt_id, None)
            if stored.status == Status.REJECTED:
                self.store.mark([receipt_id], Status.PENDING, error="claimed: settling on the claim")
                log.info("claimed_receipt_requeued", receipt=receipt_id)
        self._claimed = claimed

    def _retry_until(self, stored: StoredReceipt) -> int:
        """The last height a receipt refused for a transient cause is worth trying again at: its
        payment's expiry, and (unclaimed) the end of the chain's settlement window of its height."""
        until = stored.item.payment.value.expiry
        if stored.item.receipt.id in self._claimed:
            return 1 << 62  # the claim pays until it ends
        return min(until, stored.item.receipt.receipt.height_hint + int(self.view.params()["claim_window"]))

    def _may_try(self, receipt_id: str) -> bool:
        due = self._retry_at.get(receipt_id)
        if due is None:
            return True
        if time.monotonic() < due:
            return False
        del self._retry_at[receipt_id]
        return True

    def _rejected(self, stored: StoredReceipt, exc: TxRejected) -> int:
        """The chain refused this receipt. If it settled it before (the node crashed after the
        tx committed; the resend is now refused, for whatever reason), that is what counts. A
        transient refusal leaves it pending, to be tried again while its payment lasts."""
        receipt_id = stored.item.receipt.id
        if self._settled_on_chain(stored):
            return 1
        reason = exc.log or str(exc)
        if exc.abci_code in TRANSIENT_REFUSALS and self.view.height() <= self._retry_until(stored):
            self.store.mark([receipt_id], Status.PENDING, error=f"refused for now, will retry: {reason}")
            self._retry_at[receipt_id] = time.monotonic() + self.retry_interval
            log.info("settlement_deferred", receipt=receipt_id, reason=reason)
            return 1
        self.store.mark([receipt_id], Status.REJECTED, error=reason)
        self._count([stored], Status.REJECTED)
        self.rejected_total += 1
        log.warning("settlement_rejected", receipt=receipt_id, reason=reason)
        return 1


def batch_chunks(receipts: list[StoredReceipt], size: int) -> list[list[StoredReceipt]]:
    """Batches of at most `size` receipts, each within a batch's limits on distinct allowances and
    models (a chunk past them could not be assembled)."""
    chunks: list[list[StoredReceipt]] = []
    current: list[StoredReceipt] = []
    allowances: set[str] = set()
    models: set[str] = set()
    for stored in receipts:
        paid_by, model = stored.item.payment.value, stored.item.receipt.receipt.model_id
        allowance = paid_by.id if isinstance(paid_by, SpendingAllowance) else paid_by.request_id
        new_allowance, new_model = allowance not in allowances, model not in models
        if current and (
            len(current) >= size
            or (new_allowance and len(allowances) >= MAX_BATCH_ALLOWANCES)
            or (new_model and len(models) >= MAX_BATCH_MODELS)
        ):
            chunks.append(current)
            current, allowances, models = [], set(), set()
        current.append(stored)
        allowances.add(allowance)
        models.add(model)
    if current:
        chunks.append(current)
    return chunks


ITEM_BYTES = 2_000  # a settlement item's receipt and payment, as tx JSON
TX_BUDGET = 200_000  # below the chain's 256 KiB tx limit, with room for the envelope


def settlement_chunks(receipts: list[StoredReceipt], batch_size: int) -> list[list[StoredReceipt]]:
    """Batches of at most `batch_size` receipts whose tx stays within the chain's size limit
    (a zkml proof is ~8 KB as hex: a few per tx)."""
    chunks: list[list[StoredReceipt]] = []
    current: list[StoredReceipt] = []
    size = 0
    for stored in receipts:
        item = ITEM_BYTES + 2 * len(stored.item.evidence)
        if current and (len(current) >= batch_size or size + item > TX_BUDGET):
            chunks.append(current)
            current, size = [], 0
        current.append(stored)
        size += item
    if current:
        chunks.append(current)
    return chunks


def refused_receipt(chunk: list[StoredReceipt], exc: TxRejected) -> StoredReceipt | None:
    """The receipt of `chunk` a settlement refusal names (the chain reports the item in the
    result's data), if any."""
    if exc.abci_code not in RECEIPT_REFUSALS:
        return None
    receipt_id = exc.refused_receipt
    return next((r for r in chunk if r.item.receipt.id == receipt_id), None) if receipt_id else None


def settled_statuses(events: list[dict[str, Any]]) -> dict[str, Status]:
    """Receipt id -> the status its `settle` event gives it (settled, or verified)."""
    out: dict[str, Status] = {}
    for event in events:
        if event.get("type") == "settle":
            attrs = {a["key"]: a["value"] for a in event.get("attributes", [])}
            out[attrs["receipt_id"]] = Status(attrs.get("status", Status.SETTLED))
    return out
