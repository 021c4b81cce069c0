"""Chain client: queries (optionally proven against a signed header) and signed txs."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from haca.client.errors import ChainUnavailable, HacaError, ProofInvalid, RpcError, TxRejected
from haca.client.light import LightClientError, validators_from_rpc, verify_signed_header
from haca.client.rpc import CometRpc, b64
from haca.crypto.keys import PrivateKey
from haca.crypto.state_proof import ProofError, verify_proof
from haca.types.tx import Msg, build_tx

PROOF_OP_TYPE = "haca:mpt"


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
    def __init__(self, rpc_urls: list[str], chain_id: str, validators: list[dict[str, Any]] | None = None) -> None:
        """`rpc_urls`: every RPC endpoint of the chain, in order of preference; calls fail over
        between them (see CometRpc). `validators` is the trusted validator set (RPC `validators`
        shape, e.g. from genesis); without it, headers are checked against the set the answering
        RPC node reports."""
        if not rpc_urls:
            raise HacaError("no RPC URL configured")
        self.rpc = CometRpc(rpc_urls)
        self.chain_id = chain_id
        self.trusted = validators_from_rpc(validators) if validators else None

    def close(self) -> None:
        self.rpc.close()

    # --- queries ------------------------------------------------------------------------------

    def query(self, path: str, data: bytes = b"", height: int = 0) -> dict[str, Any]:
        answer: dict[str, Any] = json.loads(b64(self.rpc.abci_query(path, data, height)["value"]))
        return answer

    def balance(self, address: str) -> int:
        return int(self.query("/bank/balance", address.encode())["balance"])

    def nonce(self, address: str) -> int:
        return int(self.query("/auth/account", address.encode())["nonce"])

    def supply(self) -> dict[str, Any]:
        answer = self.query("/bank/supply")
        return {"denom": answer["denom"], "total": int(answer["total"]), "burned": int(answer["burned"])}

    def query_proven(self, path: str, data: bytes = b"", timeout: float = 15.0) -> ProvenValue:
        """Query with prove=true and check the proof against the app hash CometBFT committed
        for that state: it is in the header of the next height, which 2/3 of validators signed."""
        response = self.rpc.abci_query(path, data, prove=True)
        height = int(response["height"])
        ops = (response.get("proofOps") or {}).get("ops") or []
        if len(ops) != 1 or ops[0]["type"] != PROOF_OP_TYPE:
            raise ProofInvalid(f"{path}: expected one {PROOF_OP_TYPE} proof op, got {ops}")
        key, proof = b64(response["key"]), b64(ops[0]["data"])
        app_hash = self.app_hash_after(height, timeout)
        try:
            raw = verify_proof(app_hash, key, proof)
        except ProofError as exc:
            raise ProofInvalid(str(exc)) from exc
        return ProvenValue(json.loads(b64(response["value"])), key, raw, height, app_hash)

    def query_proven_keys(
        self, path: str, data: bytes = b"", timeout: float = 15.0
    ) -> tuple[dict[str, Any], dict[bytes, bytes], int]:
        """Query with prove=true; every proof op is checked against the app hash of that height
        (light-client verified). The answer, each proven key's value (b"" where absent), the height."""
        response = self.rpc.abci_query(path, data, prove=True)
        height = int(response["height"])
        ops = (response.get("proofOps") or {}).get("ops") or []
        if not ops or any(op["type"] != PROOF_OP_TYPE for op in ops):
            raise ProofInvalid(f"{path}: expected {PROOF_OP_TYPE} proof ops, got {ops}")
        app_hash = self.app_hash_after(height, timeout)
        values: dict[bytes, bytes] = {}
        for op in ops:
            key = b64(op["key"])
            try:
                values[key] = verify_proof(app_hash, key, b64(op["data"]))
            except ProofError as exc:
                raise ProofInvalid(str(exc)) from exc
        return json.loads(b64(response["value"])), values, height

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
        validators = self.trusted or validators_from_rpc(self.rpc.validators(height + 1))
        try:
            return verify_signed_header(signed, validators, self.chain_id)
        except LightClientError as exc:
            raise ProofInvalid(f"header {height + 1}: {exc}") from exc

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
            raise TxRejected(f"rejected (code {result['code']}): {result['log']}", int(result["code"]), result["log"])
        return str(result["hash"])

    def wait_tx(self, tx_hash: str, timeout: float = 30.0) -> TxOutcome:
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = self.rpc.tx(tx_hash)
                break
            except RpcError as exc:
                if time.monotonic() > deadline:
                    if isinstance(exc, ChainUnavailable):
                        raise
                    raise HacaError(f"tx {tx_hash} not committed within {timeout:.0f}s") from None
                time.sleep(0.2)
        result = found["tx_result"]
        outcome = TxOutcome(
            tx_hash, int(found["height"]), int(result.get("code", 0)), result.get("log", ""), result.get("events", [])
        )
        if outcome.code != 0:
            raise TxRejected(
                f"tx failed in block {outcome.height} (code {outcome.code}): {outcome.log}", outcome.code, outcome.log
            )
        return outcome

    def send_msgs(self, key: PrivateKey, msgs: tuple[Msg, ...], wait: bool = True) -> TxOutcome | str:
        tx_hash = self.broadcast(self.sign(key, msgs))
        return self.wait_tx(tx_hash) if wait else tx_hash
