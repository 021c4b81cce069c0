"""The host's clients of the enclave's Unix socket (protocol in `haca.enclave.server`).

`EnclaveClient` is synchronous: one persistent connection, one request at a time (a lock), one
reconnect when the connection turns out broken. `AsyncEnclaveClient` keeps a pool of persistent
connections so concurrent requests run side by side; a generation holds its connection until the
receipt arrives.

A reconnect may reach a restarted enclave, which is a new key that has attested for nothing yet:
its refusal is how the caller learns it must register again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import socket
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from haca.enclave.runtime import Terms
from haca.enclave.server import HEADER_SIZE, MAX_FRAME, encode_frame
from haca.proofs.tee.attestation import Attestation
from haca.types.batch import MsgSettleBatch
from haca.types.receipt import SignedReceipt
from haca.types.tee import GpuEvidence

SIGNATURE_SIZE = 65
RECV_SIZE = 64 * 1024


class EnclaveError(RuntimeError):
    """The enclave could not do what was asked."""


class EnclaveUnreachable(EnclaveError):
    """No answer: the socket cannot be reached, the connection broke, or the answer is not a frame."""


class EnclaveRefusal(EnclaveError):
    """The enclave answered ``{"error": reason, "code": code}``."""

    def __init__(self, reason: str, code: str = "refused", param: str | None = None) -> None:
        super().__init__(f"the enclave refused: {reason}")
        self.reason, self.code, self.param = reason, code, param


class _Broken(Exception):
    """The connection is unusable (closed, short, or out of frame)."""


@dataclass(frozen=True)
class EnclaveEvidence:
    cpu: Attestation
    gpus: tuple[GpuEvidence, ...]


@dataclass(frozen=True)
class Generated:
    """A finished generation: what the enclave reported and the receipt it signed."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    receipt: SignedReceipt
    logprobs: tuple[dict[str, Any], ...] | None = None  # as haca.runtime.llm.Outcome's (not signed)


def _answer(body: bytes) -> dict[str, Any]:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EnclaveUnreachable(f"the enclave's answer is not JSON: {exc}") from None
    if not isinstance(answer, dict):
        raise EnclaveUnreachable("the enclave's answer is not a JSON object")
    if "error" in answer:
        param = answer.get("param")
        raise EnclaveRefusal(str(answer["error"]), str(answer.get("code", "refused")), param if param else None)
    return answer


def _evidence(answer: dict[str, Any]) -> EnclaveEvidence:
    try:
        cpu = Attestation(
            format=str(answer["format"]),
            evidence=base64.b64decode(answer["evidence"], validate=True),
            endorsements=base64.b64decode(answer.get("endorsements", ""), validate=True),
        )
        gpus = tuple(
            GpuEvidence(
                str(g["format"]),
                base64.b64decode(g["report"], validate=True),
                base64.b64decode(g["chain"], validate=True),
            )
            for g in answer.get("gpus", [])
        )
    except (KeyError, TypeError, binascii.Error, ValueError) as exc:
        raise EnclaveUnreachable(f"the enclave's attestation answer is malformed: {exc}") from None
    return EnclaveEvidence(cpu, gpus)


def _signature(answer: dict[str, Any]) -> bytes:
    text = answer.get("signature")
    try:
        signature = bytes.fromhex(text[2:]) if isinstance(text, str) and text.startswith("0x") else b""
    except ValueError:
        signature = b""
    if len(signature) != SIGNATURE_SIZE:
        raise EnclaveUnreachable(f"the enclave's signature is not 0x and {SIGNATURE_SIZE} bytes of hex")
    return signature


def _receipt(answer: dict[str, Any]) -> SignedReceipt:
    try:
        return SignedReceipt.from_json(answer["receipt"])
    except (KeyError, TypeError, ValueError) as exc:
        raise EnclaveUnreachable(f"the enclave's receipt is malformed: {exc}") from None


def _frame_size(header: bytes | bytearray) -> int:
    size = int.from_bytes(header, "big")
    if size > MAX_FRAME:
        raise _Broken(f"an answer of {size} bytes (at most {MAX_FRAME})")
    return size


def attest_request(chain_id: str, node: str, nonce: bytes) -> dict[str, Any]:
    return {"op": "attest", "chain_id": chain_id, "node": node, "nonce": bytes(nonce).hex()}


def load_request(model_id: str, kind: str, context: int = 0, slots: int = 1) -> dict[str, Any]:
    return {"op": "load", "model_id": model_id, "kind": kind, "context": context, "slots": slots}


