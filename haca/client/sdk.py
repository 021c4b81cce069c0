"""`haca.Client` and `haca.AsyncClient`: pay for inferences, check receipts, follow settlement.

Both drive the same flows (haca.client.core, haca.client.flows): `Client` does each step inline,
`AsyncClient` awaits its HTTP requests and runs chain reads and proof checks in a worker thread,
so that no method blocks the event loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Unpack

import httpx

from haca.client.batch import BatchInclusion
from haca.client.chain import ChainClient, TxOutcome
from haca.client.config import ClientConfig, KeyStore, connect, resolve_home
from haca.client.core import ClientCore
from haca.client.errors import HacaError, NodeError
from haca.client.flows import Flow, T, run_async, run_sync
from haca.client.results import (
    AsyncLlmStream,
    FetchedOutput,
    InferenceResult,
    LlmOptions,
    LlmParams,
    LlmResult,
    LlmStream,
    Messages,
    ReceiptStatus,
)
from haca.client.tee import ReceiptVerification
from haca.crypto.keys import PrivateKey
from haca.types.inference import MsgDeposit, MsgWithdraw
from haca.types.modes import Mode
from haca.types.receipt import Receipt, SignedReceipt

__all__ = [
    "AsyncClient",
    "AsyncLlmStream",
    "Client",
    "InferenceResult",
    "LlmOptions",
    "LlmResult",
    "LlmStream",
    "Messages",
    "NodeError",
]


class Client(ClientCore):
    """Synchronous client. `Client.from_home()` reads a CLI home (config + keys)."""

    def __init__(
        self, node_url: str, key: PrivateKey, chain: ChainClient, timeout: float = 30.0, node_address: str | None = None
    ) -> None:
        super().__init__(node_url, key, chain, node_address)
        self.http = httpx.Client(timeout=timeout)

    @classmethod
    def from_home(cls, home: Path | str | None = None, key: str | None = None, node_url: str | None = None) -> Client:
        return _from_home(cls, home, key, node_url)

    def _run(self, flow: Flow[T]) -> T:
        return run_sync(self.http, flow)

    def close(self) -> None:
        self.http.close()
        self.chain.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def infer(self, model: str, input: Any, mode: str = Mode.VANILLA, max_fee: int | None = None) -> InferenceResult:
        """Run `model` on `input`, paying the node's quote when it is at most `max_fee` (default:
        at most the price published on chain); the receipt is checked before returning."""
        return self._run(self._infer_flow(model, input, mode, max_fee))

    def chat(
        self, model: str, messages: Messages, options: LlmOptions | None = None, **params: Unpack[LlmParams]
    ) -> LlmResult:
        """A chat completion from `model` (in `options.mode`, default the node's preferred one), paid
        with an authorisation for at most what it may cost (within `max_fee`, or by default at the
        model's per-token prices on chain); the receipt is checked against the text before returning.
        The options (LlmOptions) may be given as one, or as keywords: `chat(m, msgs, max_tokens=8)`."""
        return self._run(self._llm_flow("chat", model, messages, LlmOptions.of(options, params), False))

    def completion(
        self, model: str, prompt: str, options: LlmOptions | None = None, **params: Unpack[LlmParams]
    ) -> LlmResult:
        """A text completion of `prompt`; as `chat`."""
        return self._run(self._llm_flow("completion", model, prompt, LlmOptions.of(options, params), False))

    def chat_stream(
        self, model: str, messages: Messages, options: LlmOptions | None = None, **params: Unpack[LlmParams]
    ) -> LlmStream:
        """`chat`, streamed: iterate the returned LlmStream for the text pieces as they come; its
        `result` is set (verified from the last chunk's receipt) once the stream is exhausted."""
        streamed = self._run(self._llm_flow("chat", model, messages, LlmOptions.of(options, params), True))
        return LlmStream(streamed.response, streamed.kind, streamed.finish)

    def completion_stream(
        self, model: str, prompt: str, options: LlmOptions | None = None, **params: Unpack[LlmParams]
    ) -> LlmStream:
        """`completion`, streamed; as `chat_stream`."""
        streamed = self._run(self._llm_flow("completion", model, prompt, LlmOptions.of(options, params), True))
        return LlmStream(streamed.response, streamed.kind, streamed.finish)

    def node_receipt(self, receipt_id: str) -> dict[str, Any]:
        """The node's record of a receipt (NotFound if it has none)."""
        return self._run(self._node_receipt_flow(receipt_id))

    def receipt_status(self, receipt_id: str, receipt: Receipt | None = None) -> ReceiptStatus:
        """Where the receipt stands: the chain's settlement record if it settled alone, else pending.
        A receipt settled in a batch has no record of its own, only its request's mark (found
        with the receipt's client and request id): pass `receipt` to find it."""
        return self._run(self._receipt_status_flow(receipt_id, receipt))

    def wait_settled(self, receipt_id: str, timeout: float = 60.0) -> ReceiptStatus:
        return self._run(self._wait_settled_flow(receipt_id, timeout))

    def verify_receipt(self, receipt: str | SignedReceipt) -> ReceiptVerification:
        """Re-verify a receipt (by id: fetched from the node) against proven chain state: the
        enclave key's attestation and standing, the policy, the signature (see haca.client.tee);
        zkml, its proof from the chain's settlement tx (else from the node) (see haca.client.zk)."""
        return self._run(self._verify_flow(receipt))

    def prove_batched(self, receipt: str | SignedReceipt) -> BatchInclusion:
        """Prove, from the chain alone, that a receipt settled in a batch (haca.client.batch)."""
        return self._run(self._prove_batched_flow(receipt))

    def wait_verified(self, receipt_id: str, timeout: float = 60.0) -> ReceiptVerification:
        """Wait for the chain to settle the receipt, then verify it locally."""
        return self._run(self._wait_verified_flow(receipt_id, timeout))

    def node_address(self) -> str:
        """The node's account: from the client's config, else as the node reports it."""
        return self._run(self._node_address_flow())

    def fetch_output(self, request_id: str) -> FetchedOutput:
        """The output of a request this client paid for, from the node again (its answer was lost
        on the way): checked against the receipt, which `wait_verified` then checks on chain."""
        return self._run(self._output_flow(request_id))

    def deposit(self, amount: int, node: str | None = None) -> TxOutcome:
        """Escrow `amount` for `node` (default: this client's node); only that node is paid from it."""
        return self._run(self._escrow_msg_flow(MsgDeposit, amount, node))

    def withdraw(self, amount: int, node: str | None = None) -> TxOutcome:
        return self._run(self._escrow_msg_flow(MsgWithdraw, amount, node))

    def escrow(self, node: str | None = None) -> int:
        """What this client holds in escrow for `node` (default: this client's node)."""
        return self._run(self._escrow_flow(node))

    def create_api_key(
        self, node: str, cap: int, expires_in: int, nonce: int | None = None, max_per_request: int = 0
    ) -> str:
        """A bearer API key for `node`: at most `cap` in all and `max_per_request` for one request
        (0: the cap only), for `expires_in` blocks; revocable on chain by `nonce`."""
        return self._run(self._api_key_flow(node, cap, expires_in, nonce, max_per_request))


class AsyncClient(ClientCore):
    """asyncio client with Client's methods, each a coroutine that never blocks the event loop."""

    def __init__(
        self, node_url: str, key: PrivateKey, chain: ChainClient, timeout: float = 30.0, node_address: str | None = None
    ) -> None:
        super().__init__(node_url, key, chain, node_address)
        self.http = httpx.AsyncClient(timeout=timeout)

    @classmethod
    def from_home(
        cls, home: Path | str | None = None, key: str | None = None, node_url: str | None = None
    ) -> AsyncClient:
        return _from_home(cls, home, key, node_url)

    async def _run(self, flow: Flow[T]) -> T:
        return await run_async(self.http, flow)

    async def aclose(self) -> None:
        await self.http.aclose()
        self.chain.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def infer(
        self, model: str, input: Any, mode: str = Mode.VANILLA, max_fee: int | None = None
    ) -> InferenceResult:
        """As Client.infer."""
        return await self._run(self._infer_flow(model, input, mode, max_fee))

    async def chat(
        self, model: str, messages: Messages, options: LlmOptions | None = None, **params: Unpack[LlmParams]
    ) -> LlmResult:
        """As Client.chat."""
        return await self._run(self._llm_flow("chat", model, messages, LlmOptions.of(options, params), False))

    async def completion(
        self, model: str, prompt: str, options: LlmOptions | None = None, **params: Unpack[LlmParams]
    ) -> LlmResult:
        """As Client.completion."""
        return await self._run(self._llm_flow("completion", model, prompt, LlmOptions.of(options, params), False))

    async def chat_stream(
        self, model: str, messages: Messages, options: LlmOptions | None = None, **params: Unpack[LlmParams]
    ) -> AsyncLlmStream:
        """As Client.chat_stream: `async for piece in await client.chat_stream(...)`, then `.result`."""
        streamed = await self._run(self._llm_flow("chat", model, messages, LlmOptions.of(options, params), True))
        return AsyncLlmStream(streamed.response, streamed.kind, streamed.finish)

    async def completion_stream(
        self, model: str, prompt: str, options: LlmOptions | None = None, **params: Unpack[LlmParams]
    ) -> AsyncLlmStream:
        """As Client.completion_stream."""
        streamed = await self._run(self._llm_flow("completion", model, prompt, LlmOptions.of(options, params), True))
        return AsyncLlmStream(streamed.response, streamed.kind, streamed.finish)

    async def node_receipt(self, receipt_id: str) -> dict[str, Any]:
        """As Client.node_receipt."""
        return await self._run(self._node_receipt_flow(receipt_id))

    async def receipt_status(self, receipt_id: str, receipt: Receipt | None = None) -> ReceiptStatus:
        """As Client.receipt_status (its chain reads in a worker thread)."""
        return await self._run(self._receipt_status_flow(receipt_id, receipt))

    async def wait_settled(self, receipt_id: str, timeout: float = 60.0) -> ReceiptStatus:
        """As Client.wait_settled."""
        return await self._run(self._wait_settled_flow(receipt_id, timeout))

    async def verify_receipt(self, receipt: str | SignedReceipt) -> ReceiptVerification:
        """As Client.verify_receipt (the chain reads and proofs run in a worker thread)."""
        return await self._run(self._verify_flow(receipt))

    async def prove_batched(self, receipt: str | SignedReceipt) -> BatchInclusion:
        """As Client.prove_batched."""
        return await self._run(self._prove_batched_flow(receipt))

    async def wait_verified(self, receipt_id: str, timeout: float = 60.0) -> ReceiptVerification:
        """As Client.wait_verified."""
        return await self._run(self._wait_verified_flow(receipt_id, timeout))

    async def node_address(self) -> str:
        """As Client.node_address."""
        return await self._run(self._node_address_flow())

    async def fetch_output(self, request_id: str) -> FetchedOutput:
        """As Client.fetch_output."""
        return await self._run(self._output_flow(request_id))

    async def deposit(self, amount: int, node: str | None = None) -> TxOutcome:
        """As Client.deposit."""
        return await self._run(self._escrow_msg_flow(MsgDeposit, amount, node))

    async def withdraw(self, amount: int, node: str | None = None) -> TxOutcome:
        """As Client.withdraw."""
        return await self._run(self._escrow_msg_flow(MsgWithdraw, amount, node))

    async def escrow(self, node: str | None = None) -> int:
        """As Client.escrow."""
        return await self._run(self._escrow_flow(node))

    async def create_api_key(
        self, node: str, cap: int, expires_in: int, nonce: int | None = None, max_per_request: int = 0
    ) -> str:
        """As Client.create_api_key."""
        return await self._run(self._api_key_flow(node, cap, expires_in, nonce, max_per_request))


def _from_home(cls: type[Any], home: Path | str | None, key: str | None, node_url: str | None) -> Any:
    """A client of `cls` from a CLI home: its config's first node (or `node_url`), its key, its chain."""
    resolved = resolve_home(home)
    config = ClientConfig.load(resolved)
    stored = KeyStore(resolved).get(key or config.default_key)
    nodes = config.extra.get("nodes") or []
    url = node_url or (nodes[0]["url"] if nodes else "")
    if not url:
        raise HacaError("no node URL: pass node_url or run a devnet that lists its nodes in the config")
    address = next((n.get("address") for n in nodes if n.get("url", "").rstrip("/") == url.rstrip("/")), None)
    client = cls(url, stored.key, connect(config), node_address=address)
    srs = config.extra.get("srs_dir")
    client.srs_dir = Path(srs) if srs else None
    return client
