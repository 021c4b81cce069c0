"""The node's durable receipt queue (SQLite, WAL). A receipt is written before its answer is
sent, so an accepted inference is never lost; the settler moves it pending → submitted →
settled (or rejected). `synchronous=NORMAL` in WAL mode survives a process kill.

With each receipt the output its hash commits to is kept (`outputs`), until the payment expires:
a client whose response was lost can fetch what it paid for (haca.types.outputs)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from haca.node.holds import HoldBook, LocalHolds
from haca.node.txlock import AccountTxLock, TxLock
from haca.proofs.zk.proof import PROOF_MAGIC, ProofError, encode_ezkl_proof
from haca.types.inference import SettlementItem
from haca.types.modes import UNSETTLED, Status
from haca.types.outputs import StoredOutput
from haca.types.payment import SignedPayment
from haca.types.receipt import SignedReceipt

_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    id TEXT PRIMARY KEY,
    request_key TEXT NOT NULL UNIQUE,
    client TEXT NOT NULL,
    allowance_id TEXT,
    fee TEXT NOT NULL,
    receipt TEXT NOT NULL,
    payment TEXT NOT NULL,
    evidence BLOB NOT NULL,
    status TEXT NOT NULL,
    tx_hash TEXT,
    height INTEGER,
    error TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS receipts_status ON receipts (status, created);
CREATE INDEX IF NOT EXISTS receipts_client ON receipts (client, status);
CREATE TABLE IF NOT EXISTS outputs (
    request_key TEXT PRIMARY KEY,
    receipt_id TEXT NOT NULL,
    output TEXT NOT NULL,
    expiry INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outputs_expiry ON outputs (expiry);
CREATE TABLE IF NOT EXISTS proof_jobs (
    receipt_id TEXT PRIMARY KEY REFERENCES receipts (id),
    circuit TEXT NOT NULL,
    inputs TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
"""

# Outputs are kept until the payment expires, but never longer than this many blocks after the
# receipt (an allowance may run for months; disk is not free).
OUTPUT_RETENTION_BLOCKS = 100_000
DROP_CHUNK = 1000  # outputs deleted per statement, the lock released between them

_UNSETTLED_SQL = ", ".join(f"'{status}'" for status in UNSETTLED)
_SETTLEABLE_SQL = f"'{Status.PENDING.value}', '{Status.SUBMITTED.value}'"  # a proving receipt waits for its proof


@dataclass(frozen=True)
class ProofJob:
    """A zkml receipt waiting for its proof: which circuit, which input, how many tries so far."""

    receipt_id: str
    circuit: str  # the model id whose circuit proves it
    inputs: list[list[float]]
    attempts: int


class DuplicateRequest(ValueError):
    """A receipt for this (client, request id) already exists."""


@dataclass(frozen=True)
class StoredReceipt:
    item: SettlementItem
    status: str
    tx_hash: str | None
    height: int | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "receipt": self.item.receipt.to_json(),
            # the client's own signed payment: what it shows with a claim (MsgClaim)
            "payment": self.item.payment.to_json(),
            "status": self.status,
            "tx_hash": self.tx_hash,
            "settled_height": self.height,
            "error": self.error,
            # zkml: the proof, once made (anyone may verify it against the model's circuit on chain)
            "evidence": "0x" + self.item.evidence.hex() if self.item.evidence else None,
        }


