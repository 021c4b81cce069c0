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
    accept_fee,
    create_api_key,
    input_rows,
    sign_payment,
    verify_answer,
)
from haca.client.tee import ReceiptVerification, enclave_lookup, verify_tee_receipt
from haca.client.zk import proof_from_chain, verify_zkml_receipt
from haca.crypto.keys import PrivateKey
from haca.types.inference import MsgDeposit, MsgWithdraw
from haca.types.modes import Mode, Status
from haca.types.payment import PaymentAuthorization
from haca.types.receipt import SignedReceipt

TERMS_LAG_BLOCKS = 5  # how far the quoted terms' height may be from the chain's, either way


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
    def __init__(self, node_url: str, key: PrivateKey, chain: ChainClient, node_address: str | None = None) -> None:
        self.node_url = node_url.rstrip("/")
        self.key = key
        self.chain = chain
        self._node_address = node_address.lower() if node_address else None
        self.srs_dir: Path | None = None  # zkml: the network's genesis SRS files, to verify proofs locally

    def _terms(self, offer: PaymentOffer) -> dict[str, Any]:
        """The chain's terms for the offer: the manifest in effect at the quoted height (which
        must be the model the node names, and a height near the chain's own), for a node the
        chain has registered in that mode."""
        height = self.chain.rpc.height()
        if not height - TERMS_LAG_BLOCKS <= offer.terms_height <= height + TERMS_LAG_BLOCKS:
            raise PaymentRequiredError(
                f"node quotes the terms of height {offer.terms_height}; the chain is at {height}"
            )
        try:
            manifest = self.chain.query("/registry/model_in_effect", f"{offer.model_id}@{offer.terms_height}".encode())
            node = self.chain.query("/registry/node", offer.node.encode())
        except QueryFailed as exc:
            raise PaymentRequiredError(f"the node's offer is not backed by the chain: {exc}") from exc
        if manifest["name"] != offer.model:
            raise ReceiptInvalid(
                f"node offers {offer.model_id} as {offer.model!r}; the chain names it {manifest['name']!r}"
            )
        if offer.mode not in node["modes"]:
            raise PaymentRequiredError(f"node {offer.node} is not registered on chain for mode {offer.mode!r}")
        return manifest

    def _payment(self, input: Any, offer: PaymentOffer, max_fee: int | None) -> tuple[dict[str, Any], int]:
        manifest = self._terms(offer)
        return manifest, accept_fee(offer, input_rows(input, manifest["input_schema"]), max_fee, manifest)

    def _offer(self, first: httpx.Response, model: str, mode: str) -> PaymentOffer:
        """The node's answer to an unpaid request must be a 402 with its payment requirements."""
        if first.status_code != 402:
            raise (
                self._error(first) if first.status_code >= 400 else PaymentRequiredError("node did not ask to be paid")
            )
        return PaymentOffer.from_402(first.json(), model, mode)

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
        enclave = None
        if offer.mode == Mode.TEE:  # the key that signed must be one the chain attested for this node
            hint = answer.get("receipt", {}).get("height_hint") if isinstance(answer, dict) else None
            if not isinstance(hint, int):
                raise ReceiptInvalid("answer does not verify: the receipt has no height hint")
            enclave = enclave_lookup(self.chain, manifest["name"], hint)
        circuit = manifest.get("circuit") if offer.mode == Mode.ZKML else None
        signed = verify_answer(answer, input, manifest["input_schema"], offer.node, auth, enclave, circuit)
        return InferenceResult(answer["output"], signed, answer.get("status", Status.PENDING), self.node_url)

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
            return {"receipt_id": receipt_id, "status": Status.PENDING.value}

    def node_address(self) -> str:
        """The node's account: from the client's config, else as the node reports it."""
        if self._node_address is None:
            try:
                self._node_address = str(httpx.get(f"{self.node_url}/healthz", timeout=10).json()["node"]).lower()
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                raise NodeError(f"cannot learn the node's address from {self.node_url}/healthz: {exc}") from exc
        return self._node_address

    def deposit(self, amount: int, node: str | None = None) -> TxOutcome:
        """Escrow `amount` for `node` (default: this client's node); only that node is paid from it."""
        outcome = self.chain.send_msgs(self.key, (MsgDeposit(node or self.node_address(), amount),))
        assert isinstance(outcome, TxOutcome)
        return outcome

    def withdraw(self, amount: int, node: str | None = None) -> TxOutcome:
        outcome = self.chain.send_msgs(self.key, (MsgWithdraw(node or self.node_address(), amount),))
        assert isinstance(outcome, TxOutcome)
        return outcome

    def escrow(self, node: str | None = None) -> int:
        """What this client holds in escrow for `node` (default: this client's node)."""
        data = f"{self.key.address}/{node or self.node_address()}"
        return int(self.chain.query("/inference/escrow", data.encode())["escrow"])

    def create_api_key(self, node: str, cap: int, expires_in: int, nonce: int | None = None) -> str:
        expiry = self.chain.rpc.height() + expires_in
        return create_api_key(self.key, self.chain.chain_id, node, cap, expiry, nonce if nonce is not None else expiry)


