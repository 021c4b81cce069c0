"""The front of a node's workers (haca.node.front), over real loopback sockets: a worker that
refuses connections never saw the request (the next one serves it); one lost after the request
was sent may have served it (502 answer_lost, which the SDK reads as a lost answer); answers and
streams pass through as they come; the least busy worker gets the next request."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from haca.client.core import error_code
from haca.node.context import MAX_BODY_BYTES
from haca.node.front import create_front
from haca.types.outputs import ANSWER_LOST
from tests.unit.hub.server import free_port, serve


def worker(name: str, delay: float = 0.0) -> FastAPI:
    app = FastAPI()
    app.state.seen = []

    @app.post("/v1/infer")
    async def infer(request: Request) -> JSONResponse:
        body = await request.json()
        app.state.seen.append((body, request.headers.get("x-payment")))
        await asyncio.sleep(delay)
        return JSONResponse({"worker": name, "echo": body}, 200, {"x-haca-receipt": name})

    @app.get("/v1/stream")
    async def stream() -> StreamingResponse:
        async def events() -> Iterator[bytes]:  # type: ignore[misc]
            for i in range(3):
                yield f"data: {i}\n\n".encode()
                await asyncio.sleep(0.05)

        return StreamingResponse(events(), media_type="text/event-stream")  # type: ignore[arg-type]

    @app.get("/healthz")
    async def health() -> dict[str, str]:
        return {"status": "ok", "worker": name}

    return app


@contextlib.contextmanager
def hangs_up() -> Iterator[str]:
    """A "worker" that takes the request, then dies before it answers (a SIGKILL mid-request)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def run() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.close()

    threading.Thread(target=run, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        listener.close()


def test_a_worker_refusing_connections_is_skipped_and_the_answer_relayed_whole():
    app = worker("w1")
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens: the request never reached it
    with serve(app) as up, serve(create_front([down, up])) as front:  # type: ignore[arg-type]
        answer = httpx.post(f"{front}/v1/infer", json={"model": "iris"}, headers={"X-PAYMENT": "abc"})
        assert answer.status_code == 200 and answer.json() == {"worker": "w1", "echo": {"model": "iris"}}
        assert answer.headers["x-haca-receipt"] == "w1"
        assert app.state.seen == [({"model": "iris"}, "abc")]  # the payment header passed through
        too_big = httpx.post(f"{front}/v1/infer", content=b"x" * (MAX_BODY_BYTES + 1))
        assert too_big.status_code == 413 and error_code(too_big) == "payload_too_large"
        assert len(app.state.seen) == 1  # never buffered whole, never forwarded
        status = httpx.get(f"{front}/front/status").json()["workers"]
        assert [(w["up"], w["served"]) for w in status] == [(False, 0), (True, 1)]
        with httpx.stream("GET", f"{front}/v1/stream") as streamed:
            assert streamed.headers["content-type"].startswith("text/event-stream")
            assert list(streamed.iter_lines()) == ["data: 0", "", "data: 1", "", "data: 2", ""]
        status = httpx.get(f"{front}/front/status").json()["workers"]
        assert [(w["in_flight"], w["served"]) for w in status] == [(0, 0), (0, 2)]


def test_a_worker_lost_after_a_paid_request_was_sent_is_a_502_answer_lost_and_an_unpaid_one_goes_to_the_next():
    app = worker("w1")
    with hangs_up() as lost, serve(app) as up, serve(create_front([lost, up])) as front:  # type: ignore[arg-type]
        answer = httpx.post(f"{front}/v1/infer", json={"model": "iris"}, headers={"X-PAYMENT": "abc"})
        assert answer.status_code == 502 and error_code(answer) == ANSWER_LOST
        assert app.state.seen == []  # never sent twice: the first worker may have served it
        # the lost worker is down now: the next request goes to the live one
        assert httpx.post(f"{front}/v1/infer", json={"model": "iris"}).json()["worker"] == "w1"
    with hangs_up() as lost, serve(app) as up, serve(create_front([lost, up])) as front:  # type: ignore[arg-type]
        assert httpx.get(f"{front}/healthz").json()["worker"] == "w1"  # a read is tried on the next
    with hangs_up() as lost, serve(app) as up, serve(create_front([lost, up])) as front:  # type: ignore[arg-type]
        # no payment (an x402 probe): nothing could be charged for it, so the next worker answers it
        assert httpx.post(f"{front}/v1/infer", json={"model": "iris"}).json()["worker"] == "w1"


def test_no_worker_up_is_a_503_with_a_json_error():
    with serve(create_front([f"http://127.0.0.1:{free_port()}"])) as front:  # type: ignore[arg-type]
        answer = httpx.post(f"{front}/v1/infer", json={})
        assert answer.status_code == 503 and error_code(answer) == "no_worker"


def test_requests_at_once_are_spread_over_the_workers():
    slow_a, slow_b = worker("a", delay=0.3), worker("b", delay=0.3)
    with serve(slow_a) as a, serve(slow_b) as b, serve(create_front([a, b])) as front:  # type: ignore[arg-type]

        async def burst() -> list[str]:
            async with httpx.AsyncClient() as http:
                answers = await asyncio.gather(*(http.post(f"{front}/v1/infer", json={"i": i}) for i in range(8)))
            return [r.json()["worker"] for r in answers]

        served = asyncio.run(burst())
    assert sorted(served) == ["a"] * 4 + ["b"] * 4
