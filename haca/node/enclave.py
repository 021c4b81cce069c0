"""The node's side of tee mode: its enclave (the attester process) holds the receipt key; the
node only asks it to sign. The node keeps that key registered on chain: it attests once at
start, then re-attests (a heartbeat) when half the covered blocks are gone, and refuses tee
requests once its coverage would not include the receipt's height.

Attestation txs are sent by the node's account, as settlement txs are: both take the settler's
transaction lock, so their nonces never collide.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import structlog

from haca.attester.client import AsyncAttesterClient, AttesterClient, AttesterError
from haca.client.chain import ChainClient
from haca.client.errors import HacaError
from haca.crypto.keys import PrivateKey
from haca.node.errors import EnclaveUnavailable
from haca.types.receipt import Receipt
from haca.types.tee import MsgAttestEnclave

log = structlog.get_logger("haca.enclave")
MAX_SIGN_BATCH = 256  # the attester's sign_receipts limit


class EnclaveKey:
    def __init__(
        self,
        chain: ChainClient,
        account: PrivateKey,
        attester: AttesterClient,
        signer: AsyncAttesterClient,
        tx_lock: threading.Lock,
        poll_interval: float = 1.0,
    ) -> None:
        self.chain, self.account, self.attester, self.signer = chain, account, attester, signer
        self.tx_lock, self.poll_interval = tx_lock, poll_interval
        info = attester.key()
        self.address: str = info["address"]
        self.dev: bool = bool(info.get("dev"))
        self.good_until = 0  # the last height the chain says this key is covered at
        self.attested_height = 0
        self._waiting: list[tuple[Receipt, asyncio.Future[bytes]]] = []  # receipts to sign in the next batch
        self._flushing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="enclave-heartbeat", daemon=True)

    def attest(self) -> int:
        """Register (or re-attest) the key with a nonce from the latest block; the new good-until."""
        height = self.chain.rpc.height()
        block_hash = bytes.fromhex(self.chain.rpc.block(height)["block_id"]["hash"])
        attestation = self.attester.attest(self.chain.chain_id, self.account.address, block_hash)
        msg = MsgAttestEnclave(self.address, attestation.format, attestation.evidence, attestation.endorsements, height)
        with self.tx_lock:
            outcome = self.chain.send_msgs(self.account, (msg,))
        assert not isinstance(outcome, str)
        self.good_until = _good_until(outcome.events) or self.good_until
        self.attested_height = outcome.height
        log.info("enclave_attested", key=self.address, height=outcome.height, good_until=self.good_until, dev=self.dev)
        return self.good_until

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def due(self, height: int) -> bool:
        """Re-attest once half of the covered span is gone."""
        return height >= self.attested_height + (self.good_until - self.attested_height) // 2

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                address = self.attester.key()["address"]
                if address != self.address:  # the enclave restarted: a new key, never attested
                    log.warning("enclave_rekeyed", old=self.address, new=address)
                    self.address, self.good_until, self.attested_height = address, 0, 0
                if self.due(self.chain.rpc.height()):
                    self.attest()
            except (HacaError, AttesterError, KeyError, ValueError) as exc:  # retried next poll
                log.warning("enclave_heartbeat_failed", key=self.address, error=str(exc))

    def require_covered(self, height: int) -> None:
        if height > self.good_until:
            raise EnclaveUnavailable(
                f"the enclave key's attestation covers blocks up to {self.good_until};"
                f" this request is at {height}: re-attesting, retry shortly"
            )

    async def sign(self, receipt: Receipt) -> bytes:
        """The enclave's signature on a tee receipt; EnclaveUnavailable when the key is not covered
        at the receipt's height or the enclave does not answer. Receipts that arrive while a batch
        is out go together in the next one: one round trip to the enclave per batch."""
        self.require_covered(receipt.height_hint)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting.append((receipt, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_SIGN_BATCH], self._waiting[MAX_SIGN_BATCH:]
                try:
                    if len(batch) == 1:
                        results: list[bytes | AttesterError] = [await self.signer.sign_receipt(batch[0][0])]
                    else:
                        results = list(await self.signer.sign_receipts([r for r, _ in batch]))
                except Exception as exc:  # AttesterError, or a bug: every waiter gets an answer
                    results = [AttesterError(str(exc))] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, bytes):
                        future.set_result(result)
                    else:
                        future.set_exception(EnclaveUnavailable(f"the enclave did not sign: {result}"))
        finally:
            self._flushing = False


def _good_until(events: list[dict[str, Any]]) -> int:
    for event in events:
        if event.get("type") == "enclave_attested":
            attrs = {a["key"]: a["value"] for a in event.get("attributes", [])}
            return int(attrs["good_until"])
    return 0