class Client(_Base):
    """Synchronous client. `Client.from_home()` reads a CLI home (config + keys)."""

    def __init__(
        self,
        node_url: str,
        key: PrivateKey,
        chain: ChainClient,
        timeout: float = 30.0,
        node_address: str | None = None,
    ) -> None:
        super().__init__(node_url, key, chain, node_address)
        self.http = httpx.Client(timeout=timeout)

    @classmethod
    def from_home(cls, home: Path | str | None = None, key: str | None = None, node_url: str | None = None) -> Client:
        node_url, stored, chain, address, srs_dir = _from_home(home, key, node_url)
        client = cls(node_url, stored, chain, node_address=address)
        client.srs_dir = srs_dir
        return client

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
        probe = self.http.post(f"{self.node_url}/v1/infer", json={"model": model, "mode": mode})
        offer = self._offer(probe, model, mode)
        manifest, fee = self._payment(input, offer, max_fee)
        auth, header = sign_payment(self.key, offer, fee)
        body = {"model": model, "mode": mode, "input": input}
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
            if record["status"] != Status.PENDING:
                return record
            if time.monotonic() > deadline:
                raise HacaError(f"receipt {receipt_id} not settled within {timeout:.0f}s")
            time.sleep(0.3)

    def verify_receipt(self, receipt: str | SignedReceipt) -> ReceiptVerification:
        """Re-verify a receipt (by id: fetched from the node) against proven chain state: the
        enclave key's attestation and standing, the policy, the signature (see haca.client.tee)."""
        stored = None if isinstance(receipt, SignedReceipt) else self.node_receipt(receipt)
        signed = receipt if isinstance(receipt, SignedReceipt) else _checked_receipt(stored or {}, receipt)
        if signed.receipt.mode == Mode.ZKML:  # the proof from the chain's settlement tx, else from the node
            proof = proof_from_chain(self.chain, signed.id)
            if not proof:
                stored = stored or self.node_receipt(signed.id)
                proof = bytes.fromhex((stored.get("evidence") or "0x")[2:])
            return verify_zkml_receipt(self.chain, signed, proof, self.srs_dir)
        return verify_tee_receipt(self.chain, signed)

    def wait_verified(self, receipt_id: str, timeout: float = 60.0) -> ReceiptVerification:
        """Wait for the chain to settle the receipt, then verify it locally."""
        self.wait_settled(receipt_id, timeout)
        return self.verify_receipt(receipt_id)


class AsyncClient(_Base):
    """asyncio client with the same behaviour; chain calls run in a worker thread."""

    def __init__(
        self,
        node_url: str,
        key: PrivateKey,
        chain: ChainClient,
        timeout: float = 30.0,
        node_address: str | None = None,
    ) -> None:
        super().__init__(node_url, key, chain, node_address)
        self.http = httpx.AsyncClient(timeout=timeout)

    @classmethod
    def from_home(
        cls, home: Path | str | None = None, key: str | None = None, node_url: str | None = None
    ) -> AsyncClient:
        node_url, stored, chain, address, srs_dir = _from_home(home, key, node_url)
        client = cls(node_url, stored, chain, node_address=address)
        client.srs_dir = srs_dir
        return client

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
        probe = await self.http.post(f"{self.node_url}/v1/infer", json={"model": model, "mode": mode})
        offer = self._offer(probe, model, mode)
        manifest, fee = await asyncio.to_thread(self._payment, input, offer, max_fee)
        auth, header = sign_payment(self.key, offer, fee)
        body = {"model": model, "mode": mode, "input": input}
        paid = await self.http.post(f"{self.node_url}/v1/infer", json=body, headers={"X-PAYMENT": header})
        return await asyncio.to_thread(self._result, paid, input, manifest, offer, auth)  # tee reads the chain

    async def wait_settled(self, receipt_id: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            record = await asyncio.to_thread(self.receipt_status, receipt_id)
            if record["status"] != Status.PENDING:
                return record
            if time.monotonic() > deadline:
                raise HacaError(f"receipt {receipt_id} not settled within {timeout:.0f}s")
            await asyncio.sleep(0.3)

    async def verify_receipt(self, receipt: str | SignedReceipt) -> ReceiptVerification:
        """As Client.verify_receipt (the chain reads and proofs run in a worker thread)."""
        if isinstance(receipt, SignedReceipt):
            signed = receipt
        else:
            response = await self.http.get(f"{self.node_url}/v1/receipts/{receipt}")
            if response.status_code != 200:
                raise self._error(response)
            signed = _checked_receipt(response.json(), receipt)
        if signed.receipt.mode == Mode.ZKML:
            stored = (await self.http.get(f"{self.node_url}/v1/receipts/{signed.id}")).json()
            proof = bytes.fromhex((stored.get("evidence") or "0x")[2:])
            return await asyncio.to_thread(verify_zkml_receipt, self.chain, signed, proof, self.srs_dir)
        return await asyncio.to_thread(verify_tee_receipt, self.chain, signed)

    async def wait_verified(self, receipt_id: str, timeout: float = 60.0) -> ReceiptVerification:
        await self.wait_settled(receipt_id, timeout)
        return await self.verify_receipt(receipt_id)


def _checked_receipt(stored: dict[str, Any], receipt_id: str) -> SignedReceipt:
    """The signed receipt a node returned for `receipt_id`, refused if it is another one."""
    signed = SignedReceipt.from_json(stored["receipt"])
    if signed.id != receipt_id.lower():
        raise ReceiptInvalid(f"the node returned receipt {signed.id} for {receipt_id}")
    return signed


def _from_home(
    home: Path | str | None, key: str | None, node_url: str | None
) -> tuple[str, PrivateKey, ChainClient, str | None, Path | None]:
    resolved = resolve_home(home)
    config = ClientConfig.load(resolved)
    stored = KeyStore(resolved).get(key or config.default_key)
    nodes = config.extra.get("nodes") or []
    url = node_url or (nodes[0]["url"] if nodes else "")
    if not url:
        raise HacaError("no node URL: pass node_url or run a devnet that lists its nodes in the config")
    address = next((n.get("address") for n in nodes if n.get("url", "").rstrip("/") == url.rstrip("/")), None)
    srs = config.extra.get("srs_dir")
    return url, stored.key, connect(config), address, Path(srs) if srs else None
