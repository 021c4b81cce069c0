"""`haca.Client` and `haca.AsyncClient`: pay for inferences, check receipts, follow settlement.

Both share the protocol logic in haca.client.payment; they differ only in HTTP transport.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from haca.client.chain import ChainClient, TxOutcome
from haca.client.config import ClientConfig, KeyStore, connect, resolve_home
from haca.client.errors import HacaError, NotFound, QueryFailed
from haca.client.payment import (
    PaymentOffer,
    PaymentRequiredError,
    ReceiptInvalid,
    create_api_key,
    sign_payment,
    verify_answer,
)
from haca.crypto.keys import PrivateKey
from haca.types.inference import MsgDeposit, MsgWithdraw
from haca.types.payment import PaymentAuthorization
from haca.types.receipt import SignedReceipt

DEFAULT_MAX_FEE = 10**18


class NodeError(HacaError):
    """The node refused the request (4xx/5xx other than 402)."""

    code = "node_error"

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InferenceResult:
    output: dict[str, Any]  # {name: {"dtype", "shape", "data"}}
    receipt: SignedReceipt
    status: str
    node_url: str

    @property
    def receipt_id(self) -> str:
        return self.receipt.id

    def to_json(self) -> dict[str, Any]:
        return {"output": self.output, "receipt": self.receipt.to_json(), "status": self.status}


class _Base:
    def __init__(self, node_url: str, key: PrivateKey, chain: ChainClient) -> None:
        self.node_url = node_url.rstrip("/")
        self.key = key
        self.chain = chain

    def _manifest(self, offer: PaymentOffer) -> dict[str, Any]:
        manifest = self.chain.query("/registry/model", offer.model.encode())
        if manifest["model_id"] != offer.model_id:
            raise ReceiptInvalid(f"node offers {offer.model_id}, the chain's {offer.model!r} is {manifest['model_id']}")
        return manifest

    def _offer(self, first: httpx.Response) -> PaymentOffer:
        """The node's answer to an unpaid request must be a 402 with its payment requirements."""
        if first.status_code != 402:
            raise (
                self._error(first) if first.status_code >= 400 else PaymentRequiredError("node did not ask to be paid")
            )
        return PaymentOffer.from_402(first.json())

    def _result(
        self,
        paid: httpx.Response,
        input: Any,
        manifest: dict[str, Any],
        offer: PaymentOffer,
        auth: PaymentAuthorization,
    ) -> InferenceResult:
        """Check the paid answer's receipt locally before handing it out."""
        if paid.status_code != 200:
            raise self._error(paid)
        answer = paid.json()
        signed = verify_answer(answer, input, manifest["input_schema"], offer.node, auth)
        return InferenceResult(answer["output"], signed, answer.get("status", "pending"), self.node_url)

    def _error(self, response: httpx.Response) -> HacaError:
        try:
            error = response.json()["error"]
            message = error if isinstance(error, str) else error["message"]  # x402 bodies carry a string
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        if response.status_code == 402:
            return PaymentRequiredError(f"node refused the payment: {message}")
        return NodeError(f"node answered {response.status_code}: {message}", response.status_code)

    def receipt_status(self, receipt_id: str) -> dict[str, Any]:
        """The chain's settlement record if settled, else {"status": "pending"}."""
        try:
            return self.chain.query("/inference/receipt", receipt_id.encode())
        except QueryFailed:
            return {"receipt_id": receipt_id, "status": "pending"}

    def deposit(self, amount: int) -> TxOutcome:
        outcome = self.chain.send_msgs(self.key, (MsgDeposit(amount),))
        assert isinstance(outcome, TxOutcome)
        return outcome

    def withdraw(self, amount: int) -> TxOutcome:
        outcome = self.chain.send_msgs(self.key, (MsgWithdraw(amount),))
        assert isinstance(outcome, TxOutcome)
        return outcome

    def escrow(self) -> int:
        return int(self.chain.query("/inference/escrow", self.key.address.encode())["escrow"])

    def create_api_key(self, node: str, cap: int, expires_in: int, nonce: int | None = None) -> str:
        expiry = self.chain.rpc.height() + expires_in
        return create_api_key(self.key, self.chain.chain_id, node, cap, expiry, nonce if nonce is not None else expiry)


