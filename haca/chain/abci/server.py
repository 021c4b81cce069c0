"""asyncio ABCI socket server. CometBFT opens four connections (consensus, mempool, query,
snapshot); each is served in order, responses written in request order and flushed on Flush.

Bad frames close only the offending connection; they never reach the application.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Protocol

import structlog
from google.protobuf.message import DecodeError
from tendermint.abci import types_pb2 as abci

from haca.chain.abci.framing import FramingError, encode_frame, take_frames

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


class Application(Protocol):
    """What the server asks of an ABCI application: one answer per request kind it forwards
    (APP_METHODS). haca.chain.abci.base.BaseApplication answers the ones an app may not use."""

    def info(self, req: abci.RequestInfo, /) -> abci.ResponseInfo: ...

    def init_chain(self, req: abci.RequestInitChain, /) -> abci.ResponseInitChain: ...

    def query(self, req: abci.RequestQuery, /) -> abci.ResponseQuery: ...

    def check_tx(self, req: abci.RequestCheckTx, /) -> abci.ResponseCheckTx: ...

    def commit(self, req: abci.RequestCommit, /) -> abci.ResponseCommit: ...

    def list_snapshots(self, req: abci.RequestListSnapshots, /) -> abci.ResponseListSnapshots: ...

    def offer_snapshot(self, req: abci.RequestOfferSnapshot, /) -> abci.ResponseOfferSnapshot: ...

    def load_snapshot_chunk(self, req: abci.RequestLoadSnapshotChunk, /) -> abci.ResponseLoadSnapshotChunk: ...

    def apply_snapshot_chunk(self, req: abci.RequestApplySnapshotChunk, /) -> abci.ResponseApplySnapshotChunk: ...

    def prepare_proposal(self, req: abci.RequestPrepareProposal, /) -> abci.ResponsePrepareProposal: ...

    def process_proposal(self, req: abci.RequestProcessProposal, /) -> abci.ResponseProcessProposal: ...

    def extend_vote(self, req: abci.RequestExtendVote, /) -> abci.ResponseExtendVote: ...

    def verify_vote_extension(self, req: abci.RequestVerifyVoteExtension, /) -> abci.ResponseVerifyVoteExtension: ...

    def finalize_block(self, req: abci.RequestFinalizeBlock, /) -> abci.ResponseFinalizeBlock: ...


class AbciServer:
    def __init__(self, app: Application, socket_path: Path) -> None:
        self.app = app
        self.socket_path = socket_path
        self._server: asyncio.AbstractServer | None = None
        self._connections = 0

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(self._connection, path=str(self.socket_path))
        log.info("abci_listening", socket=str(self.socket_path))

    def _connection(self) -> _Connection:
        self._connections += 1
        return _Connection(self, self._connections)

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

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


class _Connection(asyncio.Protocol):
    """One ABCI connection. Requests are answered as they arrive; answers are written when the
    client flushes, once per received chunk, so a burst of CheckTx costs one write, not many."""

    def __init__(self, server: AbciServer, number: int) -> None:
        self.server, self.number = server, number
        self.buffer = bytearray()
        self.pending: list[bytes] = []
        self.flushed = 0  # how many of `pending` a Flush has released
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        try:
            frames = take_frames(self.buffer)
        except FramingError as exc:
            self._answer(exc.frames)
            self._close_for(exc, release_all=True)
            return
        try:
            self._answer(frames)
        except FramingError as exc:
            self._close_for(exc, release_all=True)
            return
        self._release()

    def _answer(self, frames: list[bytes]) -> None:
        for payload in frames:
            request = abci.Request()
            try:
                request.ParseFromString(payload)
            except DecodeError as exc:
                raise FramingError(f"request is not a tendermint.abci.Request: {exc}") from exc
            kind = request.WhichOneof("value")
            if kind is None:
                raise FramingError("request has no type")
            self.pending.append(encode_frame(self.server.handle(kind, request).SerializeToString()))
            if kind == "flush":
                self.flushed = len(self.pending)

    def _release(self, everything: bool = False) -> None:
        count = len(self.pending) if everything else self.flushed
        if count and self.transport is not None:
            self.transport.write(b"".join(self.pending[:count]))
            del self.pending[:count]
        self.flushed = 0

    def _close_for(self, exc: FramingError, release_all: bool) -> None:
        self._release(everything=release_all)  # answer what was asked before the bad frame
        log.warning("abci_bad_frame_closing_connection", connection=self.number, error=str(exc))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        log.info("abci_connection_closed", connection=self.number)
