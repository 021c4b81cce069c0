"""The SDK's flows, written once for `Client` and `AsyncClient` (httpx's auth_flow pattern).

A flow is a generator: it yields the steps it needs done (`Send` an HTTP request, `Work` to run a
blocking call such as a chain read or a proof check, `Sleep`) and is sent back each step's result;
its return value is the flow's. `run_sync` does the steps inline; `run_async` awaits the requests
and runs the blocking work in a worker thread, so that nothing blocks the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


@dataclass(frozen=True)
class Send:
    """An HTTP request to make; a `stream` one comes back unread when its status is 200."""

    method: str
    url: str
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    stream: bool = False
    timeout: float | None = None  # None: the client's own


@dataclass(frozen=True)
class Work:
    """A blocking call to make (a chain read, a proof check): in a worker thread under asyncio."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()

    def __call__(self) -> Any:
        return self.fn(*self.args)


@dataclass(frozen=True)
class Sleep:
    seconds: float


Step = Send | Work | Sleep
Flow = Generator[Step, Any, T]


def work(fn: Callable[..., Any], *args: Any) -> Work:
    return Work(fn, args)


def _request(http: httpx.Client | httpx.AsyncClient, step: Send) -> httpx.Request:
    timeout = httpx.USE_CLIENT_DEFAULT if step.timeout is None else step.timeout
    return http.build_request(step.method, step.url, json=step.json, headers=step.headers, timeout=timeout)


def _do(http: httpx.Client, step: Step) -> Any:
    if isinstance(step, Work):
        return step()
    if isinstance(step, Sleep):
        return time.sleep(step.seconds)
    response = http.send(_request(http, step), stream=step.stream)
    if step.stream and response.status_code != 200:  # an error body: read it, close the stream
        response.read()
        response.close()
    return response


async def _ado(http: httpx.AsyncClient, step: Step) -> Any:
    if isinstance(step, Work):
        return await asyncio.to_thread(step)
    if isinstance(step, Sleep):
        return await asyncio.sleep(step.seconds)
    response = await http.send(_request(http, step), stream=step.stream)
    if step.stream and response.status_code != 200:
        await response.aread()
        await response.aclose()
    return response


def _resume(flow: Flow[T], result: Any, error: Exception | None) -> tuple[Step | None, Any]:
    """The flow's next step, sent `result` (or thrown `error`); (None, its value) once it returns."""
    try:
        return (flow.throw(error) if error is not None else flow.send(result)), None
    except StopIteration as stop:
        return None, stop.value


def run_sync(http: httpx.Client, flow: Flow[T]) -> T:
    """Drive `flow` to its end, doing each step inline; a step's exception is raised in the flow."""
    step, value = _resume(flow, None, None)
    while step is not None:
        try:
            result, error = _do(http, step), None
        except Exception as exc:
            result, error = None, exc
        step, value = _resume(flow, result, error)
    return value


async def run_async(http: httpx.AsyncClient, flow: Flow[T]) -> T:
    """As run_sync, awaiting each request and running each `Work` in a worker thread."""
    step, value = _resume(flow, None, None)
    while step is not None:
        try:
            result, error = await _ado(http, step), None
        except Exception as exc:
            result, error = None, exc
        step, value = _resume(flow, result, error)
    return value
