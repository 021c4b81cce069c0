"""The enclave served on a Unix-domain socket to its host (the inference node).

Framing: a 4-byte big-endian length, then that many bytes of UTF-8 JSON (one object). A connection
carries one request at a time; requests are answered in order.

- ``{"op": "key"}`` → ``{"address", "platform", "measurement": hex, "dev": bool, "gpu": name or null,
  "models": [model id, …]}``
- ``{"op": "attest", "chain_id", "node", "nonce": hex}`` → ``{"format", "evidence": base64,
  "endorsements": base64, "report_data": hex, "gpus": [{"format", "report": base64, "chain": base64}]}``
- ``{"op": "load", "model_id", "kind": "onnx"|"gguf", "context", "slots"}`` → ``{"model_id", "kind",
  "provider"}``: the enclave fetches and hashes the bytes itself (`haca.enclave.models`)
- ``{"op": "infer", "model_id", "input": <the request's input JSON>, "terms": Terms}`` →
  ``{"output": tensors, "receipt": SignedReceipt}``
- ``{"op": "generate", "model_id", "kind": "chat"|"completion"|"response", "body": <the OpenAI request body>,
  "terms": Terms, "seconds": float}`` → any number of ``{"text": piece}`` frames, then ``{"outcome":
  {"text", "finish_reason", "prompt_tokens", "completion_tokens", ["logprobs"]}, "receipt": SignedReceipt}``. While
  it streams, the host may send ``{"op": "cancel"}``: generation stops at the next token and the
  receipt (prompt + tokens produced) still comes.
- ``{"op": "sign_batch", "chain_id", "node", "batch": MsgSettleBatch}`` → ``{"signature": "0x…"}``, only
  over receipts this enclave produced.

A refusal is ``{"error": reason, "code": code}`` (code: ``refused``, ``invalid_input``,
``invalid_request`` (with ``param``), ``context_exceeded``, ``budget_exhausted``, ``internal``); the
connection stays usable. There is no op that signs what the host built.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import structlog

from haca.enclave.runtime import Enclave, EnclaveRefused, InputRefused, Terms
from haca.runtime.llm import DEFAULT_CONTEXT, BudgetExhausted, ContextExceeded, LlmModel
from haca.types import fields
from haca.types.batch import MsgSettleBatch
from haca.types.llm import LlmRequestError
from haca.types.tensor import tensors_to_json

INLINE_LIMIT_S = 0.0005  # tensor models faster than this run on the event loop, not in the pool
MAX_FRAME = 8 << 20  # 8 MiB either way: a node's largest body (1 MiB) as JSON, with room
HEADER_SIZE = 4

log = structlog.get_logger("haca.enclave")


def encode_frame(message: dict[str, Any]) -> bytes:
    body = orjson.dumps(message)
    return len(body).to_bytes(HEADER_SIZE, "big") + body


def refusal(exc: Exception) -> dict[str, Any]:
    """The answer for a request that failed: its reason and a code the host maps to HTTP."""
    if isinstance(exc, LlmRequestError):
        return {"error": str(exc), "code": "invalid_request", "param": exc.param}
    if isinstance(exc, ContextExceeded):
        return {"error": str(exc), "code": "context_exceeded"}
    if isinstance(exc, BudgetExhausted):
        return {"error": str(exc), "code": "budget_exhausted"}
    if isinstance(exc, InputRefused):
        return {"error": str(exc), "code": "invalid_input"}
    if isinstance(exc, (EnclaveRefused, ValueError, TypeError, KeyError)):
        return {"error": str(exc) or type(exc).__name__, "code": "refused"}
    return {"error": f"internal error: {type(exc).__name__}: {exc}", "code": "internal"}


class EnclaveServer:
    """`enclave` served on the Unix socket `path` (see the module doc for the protocol)."""

    def __init__(self, enclave: Enclave, path: Path, workers: int = 4) -> None:
        self.enclave = enclave
        self.path = Path(path)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()  # closed with the server, not left to the GC
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="enclave")
        # llama.cpp keeps a team of compute threads per calling thread: each LLM runs on its own
        # threads (one per slot), never on a shared pool (see haca.node.openai_api.Admission).
        self._llm_threads: dict[str, ThreadPoolExecutor] = {}
        self._slowest: dict[str, float] = {}  # per tensor model: its slowest recent run (seconds)
        self._ops: dict[str, Callable[[dict[str, Any]], Any]] = {
            "key": self._key,
            "attest": self._attest,
            "load": self._load,
            "sign_batch": self._sign_batch,
        }

    # --- ops answered on the event loop (microseconds) -----------------------------------------------

    def _key(self, request: dict[str, Any]) -> dict[str, Any]:
        enclave = self.enclave
        return {
            "address": enclave.address,
            "platform": enclave.platform.name,
            "measurement": enclave.measurement.hex(),
            "dev": enclave.platform.dev,
            "gpu": enclave.gpus.name if enclave.gpus is not None else None,
            "models": enclave.models.loaded,
        }

    def _attest(self, request: dict[str, Any]) -> dict[str, Any]:
        chain_id, node, nonce_hex = request.get("chain_id"), request.get("node"), request.get("nonce")
        if not isinstance(chain_id, str) or not isinstance(node, str) or not isinstance(nonce_hex, str):
            raise EnclaveRefused("attest needs chain_id, node and nonce (hex)")
        try:
            nonce = bytes.fromhex(nonce_hex.removeprefix("0x"))
        except ValueError:
            raise EnclaveRefused("nonce is not hex") from None
        bundle = self.enclave.attest(chain_id, node, nonce)
        log.info("enclave.attested", chain_id=chain_id, node=node, key=self.enclave.address, gpus=len(bundle.gpus))
        return {
            "format": bundle.cpu.format,
            "evidence": base64.b64encode(bundle.cpu.evidence).decode(),
            "endorsements": base64.b64encode(bundle.cpu.endorsements).decode(),
            "report_data": bundle.report_data.hex(),
            "gpus": [
                {
                    "format": g.format,
                    "report": base64.b64encode(g.report).decode(),
                    "chain": base64.b64encode(g.chain).decode(),
                }
                for g in bundle.gpus
            ],
        }

    def _load(self, request: dict[str, Any]) -> dict[str, Any]:
        model_id, kind = fields.model_id(request.get("model_id")), request.get("kind")
        context = fields.uint(request.get("context", DEFAULT_CONTEXT), "context", 32)
        slots = fields.uint(request.get("slots", 1), "slots", 8)
        loaded = self.enclave.load(model_id, str(kind), context or DEFAULT_CONTEXT, max(1, slots))
        if isinstance(loaded.runtime, LlmModel):
            self._llm_threads.setdefault(
                model_id, ThreadPoolExecutor(loaded.runtime.slots, thread_name_prefix="enclave-llm")
            )
        log.info("enclave.model_loaded", model_id=model_id, kind=loaded.kind)
        return {"model_id": model_id, "kind": loaded.kind, "provider": loaded.runtime.provider}

    def _sign_batch(self, request: dict[str, Any]) -> dict[str, Any]:
        chain_id, node = request.get("chain_id"), request.get("node")
        if not isinstance(chain_id, str) or not isinstance(node, str):
            raise EnclaveRefused("sign_batch needs chain_id and node")
        batch = MsgSettleBatch.from_json(request.get("batch"))  # type: ignore[arg-type]
        signature = self.enclave.sign_batch(chain_id, fields.address(node, "node"), batch)
        return {"signature": "0x" + signature.hex()}

    # --- ops that run a model ------------------------------------------------------------------------

    async def _infer(self, request: dict[str, Any]) -> dict[str, Any]:
        model_id, terms = fields.model_id(request.get("model_id")), Terms.from_json(request.get("terms"))
        raw = request.get("input")
        if self._slowest.get(model_id, INLINE_LIMIT_S) < INLINE_LIMIT_S:
            # a model that answers in well under a millisecond runs here: a thread hop costs more
            started = time.perf_counter()
            outputs, signed = self.enclave.infer(model_id, raw, terms)
        else:
            loop = asyncio.get_running_loop()
            started = time.perf_counter()
            outputs, signed = await loop.run_in_executor(self._pool, self.enclave.infer, model_id, raw, terms)
        self._note_time(model_id, time.perf_counter() - started)
        return {"output": tensors_to_json(outputs), "receipt": signed.to_json()}

    def _note_time(self, model_id: str, seconds: float) -> None:
        """The slowest of this model's recent requests (decaying), which decides where it runs."""
        self._slowest[model_id] = max(seconds, self._slowest.get(model_id, seconds) * 0.9)

    async def _generate(
        self, request: dict[str, Any], cancelled: threading.Event, send: Callable[[bytes], None]
    ) -> None:
        model_id, terms = fields.model_id(request.get("model_id")), Terms.from_json(request.get("terms"))
        kind, body, seconds = request.get("kind"), request.get("body"), request.get("seconds")
        if kind not in ("chat", "completion", "response"):
            raise EnclaveRefused("kind: expected chat, completion or response (the OpenAI API the body is for)")
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds <= 0:
            raise EnclaveRefused("seconds: expected a positive number (how long generation may run)")
        executor = self._llm_threads.get(model_id)
        if executor is None:
            raise EnclaveRefused(f"language model {model_id} is not loaded in this enclave")
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + float(seconds)

        def emit(piece: str) -> None:
            loop.call_soon_threadsafe(send, encode_frame({"text": piece}))

        outcome, signed = await loop.run_in_executor(
            executor,
            self.enclave.generate,
            model_id,
            body,
            kind,
            terms,
            emit,
            cancelled,
            deadline,
        )
        result = {
            "text": outcome.text,
            "finish_reason": outcome.finish_reason,
            "prompt_tokens": outcome.prompt_tokens,
            "completion_tokens": outcome.completion_tokens,
        }
        if outcome.logprobs is not None:
            result["logprobs"] = list(outcome.logprobs)
        send(encode_frame({"outcome": result, "receipt": signed.to_json()}))

    # --- connections ---------------------------------------------------------------------------------

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        requests: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        current: list[threading.Event] = []  # the cancel flags of generations in progress

        def send(frame: bytes) -> None:
            if not writer.is_closing():
                writer.write(frame)

        async def read_frames() -> None:
            """Frames in; a cancel goes to the generation in progress, anything else queues."""
            try:
                while True:
                    size = int.from_bytes(await reader.readexactly(HEADER_SIZE), "big")
                    if size > MAX_FRAME:
                        send(encode_frame({"error": f"frame of {size} bytes refused (at most {MAX_FRAME})"}))
                        break
                    body = await reader.readexactly(size)
                    try:
                        request = orjson.loads(body)
                    except orjson.JSONDecodeError as exc:
                        request = {"op": "?", "_error": f"the frame is not JSON: {exc}"}
                    if not isinstance(request, dict):
                        request = {"op": "?", "_error": "a request is a JSON object"}
                    if request.get("op") == "cancel":
                        for cancelled in current:
                            cancelled.set()
                        continue
                    requests.put_nowait(request)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                for cancelled in current:  # the host went away: stop generating for it
                    cancelled.set()
                requests.put_nowait(None)

        reading = asyncio.ensure_future(read_frames())
        try:
            while (request := await requests.get()) is not None:
                await self._answer(request, current, send)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            reading.cancel()
            with contextlib.suppress(BaseException):
                await reading
            with contextlib.suppress(Exception):
                writer.close()

    async def _answer(
        self, request: dict[str, Any], current: list[threading.Event], send: Callable[[bytes], None]
    ) -> None:
        op = request.get("op")
        try:
            if "_error" in request:
                raise EnclaveRefused(str(request["_error"]))
            if op == "infer":
                send(encode_frame(await self._infer(request)))
            elif op == "generate":
                cancelled = threading.Event()
                current.append(cancelled)
                try:
                    await self._generate(request, cancelled, send)
                finally:
                    current.remove(cancelled)
            elif isinstance(op, str) and op in self._ops:
                send(encode_frame(self._ops[op](request)))
            else:
                known = sorted([*self._ops, "infer", "generate", "cancel"])
                raise EnclaveRefused(f"unknown op {op!r}; known: {known}")
        except Exception as exc:  # one bad request must not take the connection down
            answer = refusal(exc)
            if answer["code"] == "internal":
                log.exception("enclave.failed", op=op)
            else:
                log.warning("enclave.refused", op=op, reason=answer["error"])
            send(encode_frame(answer))

    async def start(self) -> None:
        sock = bind_private_socket(self.path)
        self._server = await asyncio.start_unix_server(self._serve_connection, sock=sock, limit=MAX_FRAME + 64)
        log.info(
            "enclave.listening",
            socket=str(self.path),
            address=self.enclave.address,
            platform=self.enclave.platform.name,
            measurement=self.enclave.measurement.hex(),
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
            connections = list(self._connections)
            for task in connections:
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            log.info("enclave.closed", socket=str(self.path))

    async def __aenter__(self) -> EnclaveServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def bind_private_socket(path: Path) -> socket.socket:
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
            raise RuntimeError(f"an enclave is already serving on {path}")
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
