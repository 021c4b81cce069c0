"""Settler: drains the durable receipt queue into MsgSettle txs, in batches (flushed by count
or time), and records each receipt's fate. Survives restarts: a receipt already settled on
chain (e.g. the node died after the tx committed) is recognised and marked, never re-paid."""

from __future__ import annotations

import threading

import structlog

from haca.client.chain import ChainClient
from haca.client.errors import HacaError, TxRejected
from haca.crypto.keys import PrivateKey
from haca.node.chainview import ChainView
from haca.node.receipts import ReceiptStore, StoredReceipt
from haca.types import codes
from haca.types.inference import MsgSettle

log = structlog.get_logger("haca.settler")


class Settler:
    def __init__(
        self,
        store: ReceiptStore,
        chain: ChainClient,
        view: ChainView,
        key: PrivateKey,
        batch_size: int = 32,
        flush_interval: float = 1.0,
        max_inflight: int = 4,
    ) -> None:
        self.store, self.chain, self.view, self.key = store, chain, view, key
        self.batch_size, self.flush_interval, self.max_inflight = batch_size, flush_interval, max_inflight
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
        if self.store.unsettled_count() >= self.batch_size:
            self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                while not self._stop.is_set() and self.run_once():
                    pass
            except Exception:  # keep settling after a transient RPC failure
                log.exception("settler_error")

    def run_once(self) -> int:
        """Settle up to `max_inflight` batches (consecutive nonces, one block); return how many
        receipts reached a final state."""
        batch = self.store.unsettled(self.batch_size * self.max_inflight)
        if not batch:
            return 0
        done = self._reconcile([r for r in batch if r.status == "submitted"])
        pending = [r for r in batch if r.status == "pending"]
        chunks = [pending[i : i + self.batch_size] for i in range(0, len(pending), self.batch_size)]
        return done + (self._submit_pipelined(chunks) if chunks else 0)

    def _reconcile(self, submitted: list[StoredReceipt]) -> int:
        """Receipts whose tx was sent before: settled on chain, or back to pending."""
        for stored in submitted:
            record = self.view.receipt_record(stored.item.receipt.id)
            if record is not None:
                self.store.mark([stored.item.receipt.id], "settled", height=int(record["height"]))
                self.settled_total += 1
            else:
                self.store.mark([stored.item.receipt.id], "pending")
        return len(submitted)

    def _submit_pipelined(self, chunks: list[list[StoredReceipt]]) -> int:
        nonce = self.chain.nonce(self.key.address)
        sent: list[tuple[list[StoredReceipt], str]] = []
        for chunk in chunks:
            try:
                tx_hash = self.chain.broadcast(self._settle_tx(chunk, nonce))
            except TxRejected as exc:
                if sent:
                    break  # later batches wait for the next pass, after these commit
                return self._isolate(chunk, exc)
            self.store.mark([r.item.receipt.id for r in chunk], "submitted", tx_hash=tx_hash)
            sent.append((chunk, tx_hash))
            nonce += 1
        return sum(self._await(chunk, tx_hash) for chunk, tx_hash in sent)

    def _settle_tx(self, chunk: list[StoredReceipt], nonce: int | None = None) -> bytes:
        return self.chain.sign(self.key, (MsgSettle(tuple(r.item for r in chunk)),), nonce=nonce)

    def _isolate(self, chunk: list[StoredReceipt], exc: TxRejected) -> int:
        """A batch was refused: settle its receipts one by one, so one bad receipt stops no other."""
        if len(chunk) == 1:
            return self._rejected(chunk[0], exc)
        done = 0
        for stored in chunk:
            try:
                tx_hash = self.chain.broadcast(self._settle_tx([stored]))
            except TxRejected as single:
                done += self._rejected(stored, single)
                continue
            self.store.mark([stored.item.receipt.id], "submitted", tx_hash=tx_hash)
            done += self._await([stored], tx_hash)
        return done

    def _await(self, chunk: list[StoredReceipt], tx_hash: str) -> int:
        ids = [r.item.receipt.id for r in chunk]
        try:
            outcome = self.chain.wait_tx(tx_hash, timeout=30)
        except TxRejected as exc:  # failed in FinalizeBlock (state changed since CheckTx)
            self.store.mark(ids, "pending")
            return self._isolate(chunk, exc)
        except HacaError:
            return 0  # not committed yet: reconciled on the next pass
        self.store.mark(ids, "settled", height=outcome.height)
        self.settled_total += len(ids)
        log.info("settled", receipts=len(ids), height=outcome.height, tx=tx_hash)
        return len(ids)

    def _rejected(self, stored: StoredReceipt, exc: TxRejected) -> int:
        receipt_id = stored.item.receipt.id
        if exc.abci_code == codes.ALREADY_SETTLED:
            record = self.view.receipt_record(receipt_id)
            if record is not None and record["receipt_id"] == receipt_id:
                self.store.mark([receipt_id], "settled", height=int(record["height"]))
                self.settled_total += 1
                return 1
        self.store.mark([receipt_id], "rejected", error=exc.log or str(exc))
        self.rejected_total += 1
        log.warning("settlement_rejected", receipt=receipt_id, reason=exc.log or str(exc))
        return 1