class ReceiptQueue(ABC):
    """What the node's request path, settler and prover need of a receipt store: one process's
    SQLite file (ReceiptStore), or PostgreSQL shared by a node's workers (haca.node.pgstore)."""

    @abstractmethod
    def add(
        self,
        receipt: SignedReceipt,
        payment: SignedPayment,
        evidence: bytes = b"",
        proof_job: ProofJob | None = None,
        output: dict[str, Any] | None = None,
    ) -> None: ...

    @abstractmethod
    def proof_jobs(self, limit: int = 64, exclude: frozenset[str] = frozenset()) -> list[ProofJob]: ...

    def claim_proof_jobs(self, limit: int, exclude: frozenset[str] = frozenset()) -> list[ProofJob]:
        """Jobs for this process's prover to start: none another worker is proving."""
        return self.proof_jobs(limit, exclude)

    def renew_proof_claims(self, receipt_ids: Collection[str]) -> None:  # noqa: B027 (nothing to renew alone)
        """Still proving these (a worker's claims lapse unless renewed)."""

    @abstractmethod
    def proof_done(self, receipt_id: str, proof: bytes) -> None: ...

    @abstractmethod
    def proof_failed(self, receipt_id: str, error: str, final: bool) -> None: ...

    @abstractmethod
    def has_request(self, client: str, request_id: str) -> bool: ...

    @abstractmethod
    def output(self, client: str, request_id: str) -> StoredOutput | None: ...

    @abstractmethod
    def drop_outputs(self, expired_before: int) -> int: ...

    @abstractmethod
    def get(self, receipt_id: str) -> StoredReceipt | None: ...

    @abstractmethod
    def unsettled(self, limit: int, exclude: Collection[str] = ()) -> list[StoredReceipt]: ...

    @abstractmethod
    def count(self, status: str) -> int: ...

    @abstractmethod
    def unsettled_count(self) -> int: ...

    @abstractmethod
    def unsettled_charges(self, client: str) -> tuple[int, int]: ...

    @abstractmethod
    def unsettled_allowance(self, allowance_id: str) -> int: ...

    def settled_height(self, key: str) -> int:
        """The height of the last settlement this store recorded for a client or an allowance id
        (0: none that another process made; one process's settler updates its own chain view)."""
        return 0

    @abstractmethod
    def mark(
        self,
        receipt_ids: list[str],
        status: str,
        tx_hash: str | None = None,
        height: int | None = None,
        error: str | None = None,
    ) -> None: ...

    def prover_capacity(self, local: int) -> int:
        """The provers working on this store's proof jobs, given this process runs `local`."""
        return local

    def settler_lease(self) -> bool:
        """May this process settle now? (One settler per node identity: its txs share one nonce.)"""
        return True

    def new_holds(self) -> HoldBook:
        """Where the payment gate keeps what requests in flight hold."""
        return LocalHolds()

    def new_tx_lock(self) -> TxLock:
        """The lock every tx of the node's account is sent under."""
        return AccountTxLock()

    @abstractmethod
    def close(self) -> None: ...