def infer_request(model_id: str, raw_input: Any, terms: Terms) -> dict[str, Any]:
    return {"op": "infer", "model_id": model_id, "input": raw_input, "terms": terms.to_json()}


def sign_batch_request(chain_id: str, node: str, batch: MsgSettleBatch) -> dict[str, Any]:
    return {"op": "sign_batch", "chain_id": chain_id, "node": node, "batch": batch.to_json()}


# -- synchronous ------------------------------------------------------------------------------------------


class EnclaveClient:
    """A synchronous client on one persistent connection; safe to share between threads."""

    def __init__(self, path: Path | str, timeout: float | None = 60.0) -> None:
        self.path = str(path)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._buffer = bytearray()

    def key(self) -> dict[str, Any]:
        return self.call({"op": "key"})

    def attest(self, chain_id: str, node: str, nonce: bytes) -> EnclaveEvidence:
        return _evidence(self.call(attest_request(chain_id, node, nonce)))

    def load(self, model_id: str, kind: str, context: int = 0, slots: int = 1) -> dict[str, Any]:
        return self.call(load_request(model_id, kind, context, slots))

    def infer(self, model_id: str, raw_input: Any, terms: Terms) -> tuple[dict[str, Any], SignedReceipt]:
        answer = self.call(infer_request(model_id, raw_input, terms))
        return answer["output"], _receipt(answer)

    def sign_batch(self, chain_id: str, node: str, batch: MsgSettleBatch) -> bytes:
        """The enclave's signature over `batch`'s root, if it produced every receipt in it."""
        return _signature(self.call(sign_batch_request(chain_id, node, batch)))

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """Any one-answer request (the ops above, or a raw one: tests send forged ones)."""
        frame = encode_frame(request)
        with self._lock:
            body = self._round_trip(frame)
        return _answer(body)

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> EnclaveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _round_trip(self, frame: bytes) -> bytes:
        # A connection already open may have been closed by the other side since: retry once on a
        # fresh one. A fresh connection that fails, or a timeout, is final.
        reused = self._sock is not None
        try:
            return self._exchange(self._connected(), frame)
        except TimeoutError as exc:
            self._drop()
            raise EnclaveUnreachable(f"the enclave on {self.path} did not answer in {self.timeout} s") from exc
        except (OSError, _Broken) as exc:
            self._drop()
            if not reused:
                raise EnclaveUnreachable(f"the enclave on {self.path} is unavailable: {exc}") from exc
        try:
            return self._exchange(self._connected(), frame)
        except (OSError, _Broken) as exc:
            self._drop()
            raise EnclaveUnreachable(f"the enclave on {self.path} is unavailable: {exc}") from exc

    def _connected(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except OSError as exc:
                sock.close()
                raise EnclaveUnreachable(f"cannot connect to the enclave on {self.path}: {exc}") from exc
            self._sock = sock
            self._buffer.clear()
        return self._sock

    def _exchange(self, sock: socket.socket, frame: bytes) -> bytes:
        sock.sendall(frame)
        size = _frame_size(self._fill(sock, HEADER_SIZE)[:HEADER_SIZE])
        data = self._fill(sock, HEADER_SIZE + size)
        body = bytes(data[HEADER_SIZE : HEADER_SIZE + size])
        del data[: HEADER_SIZE + size]
        return body

    def _fill(self, sock: socket.socket, size: int) -> bytearray:
        buffer = self._buffer
        while len(buffer) < size:
            chunk = sock.recv(max(RECV_SIZE, size - len(buffer)))
            if not chunk:
                raise _Broken("the enclave closed the connection")
            buffer += chunk
        return buffer

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        self._buffer.clear()
        if sock is not None:
            sock.close()


# -- asyncio ----------------------------------------------------------------------------------------------


class _AsyncConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, frame: bytes) -> None:
        self.writer.write(frame)
        await self.writer.drain()

    async def receive(self) -> bytes:
        try:
            size = _frame_size(await self.reader.readexactly(HEADER_SIZE))
            return await self.reader.readexactly(size)
        except asyncio.IncompleteReadError:
            raise _Broken("the enclave closed the connection") from None

    def close(self) -> None:
        self.writer.close()


