"""Chain client: queries (optionally proven against a signed header) and signed txs.

Proven means recent. A state proof only shows that a value was committed at some height; an RPC
that answers every proven query from an older state (with that state's real header) passes every
signature and proof check while serving, say, a balance since spent. So a proven answer is accepted
only for a height at least the latest header the client has verified less `max_proof_lag` blocks
(`StaleProof` otherwise). The latest height is learnt only from headers the client verified itself
(more than 2/3 of the trusted voting power signed them): before each proven query it asks the RPC for
its latest commit and verifies it, and it keeps the highest height verified so far, over every call
and every endpoint, so an RPC (or a failover endpoint) that serves an old commit as its latest cannot
move the floor back. A height no honest validator signed cannot be shown, so the floor cannot be
pushed up either. The window lets honest endpoints a few blocks apart, and a block committed between
the two calls, pass.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from haca.client.errors import (
    ChainUnavailable,
    HacaError,
    ProofInvalid,
    QueryFailed,
    RpcError,
    StaleProof,
    TxRejected,
)
from haca.client.light import (
    LightBlock,
    LightClient,
    LightClientError,
    TrustedValidator,
    validator_set_hash,
    validators_from_rpc,
    verify_signed_header,
)
from haca.client.rpc import CometRpc, b64
from haca.crypto.keys import PrivateKey
from haca.crypto.state_proof import ProofError, verify_proof
from haca.types.tx import Msg, build_tx

log = logging.getLogger("haca.client.chain")

PROOF_OP_TYPE = "haca:mpt"
# Blocks a proven answer may be behind the latest verified header: honest endpoints a few blocks
# apart, and a block committed between the latest-commit call and the query, must still pass.
DEFAULT_MAX_PROOF_LAG = 5
# Seconds a verified header may be skipped from (haca.client.light): below the chain's
# unbonding time, so a set that signs a fork within it can still be slashed.
DEFAULT_TRUSTING_PERIOD = 7 * 24 * 3600


@dataclass(frozen=True)
class ProvenValue:
    """A state value and the evidence it is committed: its key, proof, height, and the app hash
    from the header of height+1 that proves it."""

    answer: dict[str, Any]
    key: bytes
    raw: bytes
    height: int
    app_hash: bytes


@dataclass(frozen=True)
class TxOutcome:
    hash: str
    height: int
    code: int
    log: str
    events: list[dict[str, Any]]


class ChainClient:
    def __init__(
        self,
        rpc_urls: list[str],
        chain_id: str,
        validators: list[dict[str, Any]] | None = None,
        max_proof_lag: int = DEFAULT_MAX_PROOF_LAG,
        trusting_period: float = DEFAULT_TRUSTING_PERIOD,
        trust_height: int = 0,
        trust_hash: str = "",
    ) -> None:
        """`rpc_urls`: every RPC endpoint of the chain, in order of preference; calls fail over
        between them (see CometRpc). `validators` is the trusted validator set (RPC `validators`
        shape, e.g. from genesis); without it, headers are checked against the set the answering
        RPC node reports. `max_proof_lag`: how many blocks a proven answer may be behind the latest
        header verified (see the module's docstring). With `validators`, headers are verified by a
        light client that follows validator-set changes (haca.client.light), anchored at
        header 1 signed by them, or at `trust_height` if given (its header must hash to
        `trust_hash`), skipping only from headers younger than `trusting_period` seconds."""
        if not rpc_urls:
            raise HacaError("no RPC URL configured")
        if max_proof_lag < 0:
            raise ValueError("max_proof_lag must not be negative")
        self.rpc = CometRpc(rpc_urls)
        self.chain_id = chain_id
        self.trusted = validators_from_rpc(validators) if validators else None
        self.max_proof_lag = max_proof_lag
        self._latest_verified = 0  # the highest height of a header verified here, never lowered
        self._latest_lock = threading.Lock()  # AsyncClient calls from worker threads
        self.trusting_period = trusting_period
        self.trust_height, self.trust_hash = trust_height, trust_hash.lower().removeprefix("0x")
        self._light: LightClient | None = None
        self._sets: dict[str, tuple[TrustedValidator, ...]] = {}  # validators_hash (hex) -> the set
        if self.trusted:
            self._sets[validator_set_hash(self.trusted).hex()] = tuple(self.trusted)

    def close(self) -> None:
        self.rpc.close()

    # --- queries ------------------------------------------------------------------------------

    def query(self, path: str, data: bytes = b"", height: int = 0) -> dict[str, Any]:
        return self.query_with_height(path, data, height)[0]

    def query_with_height(self, path: str, data: bytes = b"", height: int = 0) -> tuple[dict[str, Any], int]:
        """An unproven answer and the height of the state it was read from (the answering RPC's
        latest when `height` is 0: a lagging RPC answers an older state)."""
        response = self.rpc.abci_query(path, data, height)
        answer: dict[str, Any] = json.loads(b64(response["value"]))
        return answer, int(response.get("height") or 0)

    def balance(self, address: str) -> int:
        return int(self.query("/bank/balance", address.encode())["balance"])

    def nonce(self, address: str) -> int:
        return int(self.query("/auth/account", address.encode())["nonce"])

    def supply(self) -> dict[str, Any]:
        answer = self.query("/bank/supply")
        return {"denom": answer["denom"], "total": int(answer["total"]), "burned": int(answer["burned"])}

    @property
    def latest_verified_height(self) -> int:
        """The highest height of a header this client has verified (0 before any)."""
        return self._latest_verified

    def verify_latest(self) -> int:
        """Verify the RPC's latest commit (light client) and return the highest height verified so
        far: that commit's, or a higher one seen before (an RPC cannot move it back)."""
        self._latest_header()
        return self._latest_verified

    def verified_header_hash(self, height: int) -> bytes:
        """The hash of header `height`, verified by the light client from its trust anchor (what
        CometBFT's state sync takes as its trust_hash)."""
        return self._light_client().verified(height).hash

    def _latest_header(self) -> tuple[int, bytes]:
        """The RPC's latest commit, verified: (its height, its app hash)."""
        signed = self.rpc.call("commit")["signed_header"]  # no height: the latest commit
        try:
            height = int(signed["header"]["height"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProofInvalid(f"the latest commit is malformed: {exc!r}") from exc
        latest = self._latest_verified
        if height < latest - self.max_proof_lag:  # an RPC behind: nothing it proves could be fresh
            raise StaleProof(
                f"the RPC's latest commit is header {height}, but header {latest} is verified: it is more"
                f" than {self.max_proof_lag} blocks behind",
                height,
                latest,
            )
        return height, self._verify_header(signed, height)

    def _proven_response(self, path: str, data: bytes, timeout: float) -> tuple[dict[str, Any], int, bytes]:
        """A prove=true answer, its height (fresh: see _fresh_height) and the verified app hash its
        proofs are checked against. The state asked for is the one just before the latest verified
        header, whose app hash that header carries: no wait for the next block. When that state has
        nothing at the path (a record the last block wrote), the latest state, checked once the
        next header exists."""
        header_height, header_app_hash = self._latest_header()
        at = header_height - 1 if header_height > 1 else 0
        try:
            response = self.rpc.abci_query(path, data, height=at, prove=True)
        except QueryFailed:
            if not at:
                raise
            at = 0
            response = self.rpc.abci_query(path, data, prove=True)
        height = self._fresh_height(path, response)
        if at and height == at:
            return response, height, header_app_hash
        return response, height, self.app_hash_after(height, timeout)

    def query_proven(self, path: str, data: bytes = b"", timeout: float = 15.0) -> ProvenValue:
        """Query with prove=true and check the proof against the app hash CometBFT committed
        for that state: it is in the header of the next height, which 2/3 of validators signed.
        StaleProof when the answer's height is too far behind the latest verified header."""
        response, height, app_hash = self._proven_response(path, data, timeout)
        ops = (response.get("proofOps") or {}).get("ops") or []
        if len(ops) != 1 or ops[0]["type"] != PROOF_OP_TYPE:
            raise ProofInvalid(f"{path}: expected one {PROOF_OP_TYPE} proof op, got {ops}")
        key, proof = b64(response["key"]), b64(ops[0]["data"])
        try:
            raw = verify_proof(app_hash, key, proof)
        except ProofError as exc:
            raise ProofInvalid(str(exc)) from exc
        return ProvenValue(json.loads(b64(response["value"])), key, raw, height, app_hash)

    def query_proven_value(self, path: str, data: bytes = b"", timeout: float = 15.0) -> tuple[dict[str, Any], int]:
        """For a query whose answer is the one state value it proves (a manifest, a node's
        registration): that value as the proof shows it, and its height. ProofInvalid when the
        RPC's answer is not the proven value."""
        proven = self.query_proven(path, data, timeout)
        try:
            value = json.loads(proven.raw) if proven.raw else None
        except ValueError:
            value = None
        if not isinstance(value, dict) or value != proven.answer:
            raise ProofInvalid(f"{path}: the answer is not the value the proof shows")
        return value, proven.height

    def query_proven_keys(
        self, path: str, data: bytes = b"", timeout: float = 15.0
    ) -> tuple[dict[str, Any], dict[bytes, bytes], int]:
        """Query with prove=true; every proof op is checked against the app hash of that height
        (light-client verified), which must be recent as in query_proven. The answer, each proven
        key's value (b"" where absent), the height."""
        response, height, app_hash = self._proven_response(path, data, timeout)
        ops = (response.get("proofOps") or {}).get("ops") or []
        if not ops or any(op["type"] != PROOF_OP_TYPE for op in ops):
            raise ProofInvalid(f"{path}: expected {PROOF_OP_TYPE} proof ops, got {ops}")
        values: dict[bytes, bytes] = {}
        for op in ops:
            key = b64(op["key"])
            try:
                values[key] = verify_proof(app_hash, key, b64(op["data"]))
            except ProofError as exc:
                raise ProofInvalid(str(exc)) from exc
        return json.loads(b64(response["value"])), values, height

    def _fresh_height(self, path: str, response: dict[str, Any]) -> int:
        """The height a proven answer is for, refused (StaleProof) when it is more than
        `max_proof_lag` blocks behind the latest header verified."""
        try:
            height = int(response["height"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProofInvalid(f"{path}: the answer names no height: {exc!r}") from exc
        latest = self._latest_verified
        if height < latest - self.max_proof_lag:
            raise StaleProof(
                f"{path}: the RPC answered with the state of height {height}, but header {latest} is"
                f" verified: a proven answer may be at most {self.max_proof_lag} blocks behind",
                height,
                latest,
            )
        return height

    def app_hash_after(self, height: int, timeout: float = 15.0) -> bytes:
        """The app hash of the state at `height`, from the header of height+1 after checking that
        more than 2/3 of the validators' voting power signed it (light-client verification)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                signed = self.rpc.commit(height + 1)["signed_header"]
                break
            except RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return self._verify_header(signed, height + 1)

    def _verify_header(self, signed: dict[str, Any], height: int) -> bytes:
        """Check a `commit` answer is header `height`, signed by more than 2/3 of the validators'
        power; note its height as verified and return its app hash."""
        try:
            if str(signed["header"]["height"]) != str(height):  # the height asked for, not another
                raise LightClientError(f"the RPC answered header {signed['header']['height']}")
            if self.trusted is None:  # no trusted set configured: the answering RPC's own (tools, tests)
                app_hash = verify_signed_header(signed, validators_from_rpc(self.rpc.validators(height)), self.chain_id)
            else:
                app_hash = self._light_client().verify(self._light_block(signed)).app_hash
        except LightClientError as exc:
            raise ProofInvalid(f"header {height}: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise ProofInvalid(f"header {height} is malformed: {exc!r}") from exc
        with self._latest_lock:
            self._latest_verified = max(self._latest_verified, height)
        return app_hash

    # --- the light client ---------------------------------------------------------------------

    def _validator_set(self, height: int, expected_hash: str) -> tuple[TrustedValidator, ...]:
        """The validator set a header names by hash: known ones from memory, others from the RPC
        (a set that does not hash to what the header says is refused by the light client)."""
        known = self._sets.get(expected_hash.lower())
        if known is not None:
            return known
        fetched = tuple(validators_from_rpc(self.rpc.validators(height)))
        self._sets[validator_set_hash(list(fetched)).hex()] = fetched
        return fetched

    def _light_block(self, signed: dict[str, Any]) -> LightBlock:
        header = signed["header"]
        height = int(header["height"])
        validators = self._validator_set(height, header["validators_hash"])
        return LightBlock(signed, validators, self._validator_set(height + 1, header["next_validators_hash"]))

    def _fetch_light_block(self, height: int) -> LightBlock:
        return self._light_block(self.rpc.commit(height)["signed_header"])

    def _light_client(self) -> LightClient:
        """The light client, anchored at the configured trust height and hash, else at header 1
        signed by the configured (genesis) set — never at a header an RPC offers as its latest: a
        set that has since lost its stake could sign any height it likes."""
        with self._latest_lock:
            if self._light is not None:
                return self._light
        assert self.trusted is not None
        height = self.trust_height or 1
        anchor = self._fetch_light_block(height)
        if anchor.height != height:
            raise LightClientError(f"asked for header {height}, the RPC answered header {anchor.height}")
        if self.trust_height:
            if anchor.hash.hex() != self.trust_hash:
                raise LightClientError(f"header {height} does not hash to the configured trust_hash")
        elif anchor.header["validators_hash"].lower() != validator_set_hash(self.trusted).hex():
            raise LightClientError("header 1 is not signed by the configured validator set")
        light = LightClient(self.chain_id, anchor, self._fetch_light_block, int(self.trusting_period), time.time)
        with self._latest_lock:
            if self._light is None:
                self._light = light
            return self._light

    def proven_balance(self, address: str) -> int:
        proven = self.query_proven("/bank/balance", address.encode())
        claimed = int(proven.answer["balance"])
        if int(proven.raw or b"0") != claimed:
            raise ProofInvalid(f"node says balance {claimed}, the proof shows {proven.raw!r}")
        return claimed

    # --- txs ------------------------------------------------------------------------------------

    def sign(self, key: PrivateKey, msgs: tuple[Msg, ...], nonce: int | None = None) -> bytes:
        params = self.query("/auth/params")
        if nonce is None:
            nonce = self.nonce(key.address)
        tx = build_tx(key, self.chain_id, nonce, msgs, params["tx_fee_base"], params["tx_fee_per_byte"])
        return tx.encode()

    def broadcast(self, raw: bytes) -> str:
        """Submit through CheckTx; raise TxRejected with the app's code and log on refusal."""
        try:
            result = self.rpc.broadcast_tx_sync(raw)
        except RpcError as exc:
            if "already exists in cache" in str(exc):  # CometBFT refuses identical bytes before CheckTx
                raise TxRejected(f"rejected: this exact tx was already submitted ({exc})") from exc
            raise
        if int(result["code"]) != 0:
            code, log = int(result["code"]), str(result["log"])
            raise TxRejected(f"rejected (code {code}): {log}", code, log, _result_data(result, CHECK_TX_DATA))
        return str(result["hash"])

    def wait_tx(self, tx_hash: str, timeout: float = 30.0, raw: bytes | None = None) -> TxOutcome:
        """The tx's outcome once committed. With its bytes (`raw`), a tx waiting on an endpoint
        whose chain stopped moving (a validator cut from its peers still answers, and its mempool
        reaches nobody) is sent again through the next endpoint, which is asked from then on."""
        deadline = time.monotonic() + timeout
        watch = _HeightWatch(self.rpc, STALLED_AFTER_S)
        while True:
            try:
                found = self.rpc.tx(tx_hash)
                break
            except RpcError as exc:
                if time.monotonic() > deadline:
                    if isinstance(exc, ChainUnavailable):
                        raise
                    raise HacaError(f"tx {tx_hash} not committed within {timeout:.0f}s") from None
                if raw is not None and watch.stalled():
                    self._resend_elsewhere(raw, tx_hash)
                time.sleep(0.2)
        result = found["tx_result"]
        outcome = TxOutcome(
            tx_hash, int(found["height"]), int(result.get("code", 0)), result.get("log", ""), result.get("events", [])
        )
        if outcome.code != 0:
            raise TxRejected(
                f"tx failed in block {outcome.height} (code {outcome.code}): {outcome.log}",
                outcome.code,
                outcome.log,
                _result_data(result),
            )
        return outcome

    def send_msgs(self, key: PrivateKey, msgs: tuple[Msg, ...], wait: bool = True) -> TxOutcome | str:
        raw = self.sign(key, msgs)
        tx_hash = self.broadcast(raw)
        return self.wait_tx(tx_hash, raw=raw) if wait else tx_hash

    def _resend_elsewhere(self, raw: bytes, tx_hash: str) -> None:
        """The endpoint holding the tx stopped moving: ask the next one first from now on, and give
        it the same bytes (same hash: the nonce lets it commit at most once)."""
        if len(self.rpc.urls) < 2:
            return
        stalled = self.rpc.url
        self.rpc.rotate()
        log.warning("no new block at %s while tx %s waits: sent again through %s", stalled, tx_hash, self.rpc.url)
        with contextlib.suppress(RpcError):  # already in that mempool, or down too: the wait goes on
            self.rpc.broadcast_tx_sync(raw)


# CometBFT writes a result's `data` two ways: broadcast_tx_sync's (CheckTx) as hex (HexBytes),
# /tx's (FinalizeBlock) as base64 ([]byte). Hex digits are base64 too, so reading one as the
# other gives bytes, not an error: a CheckTx refusal would name no receipt.
CHECK_TX_DATA, TX_RESULT_DATA = "hex", "base64"


STALLED_AFTER_S = 6.0  # seconds without a new block at an endpoint while a tx waits there: it is cut off


class _HeightWatch:
    """Whether the endpoint asked first has stopped making blocks (read at most once a second)."""

    def __init__(self, rpc: CometRpc, stalled_after: float) -> None:
        self.rpc, self.stalled_after = rpc, stalled_after
        self.height, self.since, self.read_at = -1, time.monotonic(), float("-inf")

    def stalled(self) -> bool:
        now = time.monotonic()
        if now - self.read_at < 1.0:
            return False
        self.read_at = now
        try:
            height = self.rpc.height()
        except RpcError:
            return False  # unreachable: the transport's failover handles it
        if height > self.height:
            self.height, self.since = height, now
            return False
        if now - self.since < self.stalled_after:
            return False
        self.height, self.since = -1, now  # judge the next endpoint afresh
        return True


def _result_data(result: dict[str, Any], encoding: str = TX_RESULT_DATA) -> bytes:
    """A CheckTx or tx result's `data`, b"" when absent or malformed."""
    text = result.get("data") or ""
    try:
        if encoding == CHECK_TX_DATA:
            return bytes.fromhex(text)
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        return b""
