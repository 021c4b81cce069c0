"""The receipt store a node's workers share on PostgreSQL (a real server, started for the tests):
the SQLite store's behaviour, plus what several workers need — holds checked and held one worker
at a time, each proof job proved once, one settler by a lease, one tx at a time for the account,
a dead worker's holds and jobs handed on."""

from __future__ import annotations

import re
import threading
import time

import psycopg
import pytest

from haca.crypto.keys import PrivateKey
from haca.node import pgstore
from haca.node.errors import Overloaded
from haca.node.holds import Hold, RequestTaken
from haca.node.pgstore import PostgresReceiptStore, StoreUnavailable
from haca.node.receipts import DuplicateRequest, ProofJob
from haca.types.modes import Status
from haca.types.payment import PaymentAuthorization, SignedPayment, SpendingAllowance
from haca.types.receipt import Receipt, SignedReceipt

NODE, CLIENT = PrivateKey.from_seed("node"), PrivateKey.from_seed("client")
MODEL = "sha256:" + "ab" * 32


def receipt(n: int, fee: int, mode: str = "vanilla") -> SignedReceipt:
    request = "0x" + f"{n:064x}"
    r = Receipt("c", NODE.address, CLIENT.address, request, MODEL, mode, "0x" + "00" * 32, "0x" + "11" * 32, fee, 1, 0)
    return SignedReceipt(r, r.sign(NODE))


def per_request(n: int) -> SignedPayment:
    auth = PaymentAuthorization("c", CLIENT.address, NODE.address, "0x" + f"{n:064x}", MODEL, "vanilla", 10**6, 99)
    return SignedPayment("request", auth, auth.sign(CLIENT))


@pytest.fixture
def stores(pg_dsn):
    """Two workers of one node on one database."""
    opened = [PostgresReceiptStore(pg_dsn, NODE.address, f"worker{i}") for i in range(2)]
    yield opened
    for store in opened:
        store.close()


def test_receipts_charges_outputs_and_marks_as_in_sqlite(stores):
    a, b = stores
    allowance = SpendingAllowance("c", CLIENT.address, NODE.address, 1000, 99, 7)
    by_key = SignedPayment("allowance", allowance, allowance.sign(CLIENT))
    receipts = [receipt(i, 10 * (i + 1)) for i in range(4)]
    for i, signed in enumerate(receipts):  # written by either worker, seen by both
        (a if i % 2 else b).add(signed, by_key if i % 2 else per_request(i), output={"output": [[i]]})
    assert b.unsettled_charges(CLIENT.address) == (4, 100) and a.unsettled_allowance(allowance.id) == 20 + 40
    with pytest.raises(DuplicateRequest):  # one request, one receipt, whichever worker
        a.add(receipt(0, 10), per_request(0))
    assert [r.item.receipt.id for r in a.unsettled(10)] == [r.id for r in receipts]  # oldest first
    assert [r.item.receipt.id for r in a.unsettled(2, exclude={receipts[0].id})] == [receipts[1].id, receipts[2].id]
    a.mark([receipts[1].id], Status.SUBMITTED, tx_hash="AB")
    assert b.unsettled_charges(CLIENT.address) == (4, 100)
    b.mark([receipts[0].id, receipts[1].id], Status.SETTLED, height=57)
    assert a.unsettled_charges(CLIENT.address) == (2, 70) and a.unsettled_allowance(allowance.id) == 40
    # the settlement's height reaches every worker: none uses an escrow read from before it
    assert (a.settled_height(CLIENT.address), a.settled_height(allowance.id), a.settled_height("x")) == (57, 57, 0)
    b.mark([receipts[2].id], Status.SETTLED, height=50)  # heights only rise
    assert a.settled_height(CLIENT.address) == 57
    stored = a.get(receipts[1].id)
    assert stored is not None and (stored.status, stored.tx_hash, stored.height) == ("settled", "AB", 57)
    assert a.count("settled") == 3 and a.unsettled_count() == 1
    kept = b.output(CLIENT.address, "0x" + f"{3:064x}")
    assert kept is not None and kept.output == {"output": [[3]]} and kept.receipt_id == receipts[3].id
    assert a.drop_outputs(100) == 4 and b.output(CLIENT.address, "0x" + f"{3:064x}") is None


