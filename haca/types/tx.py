"""Transactions: messages, chain id, account nonce and fee, signed as EIP-712 typed data.

Wire form (canonical JSON):
    {"chain_id", "signer", "nonce", "fee", "msgs": [{"type", "value"}], "signature": "0x.."}
The signed typed data is derived from the body alone; the client never supplies the types,
so a wallet (eth_account.Account.sign_typed_data) and the chain always agree on the digest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import orjson

from haca.crypto.keys import PrivateKey, SignatureError, normalize_address, recover_signer, typed_data_digest
from haca.types.encoding import canonical_json, parse_uint

EIP712_DOMAIN = {"name": "HACA", "version": "1"}
EIP712_DOMAIN_TYPE = [{"name": "name", "type": "string"}, {"name": "version", "type": "string"}]
MAX_TX_BYTES = 4 << 20  # room for a zkml circuit's verifying key (hex) or a batch of proofs
MAX_MSGS_PER_TX = 16


class TxDecodeError(ValueError):
    """The bytes are not a well-formed transaction (stateless check)."""


class Msg(Protocol):
    """A chain message: knows its wire name, its EIP-712 struct and its JSON form."""

    type_name: ClassVar[str]  # wire name, e.g. "bank/send"
    eip712_name: ClassVar[str]  # struct name in the typed data, e.g. "MsgSend"
    eip712_fields: ClassVar[list[tuple[str, str]]]

    def to_json(self) -> dict[str, Any]: ...

    def to_eip712(self) -> dict[str, Any]: ...

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Msg: ...


MSG_TYPES: dict[str, type[Msg]] = {}


def register_msg(cls: type[Msg]) -> type[Msg]:
    """Class decorator: make a message type decodable from the wire."""
    if cls.type_name in MSG_TYPES:
        raise ValueError(f"message type {cls.type_name} registered twice")
    MSG_TYPES[cls.type_name] = cls
    return cls


@dataclass(frozen=True)
class Tx:
    chain_id: str
    signer: str
    nonce: int
    fee: int
    msgs: tuple[Msg, ...]
    signature: bytes = b""

    def body_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "signer": self.signer,
            "nonce": self.nonce,
            "fee": str(self.fee),
            "msgs": [{"type": m.type_name, "value": m.to_json()} for m in self.msgs],
        }

    def encode(self) -> bytes:
        return canonical_json({**self.body_json(), "signature": "0x" + self.signature.hex()})

    def typed_data(self) -> dict[str, Any]:
        return tx_typed_data(self)

    def digest(self) -> bytes:
        return typed_data_digest(self.typed_data())

    def recover_signer(self) -> str:
        return recover_signer(self.digest(), self.signature)

    def verify_signature(self) -> None:
        """Raise SignatureError unless the signature recovers to `signer`."""
        if self.recover_signer() != self.signer:
            raise SignatureError("signature does not match the signer")

    def signed(self, key: PrivateKey) -> Tx:
        return Tx(
            self.chain_id,
            self.signer,
            self.nonce,
            self.fee,
            self.msgs,
            key.sign_typed_data(self.typed_data()),
        )


def tx_typed_data(tx: Tx) -> dict[str, Any]:
    """The full EIP-712 message for a tx: Tx{chainId, signer, nonce, fee, msg0..msgN}."""
    tx_fields = [
        {"name": "chainId", "type": "string"},
        {"name": "signer", "type": "address"},
        {"name": "nonce", "type": "uint64"},
        {"name": "fee", "type": "uint256"},
    ]
    types: dict[str, Any] = {"EIP712Domain": EIP712_DOMAIN_TYPE}
    message: dict[str, Any] = {"chainId": tx.chain_id, "signer": tx.signer, "nonce": tx.nonce, "fee": tx.fee}
    for i, msg in enumerate(tx.msgs):
        tx_fields.append({"name": f"msg{i}", "type": msg.eip712_name})
        types[msg.eip712_name] = [{"name": n, "type": t} for n, t in msg.eip712_fields]
        message[f"msg{i}"] = msg.to_eip712()
    types["Tx"] = tx_fields
    return {"domain": dict(EIP712_DOMAIN), "types": types, "primaryType": "Tx", "message": message}


def decode_tx(raw: bytes) -> Tx:
    """Parse and statelessly validate a tx; raise TxDecodeError with a readable reason."""
    if len(raw) > MAX_TX_BYTES:
        raise TxDecodeError(f"tx is {len(raw)} bytes, the limit is {MAX_TX_BYTES}")
    try:
        body = orjson.loads(raw)  # a validator decodes every tx; orjson is ~4x the stdlib's speed
    except (ValueError, RecursionError) as exc:  # includes bad UTF-8 and over-long integer literals
        raise TxDecodeError(f"tx is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise TxDecodeError("tx must be a JSON object")
    expected = {"chain_id", "signer", "nonce", "fee", "msgs", "signature"}
    if set(body) != expected:
        raise TxDecodeError(f"tx fields must be exactly {sorted(expected)}")
    try:
        tx = Tx(
            chain_id=_string(body["chain_id"], "chain_id"),
            signer=normalize_address(body["signer"]),
            nonce=parse_uint(body["nonce"], "nonce", 64),
            fee=parse_uint(body["fee"], "fee"),
            msgs=tuple(_decode_msgs(body["msgs"])),
            signature=_hex_bytes(body["signature"], "signature"),
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise TxDecodeError(str(exc)) from exc
    return tx


def _decode_msgs(items: Any) -> list[Msg]:
    if not isinstance(items, list) or not items:
        raise ValueError("msgs must be a non-empty list")
    if len(items) > MAX_MSGS_PER_TX:
        raise ValueError(f"at most {MAX_MSGS_PER_TX} messages per tx")
    msgs = []
    for item in items:
        if not isinstance(item, dict) or set(item) != {"type", "value"} or not isinstance(item["value"], dict):
            raise ValueError('each message must be {"type": str, "value": object}')
        cls = MSG_TYPES.get(item["type"])
        if cls is None:
            raise ValueError(f"unknown message type {item['type']!r}")
        msgs.append(cls.from_json(item["value"]))
    return msgs


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field}: expected a non-empty string")
    return value


def _hex_bytes(value: Any, field: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ValueError(f"{field}: expected 0x-prefixed hex")
    try:
        return bytes.fromhex(value[2:])
    except ValueError as exc:
        raise ValueError(f"{field}: bad hex") from exc


def build_tx(key: PrivateKey, chain_id: str, nonce: int, msgs: tuple[Msg, ...], fee_base: int, fee_per_byte: int) -> Tx:
    """A signed tx whose fee covers `fee_base + fee_per_byte * len(encoded tx)` exactly.

    The encoding's length does not depend on the signature's bytes (always 65), so the fee is
    sized on a placeholder and the tx signed once."""
    fee = fee_base
    while True:
        size = len(Tx(chain_id, key.address, nonce, fee, msgs, bytes(65)).encode())
        needed = fee_base + fee_per_byte * size
        if needed <= fee:
            return Tx(chain_id, key.address, nonce, fee, msgs).signed(key)
        fee = needed
