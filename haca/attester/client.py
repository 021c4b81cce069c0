"""Clients of the dev attester's Unix socket (protocol in `haca.attester.server`).

`AttesterClient` is synchronous: one persistent connection, one request at a time (a lock), and one
reconnect when the connection turns out broken. `AsyncAttesterClient` keeps a pool of persistent
connections so concurrent requests run side by side instead of queueing on one.

A reconnect may reach a restarted attester, which is a new enclave with a new key that has attested
for nothing yet: its refusal (`AttesterRefused`) is how the caller learns it must register again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import socket
import threading
from pathlib import Path
from typing import Any

import orjson

from haca.attester.server import HEADER_SIZE, MAX_FRAME, encode_frame
from haca.proofs.tee.attestation import Attestation
from haca.types.batch import MsgSettleBatch
from haca.types.receipt import Receipt

SIGNATURE_SIZE = 65
RECV_SIZE = 64 * 1024


class AttesterError(RuntimeError):
    """The attester could not do what was asked."""


class AttesterUnavailable(AttesterError):
    """No answer: the socket cannot be reached, the connection broke, or the answer is not a frame."""


class AttesterRefused(AttesterError):
    """The attester answered ``{"error": reason}``; `reason` is its text."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the attester refused: {reason}")
        self.reason = reason


class _Broken(Exception):
    """The connection is unusable (closed, short, or out of frame); the caller reconnects or gives up."""


# -- messages (shared by both clients) -------------------------------------------------------------------


def _attest_request(chain_id: str, node: str, nonce: bytes) -> dict[str, Any]:
    return {"op": "attest", "chain_id": chain_id, "node": node, "nonce": bytes(nonce).hex()}


def _sign_request(receipt: Receipt) -> dict[str, Any]:
    return {"op": "sign_receipt", "receipt": receipt.to_json()}


def _sign_batch_request(chain_id: str, node: str, batch: MsgSettleBatch) -> dict[str, Any]:
    return {"op": "sign_batch", "chain_id": chain_id, "node": node, "batch": batch.to_json()}


def _answer(body: bytes) -> dict[str, Any]:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise AttesterUnavailable(f"the attester's answer is not JSON: {exc}") from None
    if not isinstance(answer, dict):
        raise AttesterUnavailable("the attester's answer is not a JSON object")
    if "error" in answer:
        raise AttesterRefused(str(answer["error"]))
    return answer


def _attestation(answer: dict[str, Any]) -> Attestation:
    try:
        return Attestation(
            format=str(answer["format"]),
            evidence=base64.b64decode(answer["evidence"], validate=True),
            endorsements=base64.b64decode(answer.get("endorsements", ""), validate=True),
        )
    except (KeyError, TypeError, binascii.Error, ValueError) as exc:
        raise AttesterUnavailable(f"the attester's attestation answer is malformed: {exc}") from None


def _signature(answer: dict[str, Any]) -> bytes:
    text = answer.get("signature")
    try:
        signature = bytes.fromhex(text[2:]) if isinstance(text, str) and text.startswith("0x") else b""
    except ValueError:
        signature = b""
    if len(signature) != SIGNATURE_SIZE:
        raise AttesterUnavailable(f"the attester's signature is not 0x and {SIGNATURE_SIZE} bytes of hex")
    return signature


def _frame_size(header: bytes | bytearray) -> int:
    size = int.from_bytes(header, "big")
    if size > MAX_FRAME:
        raise _Broken(f"an answer of {size} bytes (at most {MAX_FRAME})")
    return size


# -- synchronous ------------------------------------------------------------------------------------------