def test_two_workers_never_hold_more_than_the_escrow_together(stores):
    """Each worker checks what is unsettled and held, then holds, under the client's guard: 2
    workers x 4 threads race 200 requests of 7 against an escrow of 100 — exactly 14 are held."""
    escrow, cost, granted = 100, 7, []
    start = threading.Barrier(8)

    def worker(store: PostgresReceiptStore, n: int) -> None:
        holds = store.new_holds()
        start.wait()
        for i in range(25):
            with holds.guard(CLIENT.address):
                if holds.held(CLIENT.address) + cost <= escrow:
                    holds.hold(Hold(CLIENT.address, f"{n}-{i}", cost, exclusive=False))
                    granted.append(1)
                    time.sleep(0.001)  # a slow hold: the other worker must wait, not read stale

    threads = [threading.Thread(target=worker, args=(stores[i % 2], i)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == escrow // cost and stores[0].new_holds().held(CLIENT.address) == 98


def test_a_request_id_is_taken_across_workers_and_a_spent_one_stays_taken(stores):
    a, b = (s.new_holds() for s in stores)
    hold = Hold(CLIENT.address, "0x01", 10, exclusive=True)
    a.hold(hold)
    assert b.taken(hold.request)
    with pytest.raises(RequestTaken):
        b.hold(hold)
    a.release(hold, spent=True)  # the work began, no receipt: a replay must not get it again
    assert b.taken(hold.request) and b.held(CLIENT.address) == 0 and a.idle()
    other = Hold(CLIENT.address, "0x02", 10, "allowance-1", 10, exclusive=True)
    b.hold(other)
    assert a.held_allowance("allowance-1") == 10
    b.release(other, spent=False)  # refused before the work: the id is free again
    assert not a.taken(other.request) and a.held_allowance("allowance-1") == 0


def test_a_dead_workers_holds_are_dropped_once_its_heartbeat_stops(stores, pg_dsn):
    a, b = stores
    a.new_holds().hold(Hold(CLIENT.address, "0x01", 10, exclusive=True))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # worker0 fell silent a minute ago (SIGKILL)
        a._stop.set()
        conn.execute("UPDATE workers SET seen = now() - interval '1 minute' WHERE id = 'worker0'")
    b.heartbeat()
    assert b.new_holds().held(CLIENT.address) == 0


def test_each_proof_job_is_claimed_by_one_worker_and_a_dead_ones_go_to_another(stores, monkeypatch):
    a, b = stores
    for i in range(6):
        a.add(receipt(i, 10, "zkml"), per_request(i), proof_job=ProofJob("", "circuit", [[float(i)]], 0))
    got_a = a.claim_proof_jobs(4)
    got_b = b.claim_proof_jobs(4)
    assert len(got_a) == 4 and len(got_b) == 2
    assert not {j.receipt_id for j in got_a} & {j.receipt_id for j in got_b}
    assert b.claim_proof_jobs(4) == []  # all claimed and renewed
    a.renew_proof_claims([j.receipt_id for j in got_a])
    with psycopg.connect(a._pool.conninfo, autocommit=True) as conn:  # worker0 died: its claims lapse
        conn.execute("UPDATE proof_jobs SET claimed_until = now() - interval '1 second' WHERE claimed_by = 'worker0'")
    again = b.claim_proof_jobs(8)
    assert {j.receipt_id for j in again} == {j.receipt_id for j in got_a}
    b.proof_done(again[0].receipt_id, b"proof")
    a.proof_done(again[0].receipt_id, b"other")  # a late finish by the first worker changes nothing
    stored = a.get(again[0].receipt_id)
    assert stored is not None and stored.status == "pending" and stored.item.evidence == b"proof"


def test_one_settler_holds_the_lease_and_another_takes_over_when_it_lapses(stores, pg_dsn):
    a, b = stores
    assert a.settler_lease() and a.settler_lease()  # renewed
    assert not b.settler_lease()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # worker0 stopped renewing (killed)
        conn.execute("UPDATE leases SET expires = now() - interval '1 second'")
    assert b.settler_lease() and not a.settler_lease()
    b.close()  # a clean stop hands the lease on at once
    assert a.settler_lease()


def test_the_accounts_tx_lock_is_one_holder_across_workers_and_a_killed_holder_lets_go(stores, pg_dsn):
    first, second = stores[0].new_tx_lock(), stores[1].new_tx_lock()
    order: list[str] = []
    first.acquire()
    waiter = threading.Thread(target=lambda: (second.acquire(), order.append("second"), second.release()))
    waiter.start()
    time.sleep(0.3)
    order.append("first")
    first.release()
    waiter.join(5)
    assert order == ["first", "second"]
    # a holder killed with the lock: its connection closes, and the lock with it
    killed = psycopg.connect(pg_dsn, autocommit=True)
    killed.execute("SELECT pg_advisory_lock(%s, %s)", pgstore._LOCK_ACCOUNT_TX)
    got = threading.Event()
    waiter = threading.Thread(target=lambda: (second.acquire(), got.set(), second.release()))
    waiter.start()
    assert not got.wait(0.3)
    killed.close()
    assert got.wait(5)
    waiter.join(5)


def test_a_database_of_another_node_is_refused(pg_dsn, stores):
    with pytest.raises(StoreUnavailable, match="belongs to node"):
        PostgresReceiptStore(pg_dsn, PrivateKey.from_seed("another").address, "w")


def test_an_unreachable_server_is_a_clear_error():
    with pytest.raises(
        StoreUnavailable, match=re.escape("cannot connect to the receipt store postgresql://haca@127.0.0.1:1/x")
    ):
        PostgresReceiptStore("postgresql://haca:secret@127.0.0.1:1/x", NODE.address, "w")


def test_a_worker_taken_for_dead_comes_back_and_only_holds_of_workers_gone_are_dropped(stores, pg_dsn):
    a, b = stores
    a.new_holds().hold(Hold(CLIENT.address, "0x01", 10, exclusive=True))
    b.new_holds().hold(Hold(CLIENT.address, "0x02", 20, exclusive=True))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # the database was away: worker0 looks dead
        conn.execute("UPDATE workers SET seen = now() - interval '1 minute' WHERE id = 'worker0'")
    b.heartbeat()  # worker0's row and its holds go
    assert b.new_holds().held(CLIENT.address) == 20
    a.heartbeat()  # worker0 beats again: back, and what it holds from now on is kept
    a.new_holds().hold(Hold(CLIENT.address, "0x03", 30, exclusive=True))
    b.heartbeat()
    assert b.new_holds().held(CLIENT.address) == 50


def test_a_final_proof_failure_by_a_worker_whose_claim_lapsed_changes_nothing(stores, pg_dsn):
    a, b = stores
    a.add(receipt(1, 10, "zkml"), per_request(1), proof_job=ProofJob("", "circuit", [[1.0]], 0))
    (job,) = a.claim_proof_jobs(1)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # worker0 stalled past its claim
        conn.execute("UPDATE proof_jobs SET claimed_until = now() - interval '1 second'")
    assert [j.receipt_id for j in b.claim_proof_jobs(1)] == [job.receipt_id]
    a.proof_failed(job.receipt_id, "late failure", final=True)  # worker0's late verdict: not its job now
    stored = b.get(job.receipt_id)
    assert stored is not None and stored.status == "proving"
    b.proof_done(job.receipt_id, b"proof")
    stored = b.get(job.receipt_id)
    assert stored is not None and stored.status == "pending" and stored.item.evidence == b"proof"


def test_a_client_guard_held_too_long_elsewhere_is_a_503_not_a_stalled_worker(stores, monkeypatch):
    monkeypatch.setattr(pgstore, "GUARD_WAIT_S", 0.3)
    a, b = (s.new_holds() for s in stores)
    with a.guard(CLIENT.address):
        began = time.monotonic()
        with (
            pytest.raises(Overloaded, match="another worker of this node is charging this client"),
            b.guard(CLIENT.address),
        ):
            pass
        assert time.monotonic() - began < 2
    with b.guard(CLIENT.address):  # free again
        pass


def test_a_release_the_database_refuses_is_kept_and_done_at_the_next_heartbeat(stores, monkeypatch):
    a, _ = stores
    holds = a.new_holds()
    hold = Hold(CLIENT.address, "0x01", 10, exclusive=True)
    holds.hold(hold)
    real = holds._release

    def refused(*args: object) -> None:
        raise psycopg.OperationalError("the server closed the connection")

    monkeypatch.setattr(holds, "_release", refused)
    holds.release(hold, spent=False)  # in a request's `finally`: it must not raise
    assert holds.held(CLIENT.address) == 10
    monkeypatch.setattr(holds, "_release", real)
    a.heartbeat()
    assert holds.held(CLIENT.address) == 0 and not holds.taken(hold.request)
