"""The receipt store on PostgreSQL: one node identity (account, stake, enclave registrations)
served by several workers, one per GPU, each a node process on the same database.

What the workers share, and how each thing is done once:
- receipts, outputs and proof jobs: rows, written in one transaction per receipt (as in SQLite);
- proof jobs are claimed with `FOR UPDATE SKIP LOCKED` and a claim that lapses unless renewed,
  so each is proved by one worker, and a killed worker's jobs go to another. Plain SQL rather
  than a job library (procrastinate, pgqueuer): a job is born in the same transaction as its
  receipt and ends in the same statement that stores the proof as the receipt's evidence; a
  library's own tables could not share those transactions;
- the settler runs in one worker at a time, the holder of a lease (`leases`) renewed each pass;
  a dead holder's lease lapses and another worker's settler takes over (its receipts are all here);
- every tx of the node's account is sent under one advisory lock (the account has one nonce
  sequence: settlements and each worker's enclave attestations take turns);
- what requests in flight hold of a client's escrow or an API key's cap (`holds`), checked and
  held under an advisory lock per client, so two workers never together overdraw an escrow; a
  dead worker's holds are dropped once its heartbeat stops;
- the height of the last settlement per client and allowance (`settled_heights`): a worker's
  chain view never uses an escrow read from before a settlement another worker's settler made.

A bad connection string or a server away is a clear error at start (StoreUnavailable)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Collection, Iterator
from typing import Any

import orjson
import psycopg
import structlog
from psycopg_pool import ConnectionPool, PoolTimeout

from haca.node.errors import Overloaded
from haca.node.holds import Hold, RequestTaken
from haca.node.receipts import (
    OUTPUT_RETENTION_BLOCKS,
    DuplicateRequest,
    ProofJob,
    ReceiptQueue,
    StoredReceipt,
    stored_receipt,
)
from haca.node.txlock import AccountTxLock
from haca.types.modes import UNSETTLED, Status
from haca.types.outputs import StoredOutput
from haca.types.payment import SignedPayment
from haca.types.receipt import SignedReceipt

log = structlog.get_logger("haca.pgstore")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS node_identity (
    only_one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_one),
    node TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (
    id TEXT PRIMARY KEY,
    seq BIGSERIAL NOT NULL,
    request_key TEXT NOT NULL UNIQUE,
    client TEXT NOT NULL,
    allowance_id TEXT,
    fee NUMERIC(78, 0) NOT NULL,
    receipt TEXT NOT NULL,
    payment TEXT NOT NULL,
    evidence BYTEA NOT NULL,
    status TEXT NOT NULL,
    tx_hash TEXT,
    height BIGINT,
    error TEXT,
    worker TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS receipts_status ON receipts (status, seq);
CREATE INDEX IF NOT EXISTS receipts_client ON receipts (client, status) INCLUDE (fee);
CREATE INDEX IF NOT EXISTS receipts_allowance ON receipts (allowance_id, status) INCLUDE (fee);
CREATE TABLE IF NOT EXISTS outputs (
    request_key TEXT PRIMARY KEY,
    receipt_id TEXT NOT NULL,
    output BYTEA NOT NULL,
    expiry BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS outputs_expiry ON outputs (expiry);
CREATE TABLE IF NOT EXISTS proof_jobs (
    receipt_id TEXT PRIMARY KEY REFERENCES receipts (id),
    circuit TEXT NOT NULL,
    inputs TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    claimed_by TEXT,
    claimed_until TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS holds (
    request_key TEXT PRIMARY KEY,
    client TEXT NOT NULL,
    escrow NUMERIC(78, 0) NOT NULL,
    allowance_id TEXT,
    allowance NUMERIC(78, 0) NOT NULL,
    exclusive BOOLEAN NOT NULL,
    spent BOOLEAN NOT NULL DEFAULT FALSE,
    worker TEXT NOT NULL,
    created TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS holds_client ON holds (client) INCLUDE (escrow);
CREATE INDEX IF NOT EXISTS holds_allowance ON holds (allowance_id) INCLUDE (allowance);
CREATE INDEX IF NOT EXISTS holds_worker ON holds (worker);
CREATE TABLE IF NOT EXISTS settled_heights (key TEXT PRIMARY KEY, height BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    seen TIMESTAMPTZ NOT NULL,
    provers INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires TIMESTAMPTZ NOT NULL);
"""

