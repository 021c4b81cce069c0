"""The dev enclave served on a Unix-domain socket, for the node's `tee` mode.

Protocol: each message is a frame of a 4-byte big-endian length then that many bytes of UTF-8 JSON,
one object. A connection carries any number of request/response pairs, answered in order:

- ``{"op": "key"}`` → ``{"address": "0x…", "format": "dev", "measurement": hex, "dev": true, "label": …}``
- ``{"op": "attest", "chain_id": str, "nonce": hex}`` → ``{"format": "dev", "evidence": base64,
  "endorsements": base64, "report_data": hex}``
- ``{"op": "sign_receipt", "receipt": Receipt.to_json()}`` → ``{"signature": "0x…"}``
- ``{"op": "sign_receipts", "receipts": [Receipt.to_json(), …]}`` (1 to 256) → ``{"signatures": ["0x…" or
  null, …], "errors": [null or reason, …]}``
- ``{"op": "sign_batch", "chain_id": str, "node": "0x…", "batch": MsgSettleBatch.to_json()}`` → ``{"signature":
  "0x…"}``: the enclave's signature over the batch's ReceiptBatch (root of the receipts it lists)

A request that fails is answered ``{"error": reason}`` and the connection stays usable; a frame
longer than `MAX_FRAME` is answered with an error and the connection closed (its end cannot be
found without reading it). Requests are handled synchronously in `data_received`: every operation
is a few tens of microseconds of CPU, so a coroutine or thread hop per request would cost more than
the work. The socket file is made 0600 before it listens.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import structlog

from haca.attester.enclave import DevEnclave
from haca.proofs.tee.binding import key_binding
from haca.proofs.tee.dev import DEV_LABEL
from haca.types import fields
from haca.types.batch import MsgSettleBatch
from haca.types.receipt import Receipt

MAX_FRAME = 1 << 20  # 1 MiB, either direction
HEADER_SIZE = 4

log = structlog.get_logger("haca.attester")


MAX_BATCH = 256  # receipts in one sign_receipts request


def encode_frame(message: dict[str, Any]) -> bytes:
    body = orjson.dumps(message)
    return len(body).to_bytes(HEADER_SIZE, "big") + body


class RequestHandler:
    """Turns one decoded request into its response; errors become ``{"error": reason}``."""

    def __init__(self, enclave: DevEnclave) -> None:
        self.enclave = enclave
        self._key_answer = {
            "address": enclave.address,
            "format": "dev",
            "measurement": enclave.measurement.hex(),
            "dev": True,
            "label": DEV_LABEL,
        }
        self._ops: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "key": self._key,
            "attest": self._attest,
            "sign_receipt": self._sign_receipt,
            "sign_receipts": self._sign_receipts,
            "sign_batch": self._sign_batch,
        }

    def handle(self, body: bytes | bytearray | memoryview) -> dict[str, Any]:
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return self._refuse("?", f"the frame is not JSON: {exc}")
        if not isinstance(request, dict):
            return self._refuse("?", "a request is a JSON object")
        op = request.get("op")
        if not isinstance(op, str) or op not in self._ops:
            return self._refuse(str(op), f"unknown op {op!r}; known: {sorted(self._ops)}")
        handler = self._ops[op]
        try:
            return handler(request)
        except (ValueError, TypeError, KeyError) as exc:
            return self._refuse(op, str(exc) or type(exc).__name__)
        except Exception as exc:  # one bad request must not take the connection down
            log.exception("attester.failed", op=op)
            return {"error": f"internal error: {type(exc).__name__}: {exc}"}

    @staticmethod
    def _refuse(op: str, reason: str) -> dict[str, Any]:
        log.warning("attester.refused", op=op, reason=reason)
        return {"error": reason}

    def _key(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._key_answer

    def _attest(self, request: dict[str, Any]) -> dict[str, Any]:
        chain_id, nonce_hex, node = request.get("chain_id"), request.get("nonce"), request.get("node")
        if not isinstance(chain_id, str) or not chain_id:
            raise ValueError("attest needs chain_id, a non-empty string")
        if not isinstance(node, str):
            raise ValueError("attest needs node, the address of the node registering the key")
        node = fields.address(node, "node")
        if not isinstance(nonce_hex, str):
            raise ValueError("attest needs nonce, hex text")
        try:
            nonce = bytes.fromhex(nonce_hex.removeprefix("0x"))
        except ValueError:
            raise ValueError("nonce is not hex") from None
        att = self.enclave.attest(chain_id, node, nonce)
        log.info("attester.attested", chain_id=chain_id, nonce=nonce.hex(), address=self.enclave.address)
        return {
            "format": att.format,
            "evidence": base64.b64encode(att.evidence).decode(),
            "endorsements": base64.b64encode(att.endorsements).decode(),
            "report_data": key_binding(chain_id, node, self.enclave.address, nonce).hex(),
        }

    def _sign_receipt(self, request: dict[str, Any]) -> dict[str, Any]:
        receipt = Receipt.from_json(request.get("receipt"))
        return {"signature": "0x" + self.enclave.sign_receipt(receipt).hex()}

    def _sign_batch(self, request: dict[str, Any]) -> dict[str, Any]:
        chain_id, node = request.get("chain_id"), request.get("node")
        if not isinstance(chain_id, str) or not isinstance(node, str):
            raise ValueError("sign_batch needs chain_id and node")
        batch = MsgSettleBatch.from_json(request.get("batch"))  # type: ignore[arg-type]
        signature = self.enclave.sign_batch(chain_id, fields.address(node, "node"), batch)
        return {"signature": "0x" + signature.hex()}

    def _sign_receipts(self, request: dict[str, Any]) -> dict[str, Any]:
        """Many receipts in one frame (a busy node coalesces them): one wake-up of this process
        per batch, not per receipt. Each is refused or signed on its own."""
        receipts = request.get("receipts")
        if not isinstance(receipts, list) or not 1 <= len(receipts) <= MAX_BATCH:
            raise ValueError(f"sign_receipts needs receipts, a list of 1 to {MAX_BATCH}")
        signatures: list[str | None] = []
        errors: list[str | None] = []
        for doc in receipts:
            try:
                signatures.append("0x" + self.enclave.sign_receipt(Receipt.from_json(doc)).hex())
                errors.append(None)
            except (ValueError, TypeError, KeyError) as exc:
                signatures.append(None)
                errors.append(str(exc) or type(exc).__name__)
        return {"signatures": signatures, "errors": errors}


class _Connection(asyncio.Protocol):
    """One client connection: frames in, frames out, in order."""

    def __init__(self, handler: RequestHandler) -> None:
        self._handler = handler
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def pause_writing(self) -> None:
        # A client that sends but does not read stops being read from.
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        buffer = self._buffer
        buffer += data
        out: list[bytes] = []
        start = 0
        while len(buffer) - start >= HEADER_SIZE:
            size = int.from_bytes(buffer[start : start + HEADER_SIZE], "big")
            if size > MAX_FRAME:
                log.warning("attester.frame_too_large", size=size, limit=MAX_FRAME)
                out.append(encode_frame({"error": f"frame of {size} bytes refused (at most {MAX_FRAME})"}))
                transport.writelines(out)
                transport.close()
                self._transport = None
                buffer.clear()
                return
            end = start + HEADER_SIZE + size
            if len(buffer) < end:
                break
            with memoryview(buffer) as view:
                out.append(encode_frame(self._handler.handle(view[start + HEADER_SIZE : end])))
            start = end
        if start:
            del buffer[:start]
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))


def _bind_private_socket(path: Path) -> socket.socket:
    """A Unix socket bound at `path` with mode 0600, not yet listening (so nobody connects before the
    chmod). A stale socket file left by a dead server is replaced; a live one is an error."""
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
        else:
            raise RuntimeError(f"an attester is already serving on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class AttesterServer:
    """`enclave` served on the Unix socket `path` (see the module doc for the protocol)."""

    def __init__(self, enclave: DevEnclave, path: Path) -> None:
        self.enclave = enclave
        self.path = Path(path)
        self.handler = RequestHandler(enclave)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        sock = _bind_private_socket(self.path)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Connection(self.handler), sock=sock, backlog=128)
        log.info(
            "attester.listening",
            socket=str(self.path),
            address=self.enclave.address,
            measurement=self.enclave.measurement.hex(),
            debug=self.enclave.debug,
            label=DEV_LABEL,
        )

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        try:
            await self._server.serve_forever()
        finally:
            await self.close()

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            log.info("attester.closed", socket=str(self.path))

    async def __aenter__(self) -> AttesterServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
