"""CometRpc fails over between endpoints on transport failures only, sticks to the one that
answered, skips a failed one for a while, and raises ChainUnavailable when none answers. Each
endpoint is a real loopback HTTP server (or a closed port)."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from haca.client.chain import ChainClient
from haca.client.errors import ChainUnavailable, HacaError, QueryFailed, RpcError, TxRejected
from haca.client.rpc import CometRpc
from tests.unit.fakeclock import FakeClock

Answer = tuple[int, bytes]  # HTTP status, body


def ok(result: Any) -> Answer:
    return 200, json.dumps({"jsonrpc": "2.0", "id": 1, "result": result}).encode()


def rpc_error(message: str, data: str = "") -> Answer:
    return 500, json.dumps(
        {"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": message, "data": data}}
    ).encode()


def status_at(height: int) -> Answer:
    return ok({"sync_info": {"latest_block_height": str(height)}})


class Endpoint:
    """A loopback JSON-RPC server answering with `handler(request)`; it records every request."""

    def __init__(self, handler: Callable[[dict[str, Any]], Answer]) -> None:
        self.handler = handler
        self.requests: list[dict[str, Any]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append(request)
                status, body = endpoint.handler(request)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def methods(self) -> list[str]:
        return [r["method"] for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoints() -> Iterator[Callable[[Callable[[dict[str, Any]], Answer]], Endpoint]]:
    started: list[Endpoint] = []

    def start(handler: Callable[[dict[str, Any]], Answer]) -> Endpoint:
        started.append(Endpoint(handler))
        return started[-1]

    yield start
    for endpoint in started:
        endpoint.close()


def dead_url() -> str:
    """A loopback port nothing listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def html_error(request: dict[str, Any]) -> Answer:
    return 502, b"<html>Bad Gateway</html>"


def test_a_dead_first_endpoint_is_answered_by_the_second(endpoints):
    second = endpoints(lambda r: status_at(7))
    rpc = CometRpc([dead_url(), second.url])
    assert rpc.height() == 7
    assert rpc.url == second.url and second.methods == ["status"]


def test_the_endpoint_that_answered_stays_first_even_once_the_failed_one_may_be_retried(endpoints):
    broken, good = endpoints(html_error), endpoints(lambda r: status_at(3))
    rpc = CometRpc([broken.url, good.url], retry_after=0.0)
    assert [rpc.height() for _ in range(5)] == [3] * 5
    assert len(broken.requests) == 1 and len(good.requests) == 5


def test_when_the_current_endpoint_fails_the_next_one_takes_over_round_robin(endpoints):
    heights = {"a": 1, "b": 2, "c": 3}
    a, b, c = (endpoints(lambda r, name=name: status_at(heights[name])) for name in "abc")
    rpc = CometRpc([a.url, b.url, c.url], retry_after=0.0)
    assert rpc.height() == 1
    a.handler = html_error
    assert rpc.height() == 2 and rpc.url == b.url
    b.handler = html_error
    assert rpc.height() == 3 and rpc.url == c.url
    c.handler = html_error
    a.handler = lambda r: status_at(4)  # back: tried again because its skip period is over
    assert rpc.height() == 4 and rpc.url == a.url


def test_a_failed_endpoint_is_skipped_for_retry_after_seconds(endpoints):
    broken, good = endpoints(html_error), endpoints(lambda r: status_at(5))
    clock = FakeClock()
    rpc = CometRpc([good.url, broken.url], retry_after=0.3, clock=clock)
    broken_first = CometRpc([broken.url, good.url], retry_after=0.3, clock=clock)
    assert broken_first.height() == 5 and len(broken.requests) == 1
    good.handler = html_error  # now neither answers
    with pytest.raises(ChainUnavailable):
        broken_first.height()
    assert len(broken.requests) == 1  # skipped: it failed less than 0.3 s ago
    clock.advance(0.29)
    with pytest.raises(ChainUnavailable, match="skipped"):
        broken_first.height()
    assert len(broken.requests) == 1  # still within its 0.3 s
    clock.advance(0.02)  # past it: both are tried again
    good.handler = lambda r: status_at(6)
    assert broken_first.height() == 6 and rpc.height() == 6
    assert len(broken.requests) == 2 and broken_first.url == good.url  # retried, failed, skipped again


