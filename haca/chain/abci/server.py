"""asyncio ABCI socket server. CometBFT opens four connections (consensus, mempool, query,
snapshot); each is served in order, responses written in request order and flushed on Flush.

Bad frames close only the offending connection; they never reach the application.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import structlog
from google.protobuf.message import DecodeError
from tendermint.abci import types_pb2 as abci

from haca.chain.abci.framing import FramingError, encode_frame, read_frame

log = structlog.get_logger("haca.abci")

# Request kinds the application answers; echo and flush are answered here.
APP_METHODS = (
    "info",
    "init_chain",
    "query",
    "check_tx",
    "commit",
    "list_snapshots",
    "offer_snapshot",
    "load_snapshot_chunk",
    "apply_snapshot_chunk",
    "prepare_proposal",
    "process_proposal",
    "extend_vote",
    "verify_vote_extension",
    "finalize_block",
)


class AbciServer:
    def __init__(self, app: Any, socket_path: Path) -> None:
        self.app = app
        self.socket_path = socket_path
        self._server: asyncio.AbstractServer | None = None
        self._connections = 0

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.socket_path))
        log.info("abci_listening", socket=str(self.socket_path))

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        conn = self._connections
        pending: list[bytes] = []  # responses wait for the client's Flush, then go in one write
        try:
            while True:
                payload = await read_frame(reader)
                if payload is None:
                    break
                request = abci.Request()
                try:
                    request.ParseFromString(payload)
                except DecodeError as exc:
                    raise FramingError(f"request is not a tendermint.abci.Request: {exc}") from exc
                kind = request.WhichOneof("value")
                if kind is None:
                    raise FramingError("request has no type")
                pending.append(encode_frame(self.handle(kind, request).SerializeToString()))
                if kind == "flush":
                    writer.write(b"".join(pending))
                    pending.clear()
                    await writer.drain()
        except FramingError as exc:
            writer.write(b"".join(pending))  # answer what was asked before the bad frame
            log.warning("abci_bad_frame_closing_connection", connection=conn, error=str(exc))
        except (ConnectionError, asyncio.IncompleteReadError):
            log.info("abci_connection_lost", connection=conn)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def handle(self, kind: str, request: abci.Request) -> abci.Response:
        response = abci.Response()
        if kind == "echo":
            response.echo.message = request.echo.message
        elif kind == "flush":
            response.flush.SetInParent()
        elif kind in APP_METHODS:
            try:
                answer = getattr(self.app, kind)(getattr(request, kind))
            except Exception as exc:  # an app bug: CometBFT must stop rather than diverge
                log.exception("abci_app_error", request=kind)
                response.exception.error = f"{kind}: {type(exc).__name__}: {exc}"
                return response
            getattr(response, kind).CopyFrom(answer)
        else:
            response.exception.error = f"unsupported request {kind!r}"
        return response