# Advisory lock keys (two 32-bit keys; the first names the use)
_LOCK_SCHEMA = (48_411, 0)
_LOCK_ACCOUNT_TX = (48_412, 0)
_LOCK_CLIENT = 48_413  # with hashtext(client)

SETTLER_LEASE_S = 15.0  # a dead settler's lease lapses after this; renewed every pass (~1 s)
PROOF_CLAIM_S = 30.0  # a dead worker's proof jobs go to another after this; renewed every prover poll
HEARTBEAT_S = 2.0
WORKER_GONE_S = 20.0  # a worker unseen this long is dead: its holds are dropped
GUARD_WAIT_S = 5.0  # longest wait for another worker's check-then-hold of the same client (then 503)
SPENT_KEPT = "1 day"  # ids of requests whose work began without a receipt (their payments have expired by then)
DROP_CHUNK = 1000

_UNSETTLED = list(UNSETTLED)
_SETTLEABLE = [Status.PENDING.value, Status.SUBMITTED.value]


def connection_options() -> dict[str, Any]:
    """Every connection: autocommit, and TCP keepalives both ways, so a worker whose host dies (not
    only its process) lets go of its advisory locks in seconds, not hours (Linux's default)."""
    server_side = "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
    return {
        "autocommit": True,
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "options": server_side,
    }