def test_a_slow_answer_demotes_its_endpoint_and_the_next_one_is_tried_first(endpoints):
    clock = FakeClock()

    def slow(request: dict[str, Any]) -> Answer:
        clock.advance(0.5)  # the answer took 0.5 s by the RPC client's clock
        return status_at(1)

    overloaded, quick = endpoints(slow), endpoints(lambda r: status_at(2))
    rpc = CometRpc([overloaded.url, quick.url], slow_after=0.4, clock=clock)
    assert rpc.height() == 1  # a slow answer is still an answer
    assert rpc.url == quick.url  # but the next call goes elsewhere first
    assert [rpc.height() for _ in range(3)] == [2, 2, 2]
    assert len(overloaded.requests) == 1 and len(quick.requests) == 3
    overloaded.handler = lambda r: status_at(3)
    quick.handler = html_error  # demoted is not down: the slow endpoint is still tried, and answers
    assert rpc.height() == 3 and rpc.url == overloaded.url


def test_an_answer_just_within_slow_after_does_not_demote(endpoints):
    clock = FakeClock()

    def steady(request: dict[str, Any]) -> Answer:
        clock.advance(0.4)
        return status_at(1)

    first, second = endpoints(steady), endpoints(lambda r: status_at(2))
    rpc = CometRpc([first.url, second.url], slow_after=0.4, clock=clock)
    assert [rpc.height() for _ in range(3)] == [1, 1, 1]
    assert rpc.url == first.url and second.requests == []


def test_a_slow_endpoint_times_out_and_the_call_fails_over(endpoints):
    def slow(request: dict[str, Any]) -> Answer:
        time.sleep(1.0)
        return status_at(1)

    hanging, good = endpoints(slow), endpoints(lambda r: status_at(9))
    rpc = CometRpc([hanging.url, good.url], timeout=0.2)
    started = time.monotonic()
    assert rpc.height() == 9
    assert time.monotonic() - started < 0.9


def test_a_json_rpc_error_is_an_answer_and_is_not_retried_elsewhere(endpoints):
    first = endpoints(lambda r: rpc_error("Internal error", "height 99 must be less than or equal to 12"))
    second = endpoints(lambda r: ok({}))
    rpc = CometRpc([first.url, second.url])
    with pytest.raises(RpcError) as caught:
        rpc.commit(99)
    assert not isinstance(caught.value, ChainUnavailable) and "height 99" in str(caught.value)
    assert second.requests == [] and rpc.url == first.url


def test_a_failed_abci_query_is_an_answer_and_is_not_retried_elsewhere(endpoints):
    refused = ok({"response": {"code": 4, "log": "no such account"}})
    first, second = endpoints(lambda r: refused), endpoints(lambda r: ok({}))
    client = ChainClient([first.url, second.url], "test")
    with pytest.raises(QueryFailed, match="no such account"):
        client.query("/auth/account", b"nobody")
    assert second.requests == []


def test_queries_fail_over_through_the_chain_client(endpoints):
    value = base64.b64encode(json.dumps({"balance": "42"}).encode()).decode()
    good = endpoints(lambda r: ok({"response": {"code": 0, "value": value}}))
    client = ChainClient([dead_url(), good.url], "test")
    assert client.balance("someone") == 42
    assert good.requests[0]["params"]["path"] == "/bank/balance"


def test_when_no_endpoint_answers_chain_unavailable_names_every_endpoint(endpoints):
    broken = endpoints(html_error)
    urls = [dead_url(), broken.url, dead_url()]
    rpc = CometRpc(urls, clock=FakeClock())  # the clock stands still: every skip period holds
    with pytest.raises(ChainUnavailable) as caught:
        rpc.height()
    assert isinstance(caught.value, RpcError) and caught.value.code == "chain_unavailable"
    assert set(caught.value.endpoints) == set(urls)
    assert all(url in str(caught.value) for url in urls) and "HTTP 502, not JSON" in str(caught.value)
    with pytest.raises(ChainUnavailable, match="skipped") as caught:  # all recently failed: no new attempt
        rpc.height()
    assert len(broken.requests) == 1 and all(f"{url}: skipped" in str(caught.value) for url in urls)


def test_a_chain_client_with_one_dead_endpoint_raises_chain_unavailable():
    client = ChainClient([dead_url()], "test")
    with pytest.raises(ChainUnavailable):
        client.nonce("someone")


# --- broadcasting ---------------------------------------------------------------------------------

RAW = b"a signed tx"
TX_HASH = hashlib.sha256(RAW).hexdigest().upper()


def broadcaster(*, checktx: Answer, committed: bool = False) -> Callable[[dict[str, Any]], Answer]:
    def handle(request: dict[str, Any]) -> Answer:
        if request["method"] == "broadcast_tx_sync":
            return checktx
        if request["method"] == "tx" and committed:
            return ok({"hash": TX_HASH, "height": "5", "tx_result": {"code": 0}})
        return rpc_error("Internal error", "tx not found")

    return handle


def accepted_but_times_out(request: dict[str, Any]) -> Answer:
    time.sleep(0.6)  # CheckTx passed, the answer is lost to the client's timeout
    return ok({"code": 0, "hash": TX_HASH, "log": ""})