class AttesterClient:
    """A synchronous client on one persistent connection; safe to share between threads."""

    def __init__(self, path: Path | str, timeout: float | None = 30.0) -> None:
        self.path = str(path)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._buffer = bytearray()

    def key(self) -> dict[str, Any]:
        return self._call({"op": "key"})

    def attest(self, chain_id: str, node: str, nonce: bytes) -> Attestation:
        return _attestation(self._call(_attest_request(chain_id, node, nonce)))

    def sign_receipt(self, receipt: Receipt) -> bytes:
        return _signature(self._call(_sign_request(receipt)))

    def sign_batch(self, chain_id: str, node: str, batch: MsgSettleBatch) -> bytes:
        """The enclave's signature over `batch`'s root (its ReceiptBatch digest)."""
        return _signature(self._call(_sign_batch_request(chain_id, node, batch)))

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> AttesterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        frame = encode_frame(request)
        with self._lock:
            body = self._round_trip(frame)
        return _answer(body)

    def _round_trip(self, frame: bytes) -> bytes:
        # A connection that was already open may have been closed by the other side since: retry once on
        # a fresh one. A fresh connection that fails, or a timeout (the attester is there but slow), is final.
        reused = self._sock is not None
        try:
            return self._exchange(self._connected(), frame)
        except TimeoutError as exc:
            self._drop()
            raise AttesterUnavailable(f"the attester on {self.path} did not answer in {self.timeout} s") from exc
        except (OSError, _Broken) as exc:
            self._drop()
            if not reused:
                raise AttesterUnavailable(f"the attester on {self.path} is unavailable: {exc}") from exc
        try:
            return self._exchange(self._connected(), frame)
        except (OSError, _Broken) as exc:
            self._drop()
            raise AttesterUnavailable(f"the attester on {self.path} is unavailable: {exc}") from exc

    def _connected(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except OSError as exc:
                sock.close()
                raise AttesterUnavailable(f"cannot connect to the attester on {self.path}: {exc}") from exc
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
        """The buffer, read into until it holds at least `size` bytes (one recv usually does)."""
        buffer = self._buffer
        while len(buffer) < size:
            chunk = sock.recv(max(RECV_SIZE, size - len(buffer)))
            if not chunk:
                raise _Broken("the attester closed the connection")
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

    async def exchange(self, frame: bytes) -> bytes:
        self.writer.write(frame)
        await self.writer.drain()
        try:
            size = _frame_size(await self.reader.readexactly(HEADER_SIZE))
            return await self.reader.readexactly(size)
        except asyncio.IncompleteReadError:
            raise _Broken("the attester closed the connection") from None

    def close(self) -> None:
        self.writer.close()


class AsyncAttesterClient:
    """An asyncio client with up to `pool_size` persistent connections, one request on each at a time.
    Its connections belong to the event loop that opened them: use one client per loop."""

    def __init__(self, path: Path | str, pool_size: int = 8, timeout: float | None = 30.0) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.path = str(path)
        self.pool_size = pool_size
        self.timeout = timeout
        self._idle: list[_AsyncConnection] = []
        self._slots = asyncio.Semaphore(pool_size)

    async def key(self) -> dict[str, Any]:
        return await self._call({"op": "key"})

    async def attest(self, chain_id: str, node: str, nonce: bytes) -> Attestation:
        return _attestation(await self._call(_attest_request(chain_id, node, nonce)))

    async def sign_receipt(self, receipt: Receipt) -> bytes:
        return _signature(await self._call(_sign_request(receipt)))

    async def sign_receipts(self, receipts: list[Receipt]) -> list[bytes | AttesterRefused]:
        """One round trip for many receipts: each signature, or the refusal of that receipt."""
        answer = await self._call({"op": "sign_receipts", "receipts": [r.to_json() for r in receipts]})
        signatures, errors = answer.get("signatures"), answer.get("errors")
        if not isinstance(signatures, list) or not isinstance(errors, list) or len(signatures) != len(receipts):
            raise AttesterUnavailable("the attester's sign_receipts answer is malformed")
        return [
            AttesterRefused(str(error)) if error is not None else _signature({"signature": signature})
            for signature, error in zip(signatures, errors, strict=True)
        ]

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def __aenter__(self) -> AsyncAttesterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        frame = encode_frame(request)
        async with self._slots:
            if self.timeout is None:
                body = await self._round_trip(frame)
            else:
                try:
                    async with asyncio.timeout(self.timeout):
                        body = await self._round_trip(frame)
                except TimeoutError:
                    raise AttesterUnavailable(
                        f"the attester on {self.path} did not answer in {self.timeout} s"
                    ) from None
        return _answer(body)

    async def _round_trip(self, frame: bytes) -> bytes:
        """On a pooled connection (retried once on a fresh one if it broke) or a fresh one."""
        if self._idle:
            conn = self._idle.pop()
            try:
                body = await self._use(conn, frame)
            except (OSError, _Broken):
                pass  # closed by the other side while idle: fall through to a fresh connection
            else:
                return body
        try:
            reader, writer = await asyncio.open_unix_connection(self.path)
        except OSError as exc:
            raise AttesterUnavailable(f"cannot connect to the attester on {self.path}: {exc}") from exc
        try:
            return await self._use(_AsyncConnection(reader, writer), frame)
        except (OSError, _Broken) as exc:
            raise AttesterUnavailable(f"the attester on {self.path} is unavailable: {exc}") from exc

    async def _use(self, conn: _AsyncConnection, frame: bytes) -> bytes:
        # Back to the pool only after a complete exchange: a failed or cancelled one leaves the stream
        # at an unknown offset, so that connection is closed.
        try:
            body = await conn.exchange(frame)
        except BaseException:
            conn.close()
            raise
        self._idle.append(conn)
        return body