class StoreUnavailable(RuntimeError):
    """The PostgreSQL store cannot be used (unreachable, or another node's database)."""


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class PostgresReceiptStore(ReceiptQueue):
    def __init__(self, dsn: str, node: str, worker: str | None = None, pool_size: int = 12) -> None:
        self.node, self.worker = node, worker or default_worker_id()
        try:  # one connection first: a server away is an error now, not after the pool's timeout
            psycopg.connect(dsn, connect_timeout=5, **connection_options()).close()
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot connect to the receipt store {_redact(dsn)}: {exc}") from exc
        self._pool = ConnectionPool(
            dsn, min_size=2, max_size=pool_size, kwargs=connection_options(), open=False, name="receipts", timeout=10.0
        )
        try:
            self._pool.open(wait=True, timeout=15.0)
        except Exception as exc:  # psycopg_pool.PoolTimeout, psycopg.OperationalError
            self._pool.close()
            raise StoreUnavailable(f"cannot connect to the receipt store {_redact(dsn)}: {exc}") from exc
        with self._tx() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", _LOCK_SCHEMA)  # workers start together
            conn.execute(_SCHEMA)
            conn.execute("INSERT INTO node_identity (node) VALUES (%s) ON CONFLICT DO NOTHING", (node,))
            (owner,) = _one(conn.execute("SELECT node FROM node_identity"))
            conn.execute(
                "INSERT INTO workers (id, seen) VALUES (%s, now()) ON CONFLICT (id) DO UPDATE SET seen = now()",
                (self.worker,),
            )
        if owner != node:
            self._pool.close()
            raise StoreUnavailable(f"this receipt store belongs to node {owner}, not {node}: one database per node")
        self._leading = False
        self._provers = 0
        self._holds: list[PostgresHolds] = []
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="store-heartbeat", daemon=True)
        self._heartbeat.start()

    # --- connections ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Any]]:
        with self._pool.connection() as conn, conn.transaction():
            yield conn

    def _fetch(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self._pool.connection() as conn:
            return conn.execute(sql, params).fetchall()

    def _exec(self, sql: str, params: Any = None) -> int:
        with self._pool.connection() as conn:
            return conn.execute(sql, params).rowcount

    # --- liveness: a worker's heartbeat; the holds of the dead are dropped -------------------------

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.heartbeat()
            except Exception:  # the database is away for a moment: the next beat tries again
                log.warning("store_heartbeat_failed", exc_info=True)

    def heartbeat(self) -> None:
        """This worker is alive (its row written again if another worker took it for dead, after
        the database was away); the holds of workers silent for WORKER_GONE_S are dropped."""
        with self._pool.connection(timeout=HEARTBEAT_S) as conn, conn.transaction():
            conn.execute(
                "INSERT INTO workers (id, seen, provers) VALUES (%s, now(), %s)"
                " ON CONFLICT (id) DO UPDATE SET seen = now(), provers = EXCLUDED.provers",
                (self.worker, self._provers),
            )
            conn.execute("DELETE FROM workers WHERE seen < now() - make_interval(secs => %s)", (WORKER_GONE_S,))
            dropped = conn.execute(
                "DELETE FROM holds h WHERE NOT spent AND NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = h.worker)"
                " RETURNING worker"
            ).fetchall()
            if dropped:
                workers = sorted({row[0] for row in dropped})
                log.warning("dead_workers_holds_dropped", workers=workers, holds=len(dropped))
            conn.execute(f"DELETE FROM holds WHERE spent AND created < now() - interval '{SPENT_KEPT}'")
        self._retry_releases()

    # --- receipts ---------------------------------------------------------------------------------

    def add(
        self,
        receipt: SignedReceipt,
        payment: SignedPayment,
        evidence: bytes = b"",
        proof_job: ProofJob | None = None,
        output: dict[str, Any] | None = None,
    ) -> None:
        r = receipt.receipt
        allowance_id = getattr(payment.value, "id", None) if payment.kind == "allowance" else None
        request_key = f"{r.client}:{r.request_id}"
        status = (Status.PROVING if proof_job else Status.PENDING).value
        kept_until = min(payment.value.expiry, r.height_hint + OUTPUT_RETENTION_BLOCKS)
        try:
            with self._tx() as conn:
                conn.execute(
                    "INSERT INTO receipts (id, request_key, client, allowance_id, fee, receipt, payment, evidence,"
                    " status, worker, created) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (
                        receipt.id,
                        request_key,
                        r.client,
                        allowance_id,
                        r.fee,
                        json.dumps(receipt.to_json()),
                        json.dumps(payment.to_json()),
                        evidence,
                        status,
                        self.worker,
                        time.time(),
                    ),
                )
                if proof_job is not None:
                    conn.execute(
                        "INSERT INTO proof_jobs (receipt_id, circuit, inputs) VALUES (%s, %s, %s)",
                        (receipt.id, proof_job.circuit, json.dumps(proof_job.inputs)),
                    )
                if output is not None:
                    conn.execute(
                        "INSERT INTO outputs (request_key, receipt_id, output, expiry) VALUES (%s, %s, %s, %s)",
                        (request_key, receipt.id, orjson.dumps(output), kept_until),
                    )
        except psycopg.errors.UniqueViolation as exc:
            raise DuplicateRequest(f"request {r.request_id} of {r.client} already has a receipt") from exc

    def has_request(self, client: str, request_id: str) -> bool:
        return bool(self._fetch("SELECT 1 FROM receipts WHERE request_key = %s", (f"{client}:{request_id}",)))

    def get(self, receipt_id: str) -> StoredReceipt | None:
        rows = self._fetch(
            "SELECT receipt, payment, evidence, status, tx_hash, height, error FROM receipts WHERE id = %s",
            (receipt_id,),
        )
        return stored_receipt(rows[0]) if rows else None

    def unsettled(self, limit: int, exclude: Collection[str] = ()) -> list[StoredReceipt]:
        rows = self._fetch(
            "SELECT id, receipt, payment, evidence, status, tx_hash, height, error FROM receipts"
            " WHERE status = ANY(%s) AND NOT (id = ANY(%s)) ORDER BY seq LIMIT %s",
            (_SETTLEABLE, list(exclude), limit),
        )
        out = []
        for row in rows:
            try:
                out.append(stored_receipt(row[1:]))
            except ValueError as exc:  # signed under an older type: it can never settle
                self.mark([row[0]], Status.FAILED, error=f"unreadable after an upgrade: {exc}")
        return out

    def count(self, status: str) -> int:
        return int(_one(self._fetch("SELECT count(*) FROM receipts WHERE status = %s", (status,)))[0])

    def unsettled_count(self) -> int:
        return int(_one(self._fetch("SELECT count(*) FROM receipts WHERE status = ANY(%s)", (_UNSETTLED,)))[0])

    def unsettled_charges(self, client: str) -> tuple[int, int]:
        count, total = _one(
            self._fetch(
                "SELECT count(*), COALESCE(sum(fee), 0) FROM receipts WHERE client = %s AND status = ANY(%s)",
                (client, _UNSETTLED),
            )
        )
        return int(count), int(total)

    def unsettled_allowance(self, allowance_id: str) -> int:
        (total,) = _one(
            self._fetch(
                "SELECT COALESCE(sum(fee), 0) FROM receipts WHERE allowance_id = %s AND status = ANY(%s)",
                (allowance_id, _UNSETTLED),
            )
        )
        return int(total)

    def settled_height(self, key: str) -> int:
        rows = self._fetch("SELECT height FROM settled_heights WHERE key = %s", (key,))
        return int(rows[0][0]) if rows else 0

    def mark(
        self,
        receipt_ids: list[str],
        status: str,
        tx_hash: str | None = None,
        height: int | None = None,
        error: str | None = None,
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE receipts SET status = %s, tx_hash = COALESCE(%s, tx_hash), height = %s, error = %s"
                " WHERE id = ANY(%s)",
                (status, tx_hash, height, error, list(receipt_ids)),
            )
            if height is not None:  # the chain state changed at `height` for these clients and allowances
                conn.execute(
                    "INSERT INTO settled_heights (key, height)"
                    " SELECT DISTINCT k, %s::bigint FROM receipts, LATERAL (VALUES (client), (allowance_id)) v(k)"
                    " WHERE id = ANY(%s) AND k IS NOT NULL"
                    " ON CONFLICT (key) DO UPDATE SET height = GREATEST(settled_heights.height, EXCLUDED.height)",
                    (height, list(receipt_ids)),
                )

    # --- outputs ----------------------------------------------------------------------------------

    def output(self, client: str, request_id: str) -> StoredOutput | None:
        rows = self._fetch(
            "SELECT receipt_id, output, expiry FROM outputs WHERE request_key = %s", (f"{client}:{request_id}",)
        )
        if not rows:
            return None
        receipt_id, output, expiry = rows[0]
        return StoredOutput(request_id, receipt_id, json.loads(bytes(output)), int(expiry))

    def drop_outputs(self, expired_before: int) -> int:
        dropped = 0
        while True:
            done = self._exec(
                "DELETE FROM outputs WHERE request_key IN (SELECT request_key FROM outputs WHERE expiry < %s LIMIT %s)",
                (expired_before, DROP_CHUNK),
            )
            dropped += done
            if done < DROP_CHUNK:
                return dropped

    # --- proof jobs: claimed, so each is proved by one worker ---------------------------------------

    def proof_jobs(self, limit: int = 64, exclude: frozenset[str] = frozenset()) -> list[ProofJob]:
        rows = self._fetch(
            "SELECT j.receipt_id, j.circuit, j.inputs, j.attempts FROM proof_jobs j JOIN receipts r"
            " ON r.id = j.receipt_id WHERE r.status = %s AND NOT (j.receipt_id = ANY(%s)) ORDER BY r.seq LIMIT %s",
            (Status.PROVING.value, list(exclude), limit),
        )
        return [ProofJob(rid, circuit, json.loads(inputs), attempts) for rid, circuit, inputs, attempts in rows]

    def claim_proof_jobs(self, limit: int, exclude: frozenset[str] = frozenset()) -> list[ProofJob]:
        with self._tx() as conn:
            rows = conn.execute(
                "UPDATE proof_jobs j SET claimed_by = %(me)s, claimed_until = now() + make_interval(secs => %(ttl)s)"
                " FROM (SELECT j2.receipt_id FROM proof_jobs j2 JOIN receipts r ON r.id = j2.receipt_id"
                "       WHERE r.status = %(proving)s AND NOT (j2.receipt_id = ANY(%(exclude)s))"
                "       AND (j2.claimed_until IS NULL OR j2.claimed_until < now())"
                "       ORDER BY r.seq LIMIT %(limit)s FOR UPDATE OF j2 SKIP LOCKED) free"
                " WHERE j.receipt_id = free.receipt_id RETURNING j.receipt_id, j.circuit, j.inputs, j.attempts",
                {
                    "me": self.worker,
                    "ttl": PROOF_CLAIM_S,
                    "proving": Status.PROVING.value,
                    "exclude": list(exclude),
                    "limit": limit,
                },
            ).fetchall()
        return [ProofJob(rid, circuit, json.loads(inputs), attempts) for rid, circuit, inputs, attempts in rows]

    def renew_proof_claims(self, receipt_ids: Collection[str]) -> None:
        self._exec(
            "UPDATE proof_jobs SET claimed_until = now() + make_interval(secs => %s)"
            " WHERE receipt_id = ANY(%s) AND claimed_by = %s",
            (PROOF_CLAIM_S, list(receipt_ids), self.worker),
        )

    def proof_done(self, receipt_id: str, proof: bytes) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE receipts SET evidence = %s, status = %s WHERE id = %s AND status = %s",
                (proof, Status.PENDING.value, receipt_id, Status.PROVING.value),
            )
            conn.execute("DELETE FROM proof_jobs WHERE receipt_id = %s", (receipt_id,))

    def proof_failed(self, receipt_id: str, error: str, final: bool) -> None:
        """A failed try by this worker; nothing when its claim lapsed and another worker took the
        job (that one's try decides)."""
        with self._tx() as conn:
            mine = conn.execute(
                "UPDATE proof_jobs SET attempts = attempts + 1, error = %s, claimed_until = NULL"
                " WHERE receipt_id = %s AND claimed_by = %s",
                (error, receipt_id, self.worker),
            ).rowcount
            if mine and final:
                conn.execute(
                    "UPDATE receipts SET status = %s, error = %s WHERE id = %s AND status = %s",
                    (Status.FAILED.value, error, receipt_id, Status.PROVING.value),
                )

    # --- one settler, one nonce sequence ------------------------------------------------------------

    def prover_capacity(self, local: int) -> int:
        """Every live worker's provers: the proof jobs here are theirs to share."""
        if local != self._provers:
            self._exec("UPDATE workers SET provers = %s WHERE id = %s", (local, self.worker))
            self._provers = local
        rows = self._fetch(
            "SELECT COALESCE(sum(provers), 0) FROM workers WHERE seen > now() - make_interval(secs => %s)",
            (WORKER_GONE_S,),
        )
        return max(local, int(rows[0][0]))

    def settler_lease(self) -> bool:
        rows = self._fetch(
            "INSERT INTO leases (name, holder, expires)"
            " VALUES ('settler', %(me)s, now() + make_interval(secs => %(ttl)s))"
            " ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires = EXCLUDED.expires"
            " WHERE leases.holder = EXCLUDED.holder OR leases.expires < now() RETURNING holder",
            {"me": self.worker, "ttl": SETTLER_LEASE_S},
        )
        leading = bool(rows)
        if leading != self._leading:
            log.info("settler_lease", worker=self.worker, held=leading)
            self._leading = leading
        return leading

    def new_tx_lock(self) -> SharedTxLock:
        return SharedTxLock(self._pool)

    def new_holds(self) -> PostgresHolds:
        holds = PostgresHolds(self._pool, self.worker)
        self._holds.append(holds)
        return holds

    def _retry_releases(self) -> None:
        for holds in self._holds:
            holds.retry_releases()

    def close(self) -> None:
        self._stop.set()
        # a clean stop hands the lease and the worker's holds on at once
        with contextlib.suppress(Exception), self._tx() as conn:
            conn.execute("DELETE FROM leases WHERE name = 'settler' AND holder = %s", (self.worker,))
            conn.execute("DELETE FROM holds WHERE worker = %s AND NOT spent", (self.worker,))
            conn.execute("DELETE FROM workers WHERE id = %s", (self.worker,))
        self._pool.close()


