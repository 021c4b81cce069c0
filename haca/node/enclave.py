"""The node's side of tee mode: the enclave runs the model and signs the receipt; the node (the
untrusted host) forwards the paid request with the terms it quoted, and keeps what comes back.

The node keeps the enclave's key registered on chain: it attests once at start, then re-attests (a
heartbeat) when half the covered blocks are gone, and refuses tee requests once its coverage would
not include the receipt's height, or while the chain does not approve the enclave's measurement
for the model (read each block: an answer signed while revoked, which the client's SDK refuses,
would settle once governance approved it again, and charge that client). What the enclave answers
is checked before it is stored: a receipt for another request, model, node or terms, or signed by
another key (the enclave restarted with a new one), is not kept, and the request fails with 503.

Attestation txs are sent by the node's account, as settlement txs are: both take the settler's
transaction lock, so their nonces never collide.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog

from haca.client.chain import ChainClient
from haca.client.errors import HacaError
from haca.crypto.keys import PrivateKey
from haca.enclave.client import AsyncEnclaveClient, EnclaveClient, EnclaveError, EnclaveRefusal, Generation
from haca.enclave.runtime import Terms
from haca.node.errors import EnclaveUnavailable
from haca.node.payments import AcceptedPayment, Quote
from haca.node.txlock import TxLock
from haca.types.batch import MsgSettleBatch
from haca.types.modes import Mode
from haca.types.receipt import SignedReceipt
from haca.types.registry import PriceUnit
from haca.types.tee import GLOBAL_SCOPE, MsgAttestEnclave

log = structlog.get_logger("haca.enclave")


def terms_for(chain_id: str, node: str, quote: Quote, accepted: AcceptedPayment) -> Terms:
    """The terms a tee request runs on: the quote in effect and what the payment holds."""
    return Terms(
        chain_id=chain_id,
        node=node,
        client=accepted.client,
        request_id=accepted.request_id,
        height_hint=quote.height,
        unit_price=quote.unit_price,
        price_unit=quote.price_unit,
        max_rows=quote.max_rows,
        completion_price=quote.completion_price,
        budget=accepted.fee,
    )


NONCE_LAG_BLOCKS = 2  # how far behind the latest block an attestation's nonce block is (see EnclaveKey.attest)


class EnclaveKey:
    def __init__(
        self,
        chain: ChainClient,
        account: PrivateKey,
        enclave: EnclaveClient,
        runner: AsyncEnclaveClient,
        tx_lock: TxLock,
        poll_interval: float = 1.0,
    ) -> None:
        self.chain, self.account, self.enclave, self.runner = chain, account, enclave, runner
        self.tx_lock, self.poll_interval = tx_lock, poll_interval
        info = enclave.key()
        self.address: str = info["address"]
        self.dev: bool = bool(info.get("dev"))
        self.platform: str = str(info.get("platform", ""))
        self.good_until = 0  # the last height the chain says this key is covered at
        self.covered_from = 0  # where that coverage began: receipts before it, in a lapse, never settle
        self.loaded: list[tuple[str, str, int, int]] = []  # what `load` asked for: a new enclave loads it again
        self.attested_height = 0
        # The scopes ("*" or model names) the chain approves this key's measurement under, read
        # each block; None until first read (the chain decides meanwhile).
        self.measurement_id = ""
        self.approved: frozenset[str] | None = None
        self._approvals_height = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="enclave-heartbeat", daemon=True)

    def load(self, model_id: str, kind: str, context: int = 0, slots: int = 1) -> None:
        """Have the enclave load a model itself (it fetches and hashes the bytes)."""
        answer = self.enclave.load(model_id, kind, context, slots)
        if (model_id, kind, context, slots) not in self.loaded:
            self.loaded.append((model_id, kind, context, slots))
        log.info("enclave_model_loaded", model_id=model_id, provider=answer.get("provider"))

    def attest(self) -> int:
        """Register (or re-attest) the key with a nonce from a recent block; the new good-until. The
        block is two behind the latest the RPC reports: the tx may be checked by a validator a block
        or two behind that one (RPC failover), which refuses a nonce from a block it does not have."""
        with self.tx_lock:  # the nonce block is chosen once the lock is ours: the settler may hold it long
            height = max(1, self.chain.rpc.height() - NONCE_LAG_BLOCKS)
            block_hash = bytes.fromhex(self.chain.rpc.block(height)["block_id"]["hash"])
            evidence = self.enclave.attest(self.chain.chain_id, self.account.address, block_hash)
            cpu = evidence.cpu
            msg = MsgAttestEnclave(self.address, cpu.format, cpu.evidence, cpu.endorsements, height, evidence.gpus)
            outcome = self.chain.send_msgs(self.account, (msg,))
        assert not isinstance(outcome, str)
        if self.good_until < outcome.height - 1:  # lapsed (or a new key): the chain opened a new segment
            self.covered_from = outcome.height
        self.good_until = _good_until(outcome.events) or self.good_until
        self.attested_height = outcome.height
        log.info(
            "enclave_attested",
            key=self.address,
            height=outcome.height,
            good_until=self.good_until,
            dev=self.dev,
            gpus=len(evidence.gpus),
        )
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
                address = self.enclave.key()["address"]
                if address != self.address:  # the enclave restarted: a new key, never attested
                    log.warning("enclave_rekeyed", old=self.address, new=address)
                    for model in self.loaded:  # and no models: loaded first (a failure is retried next poll)
                        self.load(*model)
                    self.address, self.good_until, self.attested_height, self.covered_from = address, 0, 0, 0
                    self.measurement_id, self.approved, self._approvals_height = "", None, 0
                height = self.chain.rpc.height()
                if height != self._approvals_height:  # apart: a refused heartbeat must not keep them stale
                    try:
                        self.read_approvals(height)
                    except (HacaError, KeyError, ValueError) as exc:  # e.g. the key not registered yet
                        log.warning("enclave_approvals_unread", key=self.address, error=str(exc))
                if self.due(height):
                    self.attest()
            except (HacaError, EnclaveError, KeyError, ValueError) as exc:  # retried next poll
                log.warning("enclave_heartbeat_failed", key=self.address, error=str(exc))

    def read_approvals(self, height: int) -> None:
        """Which scopes the chain approves this key's measurement under, as of `height`."""
        if not self.measurement_id:
            record = self.chain.query("/tee/enclave", self.address.encode())["enclave"]
            self.measurement_id = str(record["measurement_id"])
        approvals = self.chain.query("/tee/measurements")["approvals"]
        self.approved = frozenset(str(a["model"]) for a in approvals if a["measurement_id"] == self.measurement_id)
        self._approvals_height = height

    def require_approved(self, model: str) -> None:
        """Refuse a tee request for `model` (its name) while the chain approves the enclave's
        measurement neither for it nor for every model ("*")."""
        approved = self.approved
        if approved is not None and GLOBAL_SCOPE not in approved and model not in approved:
            raise EnclaveUnavailable(
                f"the enclave's measurement {self.measurement_id} is not approved for model {model!r} on chain"
                " (revoked?): tee requests are refused until governance approves it again"
            )

    def require_covered(self, height: int) -> None:
        if height > self.good_until:
            raise EnclaveUnavailable(
                f"the enclave key's attestation covers blocks up to {self.good_until};"
                f" this request is at {height}: re-attesting, retry shortly"
            )
        if height < self.covered_from:  # in the lapse before the key's coverage resumed
            raise EnclaveUnavailable(
                f"the enclave key's attestation covers blocks from {self.covered_from};"
                f" this request is at {height}: retry shortly"
            )

    # --- running requests in the enclave -----------------------------------------------------------

    async def infer(self, model_id: str, raw_input: Any, terms: Terms) -> tuple[dict[str, Any], SignedReceipt]:
        """The enclave's outputs (JSON tensors) and its receipt for them; EnclaveRefusal when it
        refuses the request, EnclaveUnavailable when it cannot answer or answers wrongly."""
        self.require_covered(terms.height_hint)
        try:
            output, signed = await self.runner.infer(model_id, raw_input, terms)
        except EnclaveError as exc:
            if isinstance(exc, EnclaveRefusal) and exc.code in ("invalid_input", "invalid_request"):
                raise  # the client's input: the route answers 4xx
            raise EnclaveUnavailable(f"the enclave did not run the request: {exc}") from exc
        self.check(signed, model_id, terms)
        return output, signed

    def generate(self, model_id: str, kind: str, body: Any, terms: Terms, seconds: float) -> Generation:
        self.require_covered(terms.height_hint)
        return self.runner.generate(model_id, kind, body, terms, seconds)

    def check(self, signed: SignedReceipt, model_id: str, terms: Terms) -> None:
        """The receipt is for this request on these terms, and signed by the registered key."""
        receipt = signed.receipt
        expected = {
            "chain_id": terms.chain_id,
            "node": terms.node,
            "client": terms.client,
            "request_id": terms.request_id,
            "model_id": model_id,
            "mode": Mode.TEE,
            "height_hint": terms.height_hint,
        }
        wrong = sorted(k for k, v in expected.items() if getattr(receipt, k) != v)
        if terms.price_unit == PriceUnit.TOKEN:
            if receipt.fee > terms.budget:
                wrong.append("fee")
            if receipt.prompt_tokens + receipt.completion_tokens > terms.max_rows:
                wrong.append("tokens")
        elif receipt.fee != terms.budget:  # a tensor request's fee is fixed by its rows: what the node held
            wrong.append("fee")
        if wrong:
            raise EnclaveUnavailable(f"the enclave's receipt does not match the request ({', '.join(wrong)}): not kept")
        signer = receipt.signer(signed.signature)
        if signer != self.address:
            raise EnclaveUnavailable(
                f"the receipt is signed by {signer}, not the registered enclave key {self.address}"
                " (the enclave restarted?): re-attesting, retry shortly"
            )

    def sign_batch(self, chain_id: str, node: str, batch: MsgSettleBatch) -> bytes:
        return self.enclave.sign_batch(chain_id, node, batch)


def _good_until(events: list[dict[str, Any]]) -> int:
    for event in events:
        if event.get("type") == "enclave_attested":
            attrs = {a["key"]: a["value"] for a in event.get("attributes", [])}
            return int(attrs["good_until"])
    return 0