class ReceiptStore(ReceiptQueue):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()  # the API and the settler thread share the connection
        # Unsettled fees per client and per allowance, kept in memory: the request path reads them.
        self._unsettled: dict[str, tuple[int, int]] = {}  # client -> (count, total fees)
        self._unsettled_allowance: dict[str, int] = {}
        self._charge: dict[str, tuple[str, str | None, int]] = {}  # receipt id -> (client, allowance, fee)
        for rid, client, allowance_id, fee in self._db.execute(
            f"SELECT id, client, allowance_id, fee FROM receipts WHERE status IN ({_UNSETTLED_SQL})"
        ):
            self._track(rid, client, allowance_id, int(fee))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN … COMMIT on the shared connection (the caller holds the lock); anything raised in
        between rolls back, so one bad row can never leave the connection inside a transaction."""
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _track(self, receipt_id: str, client: str, allowance_id: str | None, fee: int) -> None:
        self._charge[receipt_id] = (client, allowance_id, fee)
        count, total = self._unsettled.get(client, (0, 0))
        self._unsettled[client] = (count + 1, total + fee)
        if allowance_id:
            self._unsettled_allowance[allowance_id] = self._unsettled_allowance.get(allowance_id, 0) + fee

    def _untrack(self, receipt_id: str) -> None:
        charge = self._charge.pop(receipt_id, None)
        if charge is None:
            return
        client, allowance_id, fee = charge
        count, total = self._unsettled[client]
        if count == 1:
            del self._unsettled[client]
        else:
            self._unsettled[client] = (count - 1, total - fee)
        if allowance_id:
            self._unsettled_allowance[allowance_id] -= fee

    def add(
        self,
        receipt: SignedReceipt,
        payment: SignedPayment,
        evidence: bytes = b"",
        proof_job: ProofJob | None = None,
        output: dict[str, Any] | None = None,
    ) -> None:
        """Queue a receipt (durably, before its answer leaves). A zkml receipt comes with its proof
        job and waits in `proving` until the proof is stored. `output`: what the receipt's output
        hash commits to, kept for the paying client until the payment expires."""
        r = receipt.receipt
        allowance_id = getattr(payment.value, "id", None) if payment.kind == "allowance" else None
        row = (
            receipt.id,
            f"{r.client}:{r.request_id}",
            r.client,
            allowance_id,
            str(r.fee),
            json.dumps(receipt.to_json()),
            json.dumps(payment.to_json()),
            evidence,
            (Status.PROVING if proof_job else Status.PENDING).value,
            time.time(),
        )
        kept_until = min(payment.value.expiry, r.height_hint + OUTPUT_RETENTION_BLOCKS)
        with self._lock:
            try:
                with self._transaction():
                    self._db.execute(
                        "INSERT INTO receipts (id, request_key, client, allowance_id, fee, receipt, payment, evidence,"
                        " status, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        row,
                    )
                    if proof_job is not None:
                        self._db.execute(
                            "INSERT INTO proof_jobs (receipt_id, circuit, inputs) VALUES (?, ?, ?)",
                            (receipt.id, proof_job.circuit, json.dumps(proof_job.inputs)),
                        )
                    if output is not None:
                        self._db.execute(
                            "INSERT INTO outputs (request_key, receipt_id, output, expiry) VALUES (?, ?, ?, ?)",
                            # orjson: an output may be megabytes, encoded here on the request path
                            (row[1], receipt.id, orjson.dumps(output), kept_until),
                        )
            except sqlite3.IntegrityError as exc:
                raise DuplicateRequest(f"request {r.request_id} of {r.client} already has a receipt") from exc
            self._track(receipt.id, r.client, allowance_id, r.fee)

    def proof_jobs(self, limit: int = 64, exclude: frozenset[str] = frozenset()) -> list[ProofJob]:
        """Receipts still waiting for a proof, oldest first (all of them again after a restart)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT j.receipt_id, j.circuit, j.inputs, j.attempts FROM proof_jobs j JOIN receipts r"
                " ON r.id = j.receipt_id WHERE r.status = ? ORDER BY r.created LIMIT ?",
                (Status.PROVING.value, limit + len(exclude)),
            ).fetchall()
        jobs = [ProofJob(rid, circuit, json.loads(inputs), attempts) for rid, circuit, inputs, attempts in rows]
        return [job for job in jobs if job.receipt_id not in exclude][:limit]

    def proof_done(self, receipt_id: str, proof: bytes) -> None:
        """Store the proof as the receipt's evidence: it is ready to settle."""
        with self._lock, self._transaction():
            self._db.execute(
                "UPDATE receipts SET evidence = ?, status = ? WHERE id = ? AND status = ?",
                (proof, Status.PENDING.value, receipt_id, Status.PROVING.value),
            )
            self._db.execute("DELETE FROM proof_jobs WHERE receipt_id = ?", (receipt_id,))

    def proof_failed(self, receipt_id: str, error: str, final: bool) -> None:
        """One more failed attempt; with `final`, the receipt ends `failed` with the reason (it
        will never settle, so it no longer holds the client's escrow)."""
        with self._lock:
            self._db.execute(
                "UPDATE proof_jobs SET attempts = attempts + 1, error = ? WHERE receipt_id = ?", (error, receipt_id)
            )
        if final:
            self.mark([receipt_id], Status.FAILED, error=error)

    def has_request(self, client: str, request_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM receipts WHERE request_key = ?", (f"{client}:{request_id}",))
            return row.fetchone() is not None

    def output(self, client: str, request_id: str) -> StoredOutput | None:
        """The output kept for a client's request (None: none, or its payment expired and it was dropped)."""
        with self._lock:
            row = self._db.execute(
                "SELECT receipt_id, output, expiry FROM outputs WHERE request_key = ?", (f"{client}:{request_id}",)
            ).fetchone()
        if row is None:
            return None
        return StoredOutput(request_id, row[0], json.loads(row[1]), int(row[2]))

    def drop_outputs(self, expired_before: int) -> int:
        """Forget the outputs kept until before this height, a chunk at a time (the request path
        shares the lock); how many were dropped."""
        dropped = 0
        while True:
            with self._lock:
                done = self._db.execute(
                    "DELETE FROM outputs WHERE rowid IN (SELECT rowid FROM outputs WHERE expiry < ? LIMIT ?)",
                    (expired_before, DROP_CHUNK),
                ).rowcount
            dropped += done
            if done < DROP_CHUNK:
                return dropped

    def get(self, receipt_id: str) -> StoredReceipt | None:
        with self._lock:
            row = self._db.execute(
                "SELECT receipt, payment, evidence, status, tx_hash, height, error FROM receipts WHERE id = ?",
                (receipt_id,),
            ).fetchone()
        return stored_receipt(row) if row else None

    def unsettled(self, limit: int, exclude: Collection[str] = ()) -> list[StoredReceipt]:
        """The oldest receipts still to settle, but those in `exclude` (the settler's deferred ones:
        they must not fill the page and starve newer receipts)."""
        skip = frozenset(exclude)  # filtered here: any number of them (SQLite bounds a query's parameters)
        with self._lock:
            rows = self._db.execute(
                "SELECT id, receipt, payment, evidence, status, tx_hash, height, error FROM receipts"
                f" WHERE status IN ({_SETTLEABLE_SQL}) ORDER BY created LIMIT ?",
                (limit + len(skip),),
            ).fetchall()
        out, unreadable = [], []
        for row in rows:
            if row[0] in skip:
                continue
            try:
                out.append(stored_receipt(row[1:]))
            except ValueError as exc:  # e.g. a payment signed under an older EIP-712 type: it can never settle
                unreadable.append((row[0], f"unreadable after an upgrade: {exc}"))
        for rid, reason in unreadable:
            self.mark([rid], Status.FAILED, error=reason)
        return out[:limit]

    def count(self, status: str) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM receipts WHERE status = ?", (status,)).fetchone()[0])

    def unsettled_count(self) -> int:
        with self._lock:
            return len(self._charge)

    def unsettled_charges(self, client: str) -> tuple[int, int]:
        """(how many, total fees) of a client's receipts this node has not yet settled."""
        with self._lock:
            return self._unsettled.get(client, (0, 0))

    def unsettled_allowance(self, allowance_id: str) -> int:
        """Fees charged to one allowance and not yet settled."""
        with self._lock:
            return self._unsettled_allowance.get(allowance_id, 0)

    def mark(
        self,
        receipt_ids: list[str],
        status: str,
        tx_hash: str | None = None,
        height: int | None = None,
        error: str | None = None,
    ) -> None:
        with self._lock:
            with self._transaction():
                self._db.executemany(
                    "UPDATE receipts SET status = ?, tx_hash = COALESCE(?, tx_hash), height = ?, error = ?"
                    " WHERE id = ?",
                    [(status, tx_hash, height, error, rid) for rid in receipt_ids],
                )
            for rid in receipt_ids:
                if status in UNSETTLED:
                    if rid not in self._charge:
                        self._retrack(rid)
                else:
                    self._untrack(rid)

    def _retrack(self, receipt_id: str) -> None:
        row = self._db.execute("SELECT client, allowance_id, fee FROM receipts WHERE id = ?", (receipt_id,)).fetchone()
        if row is not None:
            self._track(receipt_id, row[0], row[1], int(row[2]))

    def close(self) -> None:
        self._db.close()


def _wire_evidence(evidence: bytes) -> bytes:
    """A zkml proof queued before the binary encoding (EZKL's JSON, this node's own) in the form
    the chain takes; anything else as it is (the chain names what is wrong with it)."""
    if not evidence or evidence.startswith(PROOF_MAGIC):
        return evidence
    try:
        return encode_ezkl_proof(evidence)
    except ProofError:
        return evidence


def stored_receipt(row: tuple[Any, ...]) -> StoredReceipt:
    receipt, payment, evidence, status, tx_hash, height, error = row
    evidence = _wire_evidence(bytes(evidence))
    item = SettlementItem(
        SignedReceipt.from_json(json.loads(receipt)), SignedPayment.from_json(json.loads(payment)), bytes(evidence)
    )
    return StoredReceipt(item, status, tx_hash, height, error)