class SharedTxLock:
    """The node account's tx lock across workers: this process's turn (first come, first served,
    like AccountTxLock), then a PostgreSQL advisory lock, held on its own connection (a killed
    worker's connection closes, and the lock with it)."""

    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self._local = AccountTxLock()
        self._pool = pool
        self._conn: psycopg.Connection[Any] | None = None

    def acquire(self) -> None:
        self._local.acquire()
        try:
            conn = self._pool.getconn()
            try:
                conn.execute("SELECT pg_advisory_lock(%s, %s)", _LOCK_ACCOUNT_TX)
            except BaseException:
                self._pool.putconn(conn)
                raise
            self._conn = conn
        except BaseException:
            self._local.release()
            raise

    def release(self) -> None:
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                with contextlib.suppress(psycopg.Error):  # a broken connection let go of the lock already
                    conn.execute("SELECT pg_advisory_unlock(%s, %s)", _LOCK_ACCOUNT_TX)
                self._pool.putconn(conn)
        finally:
            self._local.release()

    def waiting(self) -> int:
        return self._local.waiting()

    def __enter__(self) -> SharedTxLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class PostgresHolds:
    """The payment gate's holds, shared by a node's workers (see haca.node.holds)."""

    def __init__(self, pool: ConnectionPool[Any], worker: str) -> None:
        self._pool, self.worker = pool, worker
        self._lock = threading.Lock()
        self._deferred: list[tuple[Hold, bool]] = []  # releases the database refused, tried again

    @contextlib.contextmanager
    def guard(self, client: str) -> Iterator[None]:
        """Check-then-hold for one client, one worker at a time: a session advisory lock on a
        connection of its own (the checks read through others, after the last hold committed)."""
        with self._pool.connection(timeout=GUARD_WAIT_S) as conn:
            try:  # a worker stuck inside its guard delays this client's requests, never the node
                conn.execute(f"SET lock_timeout = '{int(GUARD_WAIT_S * 1000)}ms'")
                conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (_LOCK_CLIENT, client))
            except psycopg.errors.LockNotAvailable:
                raise Overloaded("another worker of this node is charging this client: retry", 1) from None
            finally:
                conn.execute("RESET lock_timeout")
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (_LOCK_CLIENT, client))

    def _scalar(self, sql: str, params: Any) -> int:
        with self._pool.connection() as conn:
            (value,) = _one(conn.execute(sql, params).fetchall())
        return int(value)

    def held(self, client: str) -> int:
        return self._scalar("SELECT COALESCE(sum(escrow), 0) FROM holds WHERE client = %s", (client,))

    def held_allowance(self, allowance_id: str) -> int:
        return self._scalar("SELECT COALESCE(sum(allowance), 0) FROM holds WHERE allowance_id = %s", (allowance_id,))

    def taken(self, request: tuple[str, str]) -> bool:
        key = f"{request[0]}:{request[1]}"
        return bool(self._scalar("SELECT count(*) FROM holds WHERE request_key = %s AND (exclusive OR spent)", (key,)))

    def hold(self, hold: Hold) -> None:
        with self._pool.connection() as conn:
            added = conn.execute(
                "INSERT INTO holds (request_key, client, escrow, allowance_id, allowance, exclusive, worker)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (request_key) DO NOTHING",
                (
                    f"{hold.client}:{hold.request_id}",
                    hold.client,
                    hold.escrow,
                    hold.allowance_id or None,
                    hold.allowance,
                    hold.exclusive,
                    self.worker,
                ),
            ).rowcount
        if not added:
            raise RequestTaken(hold.request_id)

    def release(self, hold: Hold, spent: bool) -> None:
        """Never raises (it runs in the request's `finally`): a release the database refuses now is
        tried again with each heartbeat; until then the hold only counts against its client."""
        try:
            self._release(hold, spent)
        except (psycopg.Error, PoolTimeout):
            log.warning("hold_release_deferred", request=hold.request_id, exc_info=True)
            with self._lock:
                self._deferred.append((hold, spent))

    def retry_releases(self) -> None:
        with self._lock:
            deferred, self._deferred = self._deferred, []
        for hold, spent in deferred:
            self.release(hold, spent)

    def _release(self, hold: Hold, spent: bool) -> None:
        key = f"{hold.client}:{hold.request_id}"
        with self._pool.connection() as conn:
            if spent and not conn.execute("SELECT 1 FROM receipts WHERE request_key = %s", (key,)).fetchone():
                # the work began and no receipt came of it: the id stays taken (a replay must not
                # get the work again), holding nothing
                conn.execute(
                    "UPDATE holds SET escrow = 0, allowance = 0, exclusive = FALSE, spent = TRUE, created = now()"
                    " WHERE request_key = %s",
                    (key,),
                )
            else:
                conn.execute("DELETE FROM holds WHERE request_key = %s", (key,))

    def idle(self) -> bool:
        return not self._scalar("SELECT count(*) FROM holds WHERE NOT spent AND worker = %s", (self.worker,))


def _one(rows: Any) -> tuple[Any, ...]:
    row = rows.fetchone() if hasattr(rows, "fetchone") else (rows[0] if rows else None)
    if row is None:
        raise StoreUnavailable("the receipt store answered no row")
    return tuple(row)


def _redact(dsn: str) -> str:
    """The DSN without its password (it goes into an error message)."""
    if "@" in dsn and "://" in dsn:
        scheme, rest = dsn.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}@{host}"
    return dsn
