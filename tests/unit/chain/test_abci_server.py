"""The asyncio ABCI socket server and its framing, over a real unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tendermint.abci import types_pb2 as abci

from haca.chain.abci.framing import MAX_MESSAGE_BYTES, FramingError, encode_frame, encode_uvarint, read_frame
from haca.chain.abci.server import AbciServer
from haca.chain.app import HacaApp
from haca.chain.genesis import AppGenesis, GenesisAccount
from haca.chain.store import CommitStore

T = TypeVar("T")
IO_TIMEOUT = 10  # a guard against hanging, not a timing assumption


def run(coro: Awaitable[T]) -> T:
    async def guarded() -> T:
        return await asyncio.wait_for(coro, IO_TIMEOUT)

    return asyncio.run(guarded())


class StubApp:
    """Answers Info, fails CheckTx: enough to see the server route and contain app errors."""

    def info(self, req: abci.RequestInfo) -> abci.ResponseInfo:
        return abci.ResponseInfo(data="stub", version=req.version, last_block_height=41)

    def check_tx(self, req: abci.RequestCheckTx) -> abci.ResponseCheckTx:
        raise ValueError("boom in the app")


@contextlib.asynccontextmanager
async def serving(app: Any, socket_path: Path) -> AsyncIterator[AbciServer]:
    server = AbciServer(app, socket_path)
    await server.start()
    try:
        yield server
    finally:
        assert server._server is not None
        server._server.close()
        await server._server.wait_closed()


@contextlib.asynccontextmanager
async def connection(socket_path: Path) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def frame(**request: Any) -> bytes:
    return encode_frame(abci.Request(**request).SerializeToString())


def echo(message: str) -> bytes:
    return frame(echo=abci.RequestEcho(message=message))


FLUSH = encode_frame(abci.Request(flush=abci.RequestFlush()).SerializeToString())


async def read_response(reader: asyncio.StreamReader) -> abci.Response:
    payload = await read_frame(reader)
    assert payload is not None, "the server closed the connection instead of answering"
    response = abci.Response()
    response.ParseFromString(payload)
    return response


async def roundtrip_echo(socket_path: Path, message: str) -> str:
    async with connection(socket_path) as (reader, writer):
        writer.write(echo(message) + FLUSH)
        await writer.drain()
        answer = await read_response(reader)
        assert (await read_response(reader)).WhichOneof("value") == "flush"
        return answer.echo.message


async def assert_closed_by_server(reader: asyncio.StreamReader) -> None:
    assert await reader.read() == b"", "the server answered a bad frame instead of closing"


@pytest.fixture
def sock(tmp_path):
    return tmp_path / "abci.sock"


# --- serving -------------------------------------------------------------------------------------


def test_echo_is_answered_with_the_same_message(sock):
    async def main() -> str:
        async with serving(StubApp(), sock):
            return await roundtrip_echo(sock, "hello ✓")

    assert run(main()) == "hello ✓"


def test_pipelined_requests_are_answered_in_order_after_a_flush(sock):
    async def main() -> list[abci.Response]:
        async with serving(StubApp(), sock), connection(sock) as (reader, writer):
            writer.write(echo("a") + echo("b") + frame(info=abci.RequestInfo(version="v9")) + echo("c") + FLUSH)
            await writer.drain()
            return [await read_response(reader) for _ in range(5)]

    responses = run(main())
    assert [r.WhichOneof("value") for r in responses] == ["echo", "echo", "info", "echo", "flush"]
    assert [responses[i].echo.message for i in (0, 1, 3)] == ["a", "b", "c"]
    assert responses[2].info.version == "v9"


def test_info_is_answered_by_the_application(sock, tmp_path):
    app = HacaApp(CommitStore(tmp_path / "state.db"))
    genesis = AppGenesis(accounts=(GenesisAccount("0x" + "11" * 20, 100),))
    app.init_chain(abci.RequestInitChain(chain_id="c", app_state_bytes=json.dumps(genesis.to_json()).encode()))
    app_hash = app.finalize_block(abci.RequestFinalizeBlock(height=1)).app_hash
    app.commit(abci.RequestCommit())

    async def main() -> abci.Response:
        async with serving(app, sock), connection(sock) as (reader, writer):
            writer.write(frame(info=abci.RequestInfo()) + FLUSH)
            return await read_response(reader)

    info = run(main()).info
    app.store.close()
    assert (info.data, info.last_block_height, info.last_block_app_hash) == ("haca", 1, app_hash)


def test_an_app_method_raising_answers_an_exception_response_and_the_server_keeps_serving(sock):
    async def main() -> tuple[abci.Response, str]:
        async with serving(StubApp(), sock):
            async with connection(sock) as (reader, writer):
                writer.write(frame(check_tx=abci.RequestCheckTx(tx=b"x")) + FLUSH)
                response = await read_response(reader)
            return response, await roundtrip_echo(sock, "still here")

    response, echoed = run(main())
    assert response.WhichOneof("value") == "exception"
    assert "check_tx" in response.exception.error and "boom in the app" in response.exception.error
    assert echoed == "still here"


def test_a_method_the_app_lacks_answers_an_exception_response(sock):
    async def main() -> abci.Response:
        async with serving(StubApp(), sock), connection(sock) as (reader, writer):
            writer.write(frame(commit=abci.RequestCommit()) + FLUSH)
            return await read_response(reader)

    assert run(main()).WhichOneof("value") == "exception"


# --- bad input closes only the offending connection ----------------------------------------------

BAD_STREAMS = {
    "invalid_protobuf": encode_frame(b"\xff\xff\xff\xff\xff"),
    "request_without_a_type": encode_frame(b""),
    "length_over_the_limit": encode_uvarint(MAX_MESSAGE_BYTES + 1),
    "length_prefix_over_10_bytes": b"\x80" * 11,
}
TRUNCATED_STREAMS = {
    "ends_inside_the_payload": encode_uvarint(100) + b"\x0a" * 10,
    "ends_inside_the_length_prefix": b"\x80\x80",
}


@pytest.mark.parametrize("bad", list(BAD_STREAMS.values()), ids=list(BAD_STREAMS))
def test_a_bad_frame_closes_that_connection_after_answering_earlier_requests(sock, bad):
    async def main() -> tuple[str, str]:
        async with serving(StubApp(), sock):
            async with connection(sock) as (bystander_reader, bystander_writer):
                async with connection(sock) as (reader, writer):
                    writer.write(echo("before") + bad)  # no EOF from us: the server must close by itself
                    await writer.drain()
                    before = (await read_response(reader)).echo.message
                    await assert_closed_by_server(reader)
                bystander_writer.write(echo("bystander") + FLUSH)
                bystander = (await read_response(bystander_reader)).echo.message
            assert await roundtrip_echo(sock, "new connection") == "new connection"
            return before, bystander

    assert run(main()) == ("before", "bystander")


@pytest.mark.parametrize("partial", list(TRUNCATED_STREAMS.values()), ids=list(TRUNCATED_STREAMS))
def test_a_stream_ending_mid_frame_closes_that_connection_and_new_ones_are_served(sock, partial):
    async def main() -> str:
        async with serving(StubApp(), sock):
            async with connection(sock) as (reader, writer):
                writer.write(partial)
                writer.write_eof()
                await assert_closed_by_server(reader)
            return await roundtrip_echo(sock, "after")

    assert run(main()) == "after"


def test_start_replaces_a_stale_socket_file(sock):
    sock.write_text("left over by a crashed run")

    async def main() -> str:
        async with serving(StubApp(), sock):
            return await roundtrip_echo(sock, "fresh")

    assert run(main()) == "fresh"


# --- framing -------------------------------------------------------------------------------------


async def _read_all_frames(data: bytes) -> list[bytes]:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while (payload := await read_frame(reader)) is not None:
        frames.append(payload)
    return frames


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, "00"), (1, "01"), (127, "7f"), (128, "8001"), (300, "ac02"), (2**64 - 1, "ffffffffffffffffff01")],
)
def test_uvarint_known_vectors(value, encoded):
    assert encode_uvarint(value).hex() == encoded


def test_uvarint_refuses_negative_values():
    with pytest.raises(ValueError):
        encode_uvarint(-1)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2**64 - 1))
def test_uvarint_matches_protobufs_own_varint_encoding(value):
    # RequestInfo field 2 (block_version, uint64): one tag byte 0x10, then the varint.
    assert encode_uvarint(value) == abci.RequestInfo(block_version=value).SerializeToString()[1:]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=300) | st.binary(min_size=128, max_size=20_000), max_size=6))
def test_frames_round_trip_through_encode_frame_and_read_frame(payloads):
    assert run(_read_all_frames(b"".join(encode_frame(p) for p in payloads))) == payloads


@settings(max_examples=100, deadline=None)
@given(st.integers(1, MAX_MESSAGE_BYTES))
def test_read_frame_decodes_every_allowed_length_prefix(length):
    # With no payload behind the prefix, the error names the length the reader decoded.
    with pytest.raises(FramingError, match=f"after 0 of {length} frame bytes"):
        run(_read_all_frames(encode_uvarint(length)))


@settings(max_examples=50, deadline=None)
@given(st.integers(MAX_MESSAGE_BYTES + 1, 2**64 - 1))
def test_read_frame_refuses_lengths_over_the_limit(length):
    with pytest.raises(FramingError, match="exceeds"):
        run(_read_all_frames(encode_uvarint(length)))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=5), st.data())
def test_a_stream_cut_anywhere_yields_whole_frames_or_a_framing_error(payloads, data):
    frames = [encode_frame(p) for p in payloads]
    stream = b"".join(frames)
    cut = data.draw(st.integers(0, len(stream) - 1))
    boundaries = [sum(len(f) for f in frames[:i]) for i in range(len(frames) + 1)]
    if cut in boundaries:
        assert run(_read_all_frames(stream[:cut])) == payloads[: boundaries.index(cut)]
    else:
        with pytest.raises(FramingError):
            run(_read_all_frames(stream[:cut]))