class Client(_Base):
    """Synchronous client. `Client.from_home()` reads a CLI home (config + keys)."""

    def __init__(self, node_url: str, key: PrivateKey, chain: ChainClient, timeout: float = 30.0) -> None:
        super().__init__(node_url, key, chain)
        self.http = httpx.Client(timeout=timeout)

    @classmethod
    def from_home(cls, home: Path | str | None = None, key: str | None = None, node_url: str | None = None) -> Client:
        node_url, stored, chain = _from_home(home, key, node_url)
        return cls(node_url, stored, chain)

    def close(self) -> None:
        self.http.close()
        self.chain.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def infer(self, model: str, input: Any, mode: str = "vanilla", max_fee: int = DEFAULT_MAX_FEE) -> InferenceResult:
        """Run `model` on `input`, paying up to `max_fee`; the receipt is checked before returning."""
        body = {"model": model, "mode": mode, "input": input}
        offer = self._offer(self.http.post(f"{self.node_url}/v1/infer", json=body))
        manifest = self._manifest(offer)
        auth, header = sign_payment(self.key, offer, max_fee)
        paid = self.http.post(f"{self.node_url}/v1/infer", json=body, headers={"X-PAYMENT": header})
        return self._result(paid, input, manifest, offer, auth)

    def node_receipt(self, receipt_id: str) -> dict[str, Any]:
        response = self.http.get(f"{self.node_url}/v1/receipts/{receipt_id}")
        if response.status_code == 404:
            raise NotFound(f"node has no receipt {receipt_id}")
        if response.status_code != 200:
            raise self._error(response)
        answer: dict[str, Any] = response.json()
        return answer

    def wait_settled(self, receipt_id: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            record = self.receipt_status(receipt_id)
            if record["status"] != "pending":
                return record
            if time.monotonic() > deadline:
                raise HacaError(f"receipt {receipt_id} not settled within {timeout:.0f}s")
            time.sleep(0.3)


class AsyncClient(_Base):
    """asyncio client with the same behaviour; chain calls run in a worker thread."""

    def __init__(self, node_url: str, key: PrivateKey, chain: ChainClient, timeout: float = 30.0) -> None:
        super().__init__(node_url, key, chain)
        self.http = httpx.AsyncClient(timeout=timeout)

    @classmethod
    def from_home(
        cls, home: Path | str | None = None, key: str | None = None, node_url: str | None = None
    ) -> AsyncClient:
        node_url, stored, chain = _from_home(home, key, node_url)
        return cls(node_url, stored, chain)

    async def aclose(self) -> None:
        await self.http.aclose()
        self.chain.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def infer(
        self, model: str, input: Any, mode: str = "vanilla", max_fee: int = DEFAULT_MAX_FEE
    ) -> InferenceResult:
        body = {"model": model, "mode": mode, "input": input}
        offer = self._offer(await self.http.post(f"{self.node_url}/v1/infer", json=body))
        manifest = await asyncio.to_thread(self._manifest, offer)
        auth, header = sign_payment(self.key, offer, max_fee)
        paid = await self.http.post(f"{self.node_url}/v1/infer", json=body, headers={"X-PAYMENT": header})
        return self._result(paid, input, manifest, offer, auth)

    async def wait_settled(self, receipt_id: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            record = await asyncio.to_thread(self.receipt_status, receipt_id)
            if record["status"] != "pending":
                return record
            if time.monotonic() > deadline:
                raise HacaError(f"receipt {receipt_id} not settled within {timeout:.0f}s")
            await asyncio.sleep(0.3)


def _from_home(home: Path | str | None, key: str | None, node_url: str | None) -> tuple[str, PrivateKey, ChainClient]:
    resolved = resolve_home(home)
    config = ClientConfig.load(resolved)
    stored = KeyStore(resolved).get(key or config.default_key)
    nodes = config.extra.get("nodes") or []
    url = node_url or (nodes[0]["url"] if nodes else "")
    if not url:
        raise HacaError("no node URL: pass node_url or run a devnet that lists its nodes in the config")
    return url, stored.key, connect(config)
