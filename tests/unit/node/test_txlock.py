"""The node account's tx lock is granted in order: the settler cannot starve the enclave's heartbeat."""

from __future__ import annotations

import threading
import time

from haca.node.txlock import AccountTxLock


def test_a_holder_that_takes_the_lock_again_at_once_goes_behind_the_one_waiting() -> None:
    lock, order = AccountTxLock(), []
    lock.acquire()  # the settler, mid-pass

    def heartbeat() -> None:
        with lock:
            order.append("heartbeat")

    waiter = threading.Thread(target=heartbeat)
    waiter.start()
    deadline = time.monotonic() + 5
    while lock.waiting() < 1:
        assert time.monotonic() < deadline, "the heartbeat never queued"
        time.sleep(0.001)
    lock.release()
    with lock:  # the settler's next pass, asked for the instant it let go
        order.append("settler")
    waiter.join(5)
    assert order == ["heartbeat", "settler"]
    assert lock.waiting() == 0


def test_many_threads_each_get_the_lock_and_never_two_at_once() -> None:
    lock, inside, most, count = AccountTxLock(), [0], [0], [0]

    def work() -> None:
        for _ in range(200):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                count[0] += 1
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert (count[0], most[0]) == (800, 1)