class Generation:
    """A generation in progress: iterate for the text pieces; then `result` holds the receipt.
    `cancel()` asks the enclave to stop at the next token (the receipt still comes)."""

    def __init__(self, client: AsyncEnclaveClient, request: dict[str, Any]) -> None:
        self._client, self._request = client, request
        self._conn: _AsyncConnection | None = None
        self.result: Generated | None = None
        self._cancel_sent = False
        self._cancel_asked = False  # asked before the connection was there: sent right after the request

    async def __aiter__(self) -> AsyncIterator[str]:
        conn = await self._client._checkout()
        self._conn = conn
        clean = False
        try:
            await conn.send(encode_frame(self._request))
            if self._cancel_asked:
                await self.cancel()
            while True:
                answer = _answer(await conn.receive())
                if "text" in answer:
                    yield str(answer["text"])
                    continue
                outcome = answer.get("outcome")
                if not isinstance(outcome, dict):
                    raise EnclaveUnreachable("the enclave's generation answer is malformed")
                self.result = Generated(
                    str(outcome["text"]),
                    str(outcome["finish_reason"]),
                    int(outcome["prompt_tokens"]),
                    int(outcome["completion_tokens"]),
                    _receipt(answer),
                    tuple(outcome["logprobs"]) if isinstance(outcome.get("logprobs"), list) else None,
                )
                clean = True
                return
        except EnclaveRefusal:
            clean = True  # a refusal ends the exchange cleanly: the connection is reusable
            raise
        except (OSError, _Broken) as exc:
            raise EnclaveUnreachable(f"the enclave on {self._client.path} is unavailable: {exc}") from exc
        finally:
            self._conn = None
            self._client._checkin(conn, clean)

    async def cancel(self) -> None:
        self._cancel_asked = True
        conn = self._conn
        if conn is not None and not self._cancel_sent:
            self._cancel_sent = True
            with contextlib.suppress(OSError):  # the connection is gone: the enclave stops for it anyway
                await conn.send(encode_frame({"op": "cancel"}))


class AsyncEnclaveClient:
    """An asyncio client with up to `pool_size` persistent connections, one request on each at a
    time. Its connections belong to the event loop that opened them: use one client per loop."""

    def __init__(self, path: Path | str, pool_size: int = 16, timeout: float | None = 60.0) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.path = str(path)
        self.timeout = timeout
        self._idle: list[_AsyncConnection] = []
        self._slots = asyncio.Semaphore(pool_size)

    async def key(self) -> dict[str, Any]:
        return await self.call({"op": "key"})

    async def infer(self, model_id: str, raw_input: Any, terms: Terms) -> tuple[dict[str, Any], SignedReceipt]:
        answer = await self.call(infer_request(model_id, raw_input, terms))
        return answer["output"], _receipt(answer)

    def generate(self, model_id: str, kind: str, body: Any, terms: Terms, seconds: float) -> Generation:
        request = {
            "op": "generate",
            "model_id": model_id,
            "kind": kind,
            "body": body,
            "terms": terms.to_json(),
            "seconds": seconds,
        }
        return Generation(self, request)

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        frame = encode_frame(request)
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    body = await self._exchange(frame, reuse=True)
                except (OSError, _Broken):  # an idle connection the enclave closed: once more, fresh
                    body = await self._exchange(frame, reuse=False)
        except TimeoutError:
            raise EnclaveUnreachable(f"the enclave on {self.path} did not answer in {self.timeout} s") from None
        except (OSError, _Broken) as exc:
            raise EnclaveUnreachable(f"the enclave on {self.path} is unavailable: {exc}") from exc
        return _answer(body)

    async def _exchange(self, frame: bytes, reuse: bool) -> bytes:
        conn = await self._checkout(reuse)
        clean = False
        try:
            await conn.send(frame)
            body = await conn.receive()
            clean = True
        finally:
            self._checkin(conn, clean)
        return body

    async def _checkout(self, reuse: bool = True) -> _AsyncConnection:
        await self._slots.acquire()
        try:
            while reuse and self._idle:
                conn = self._idle.pop()
                if not conn.writer.is_closing() and not conn.reader.at_eof():
                    return conn
                conn.close()
            try:
                reader, writer = await asyncio.open_unix_connection(self.path, limit=MAX_FRAME + 64)
            except OSError as exc:
                raise EnclaveUnreachable(f"cannot connect to the enclave on {self.path}: {exc}") from exc
            return _AsyncConnection(reader, writer)
        except BaseException:
            self._slots.release()
            raise

    def _checkin(self, conn: _AsyncConnection, clean: bool) -> None:
        # Back to the pool only after a complete exchange: a failed or cancelled one leaves the
        # stream at an unknown offset, so that connection is closed.
        if clean:
            self._idle.append(conn)
        else:
            conn.close()
        self._slots.release()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
