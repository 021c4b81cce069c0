"""An enclave server on a Unix socket, served from a thread with its own event loop (tests only)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from haca.enclave.runtime import Enclave
from haca.enclave.server import EnclaveServer


@contextlib.contextmanager
def serving(runtime: Enclave, socket: Path) -> Iterator[Path]:
    """`runtime` served on `socket` until the block ends; the server closes its connections first,
    so no coroutine is left for the garbage collector of a closed loop."""
    server = EnclaveServer(runtime, socket)
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(5)
    try:
        yield socket
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
