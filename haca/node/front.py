"""The front of a node served by several workers (one per GPU, haca.node.pgstore): one public
URL, the one registered on chain; each request goes to the live worker with the fewest requests
in flight, streamed both ways (an LLM's server-sent events pass as they come).

A worker that refuses the connection never saw the request: it is marked down and the request
goes to the next. A worker lost after the request was sent may have served it (its receipt is
in the shared store, and will settle): the client gets 502 `answer_lost`, and the SDK fetches
the output any worker can hand back (GET /v1/outputs/{id}), as after any lost answer. Workers
marked down are probed (GET /healthz) and come back when they answer."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from haca.node.context import read_body
from haca.node.errors import PayloadTooLarge, error_body
from haca.node.payments import PAYMENT_HEADER
from haca.types.outputs import ANSWER_LOST
from haca.types.x402 import PAYMENT_SIGNATURE_HEADER

log = structlog.get_logger("haca.front")

PROBE_INTERVAL_S = 1.0
POOL_WAIT_S = 10.0
# Hop-by-hop headers (RFC 9110 7.6.1) are the connection's, not the message's: never forwarded.
_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding"}
    | {"upgrade", "host", "content-length"}
)

# A request with none of these cannot be charged (an x402 probe, a 402): sent again freely.
_PAYMENT_HEADERS = (PAYMENT_HEADER, PAYMENT_SIGNATURE_HEADER.lower(), "authorization")


@dataclass
class Worker:
    url: str
    up: bool = True
    in_flight: int = 0
    served: int = 0
    lost: int = 0
    order: int = field(default=0)


class Front:
    def __init__(self, workers: Sequence[str], connect_timeout: float = 2.0) -> None:
        if not workers:
            raise ValueError("a front needs at least one worker URL")
        self.workers = [Worker(url.rstrip("/"), order=i) for i, url in enumerate(workers)]
        self._turn = itertools.count()
        # an LLM may stream for minutes; all connections busy for POOL_WAIT_S: 503
        timeout = httpx.Timeout(None, connect=connect_timeout, pool=POOL_WAIT_S)
        # idle connections closed before the worker closes them (uvicorn: after 5 s), so a request
        # is never sent on a connection the worker is closing (that would read as a lost answer)
        limits = httpx.Limits(max_connections=512, keepalive_expiry=2.0)
        self._http = httpx.AsyncClient(timeout=timeout, limits=limits)
        self._probe: asyncio.Task[None] | None = None

    def pick(self, tried: set[str]) -> Worker | None:
        """The live worker with the fewest requests in flight (ties taken in turn)."""
        live = [w for w in self.workers if w.up and w.url not in tried]
        if not live:
            return None
        turn = next(self._turn)
        return min(live, key=lambda w: (w.in_flight, (w.order - turn) % len(self.workers)))

    async def probe_forever(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL_S)
            for worker in self.workers:
                if worker.up:
                    continue
                with contextlib.suppress(httpx.HTTPError):
                    if (await self._http.get(worker.url + "/healthz", timeout=2.0)).status_code == 200:
                        worker.up = True
                        log.info("worker_up", worker=worker.url)

    async def forward(self, request: Request) -> Response:
        try:
            body = await read_body(request)  # the workers' own limit: a front never buffers more
        except PayloadTooLarge as exc:
            return JSONResponse(error_body(exc.status, exc.code, str(exc)), exc.status)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
        if request.client is not None:
            headers.append(("x-forwarded-for", request.client.host))
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        tried: set[str] = set()
        while (worker := self.pick(tried)) is not None:
            tried.add(worker.url)
            upstream = self._http.build_request(request.method, worker.url + path, headers=headers, content=body)
            worker.in_flight += 1
            try:
                answer = await self._http.send(upstream, stream=True)
            except httpx.PoolTimeout:
                worker.in_flight -= 1
                return JSONResponse(error_body(503, "overloaded", "every connection to the workers is busy"), 503)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # never reached it: try the next
                worker.in_flight -= 1
                worker.up = False
                log.warning("worker_down", worker=worker.url, error=repr(exc))
                continue
            except httpx.HTTPError as exc:  # sent: it may have served the request
                worker.in_flight -= 1
                worker.lost += 1
                worker.up = False
                log.warning("answer_lost", worker=worker.url, path=request.url.path, error=repr(exc))
                if request.method in ("GET", "HEAD") or not paying(request):
                    continue  # a read, or a request nothing can be charged for: the next worker answers it
                return lost_answer(exc)
            return self._relay(worker, answer)
        return JSONResponse(error_body(503, "no_worker", "no worker of this node is up: try again shortly"), 503)

    def _relay(self, worker: Worker, answer: httpx.Response) -> Response:
        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in answer.aiter_raw():
                    yield chunk
                worker.served += 1
            except httpx.HTTPError as exc:  # the worker died mid-stream: the client sees the stream cut
                worker.lost += 1
                worker.up = False
                log.warning("stream_lost", worker=worker.url, error=repr(exc))
                raise
            finally:  # also when the client went away: the worker's count and connection are freed
                await answer.aclose()
                worker.in_flight -= 1

        headers = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
        return StreamingResponse(body(), answer.status_code, headers)

    def status(self) -> dict[str, Any]:
        return {
            "workers": [
                {"url": w.url, "up": w.up, "in_flight": w.in_flight, "served": w.served, "lost": w.lost}
                for w in self.workers
            ]
        }

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self._http.aclose()


def paying(request: Request) -> bool:
    """Does the request carry a payment (then it may have been charged, and is never sent twice)?"""
    headers = request.headers
    return any(name in headers for name in _PAYMENT_HEADERS)


def lost_answer(exc: Exception) -> JSONResponse:
    message = (
        f"the worker serving this request was lost after it was sent ({type(exc).__name__}): if it was"
        " served, its receipt settles and GET /v1/outputs/{request_id} returns the answer"
    )
    return JSONResponse(error_body(502, ANSWER_LOST, message), 502)


def create_front(workers: Sequence[str]) -> Starlette:
    front = Front(workers)

    async def status(request: Request) -> JSONResponse:
        return JSONResponse(front.status())

    async def everything(request: Request) -> Response:
        return await front.forward(request)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        front._probe = asyncio.create_task(front.probe_forever())
        yield
        await front.close()

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    app = Starlette(
        routes=[Route("/front/status", status), Route("/{path:path}", everything, methods=methods)], lifespan=lifespan
    )
    app.state.front = front
    return app


def run_front(workers: Sequence[str], host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(create_front(workers), host=host, port=port, log_level="warning", access_log=False)