def test_a_broadcast_fails_over_to_the_next_endpoint(endpoints):
    good = endpoints(broadcaster(checktx=ok({"code": 0, "hash": TX_HASH, "log": ""})))
    assert ChainClient([dead_url(), good.url], "test").broadcast(RAW) == TX_HASH
    assert good.requests[0]["params"]["tx"] == base64.b64encode(RAW).decode()


def test_a_broadcast_that_timed_out_and_is_already_in_the_next_mempool_is_accepted(endpoints):
    slow = endpoints(accepted_but_times_out)
    cached = endpoints(broadcaster(checktx=rpc_error("Internal error", "tx already exists in cache")))
    client = ChainClient([slow.url, cached.url], "test")
    client.rpc = CometRpc([slow.url, cached.url], timeout=0.2)
    assert client.broadcast(RAW) == TX_HASH


def test_a_broadcast_that_timed_out_and_then_committed_is_accepted(endpoints):
    slow = endpoints(accepted_but_times_out)
    nonce_used = ok({"code": 3, "hash": TX_HASH, "log": "bad nonce"})
    after = endpoints(broadcaster(checktx=nonce_used, committed=True))
    client = ChainClient([slow.url, after.url], "test")
    client.rpc = CometRpc([slow.url, after.url], timeout=0.2)
    assert client.broadcast(RAW) == TX_HASH
    assert after.methods == ["broadcast_tx_sync", "tx"]


def test_a_broadcast_that_timed_out_and_is_refused_elsewhere_stays_refused(endpoints):
    slow = endpoints(accepted_but_times_out)
    refused = endpoints(broadcaster(checktx=ok({"code": 3, "hash": TX_HASH, "log": "bad nonce"})))
    client = ChainClient([slow.url, refused.url], "test")
    client.rpc = CometRpc([slow.url, refused.url], timeout=0.2)
    with pytest.raises(TxRejected, match="bad nonce"):
        client.broadcast(RAW)


def test_a_resubmitted_tx_is_still_refused_when_no_endpoint_could_have_received_it_first(endpoints):
    cached = endpoints(broadcaster(checktx=rpc_error("Internal error", "tx already exists in cache")))
    with pytest.raises(TxRejected, match="already submitted"):
        ChainClient([dead_url(), cached.url], "test").broadcast(RAW)


def test_wait_tx_during_an_outage_raises_chain_unavailable():
    client = ChainClient([dead_url(), dead_url()], "test")
    with pytest.raises(ChainUnavailable):
        client.wait_tx(TX_HASH, timeout=0.3)


# --- a validator cut from its peers ---------------------------------------------------------------


def test_a_tx_waiting_at_an_endpoint_that_stopped_making_blocks_is_sent_again_through_the_next(endpoints, monkeypatch):
    """Issue 23's chaos campaign: a validator cut from its peers still answers — CheckTx passes,
    its height stands still, and the tx never leaves its mempool. The wait sees the height stand
    still, asks the next endpoint from then on, and gives it the same bytes."""
    monkeypatch.setattr("haca.client.chain.STALLED_AFTER_S", 0.5)
    isolated = endpoints(
        lambda r: status_at(10) if r["method"] == "status" else broadcaster(checktx=ok({"code": 0, "hash": TX_HASH}))(r)
    )
    heights = iter(range(20, 10_000))
    received: list[str] = []

    def live(request: dict[str, Any]) -> Answer:
        if request["method"] == "status":
            return status_at(next(heights))
        if request["method"] == "broadcast_tx_sync":
            received.append(request["params"]["tx"])
            return ok({"code": 0, "hash": TX_HASH, "log": ""})
        return broadcaster(checktx=ok({}), committed=bool(received))(request)

    other = endpoints(live)
    client = ChainClient([isolated.url, other.url], "test")
    assert client.broadcast(RAW) == TX_HASH  # accepted by the isolated validator
    outcome = client.wait_tx(TX_HASH, timeout=10, raw=RAW)
    assert outcome.height == 5
    assert received == [base64.b64encode(RAW).decode()]
    assert client.rpc.url == other.url  # asked first from now on


def test_without_its_bytes_a_wait_at_a_stalled_endpoint_only_waits(endpoints, monkeypatch):
    monkeypatch.setattr("haca.client.chain.STALLED_AFTER_S", 0.2)
    isolated = endpoints(
        lambda r: status_at(10) if r["method"] == "status" else rpc_error("Internal error", "not found")
    )
    other = endpoints(broadcaster(checktx=ok({"code": 0, "hash": TX_HASH})))
    client = ChainClient([isolated.url, other.url], "test")
    with pytest.raises(HacaError, match="not committed within 2s"):
        client.wait_tx(TX_HASH, timeout=2)
    assert other.requests == []
