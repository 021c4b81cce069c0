"""Fuzz the node's x402 payment headers, read before the body (`haca.node.payments.PaymentGate.check`):
an `X-PAYMENT` (x402 v1), a `PAYMENT-SIGNATURE` (x402 v2, `haca.node.x402v2.decode_payment_signature`)
or an `Authorization: Bearer haca_…` API key (`haca.types.payment.decode_api_key`). Anything is
either accepted or refused with PaymentRequired (402) or RequestConflict (409); a header that is
accepted names the signer as its client. The gate reads a fake chain view (a fixed height, every
client's escrow ample) and a fresh receipt store.

The first byte picks what the rest is (seeds: validly signed payments for the fake chain):
  0  the X-PAYMENT header;             1  the PAYMENT-SIGNATURE header;   2  the bearer API key;
  3  X-PAYMENT's JSON (sent base64);   4  PAYMENT-SIGNATURE's JSON (sent base64);
  5  the API key's JSON (sent as haca_ + base64url).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import atheris
import fuzzlib

with atheris.instrument_imports(include=["haca"]):
    from haca.crypto.keys import PrivateKey
    from haca.node.errors import PaymentRequired, RequestConflict
    from haca.node.payments import PaymentGate, Quote
    from haca.node.receipts import ReceiptStore
    from haca.types.payment import PaymentAuthorization, SpendingAllowance, encode_api_key
    from haca.types.x402 import caip2_network

CHAIN_ID, DENOM, HEIGHT = "haca-fuzz", "opg", 100
NODE, CLIENT = PrivateKey.from_seed("fuzz-node"), PrivateKey.from_seed("fuzz-client")
MODEL_ID = "sha256:" + "ab" * 32
QUOTES = {(MODEL_ID, "vanilla"): Quote(MODEL_ID, "double", "vanilla", 100, "request", 64, HEIGHT)}


class View:
    """The chain as the gate reads it: a fixed height, ample escrow, no allowance spent or revoked."""

    def height(self) -> int:
        return HEIGHT

    def available_escrow(self, client: str, fresh: bool = False, at_least: int = 0) -> int:
        return 10**30

    def allowance(self, allowance: SpendingAllowance) -> tuple[int, int]:
        return 0, 0

    def settlement_fee(self, fees: int, count: int = 1) -> int:
        return count * 3 + fees // 100

    def manifest_in_effect(self, model_id: str, height: int) -> None:
        return None


STORE = ReceiptStore(Path(":memory:"))  # (sqlite's in-memory database: nothing left behind)
GATE = PaymentGate(NODE.address, CHAIN_ID, DENOM, View(), STORE)
AUTH = PaymentAuthorization(CHAIN_ID, CLIENT.address, NODE.address, "0x" + "07" * 32, MODEL_ID, "vanilla", 10**6, 10**6)
PAYLOAD = {"authorization": AUTH.to_json(), "signature": "0x" + AUTH.sign(CLIENT).hex()}
V1 = {"x402Version": 1, "scheme": "haca-escrow", "network": CHAIN_ID, "payload": PAYLOAD}
ACCEPTED = {"scheme": "haca-escrow", "network": caip2_network(CHAIN_ID), "amount": "1000000", "payTo": NODE.address}
V2 = {"x402Version": 2, "accepted": ACCEPTED, "payload": PAYLOAD}
ALLOWANCE = SpendingAllowance(CHAIN_ID, CLIENT.address, NODE.address, 10**9, 10**6, 1)
API_KEY = encode_api_key(ALLOWANCE, ALLOWANCE.sign(CLIENT))
API_KEY_JSON = base64.urlsafe_b64decode(API_KEY.removeprefix("haca_") + "==")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@atheris.instrument_func
def headers_of(mode: int, rest: bytes) -> dict[str, str]:
    text = rest.decode("utf-8", errors="surrogateescape")
    if mode == 0:
        return {"x-payment": text}
    if mode == 1:
        return {"PAYMENT-SIGNATURE": text}
    if mode == 2:
        return {"authorization": "Bearer " + text}
    if mode == 3:
        return {"x-payment": b64(rest)}
    if mode == 4:
        return {"PAYMENT-SIGNATURE": b64(rest)}
    return {"authorization": "Bearer haca_" + base64.urlsafe_b64encode(rest).decode().rstrip("=")}


@atheris.instrument_func
def test_one_input(data: bytes) -> None:
    if not data:
        return
    try:
        pending = GATE.check(headers_of(data[0] % 6, data[1:]), QUOTES)
    except (PaymentRequired, RequestConflict):
        return
    assert pending.client == pending.payment.signer()


def seeds() -> Iterator[bytes]:
    docs: list[tuple[int, Any]] = [(3, V1), (4, V2)]
    for mode, doc in docs:
        raw = json.dumps(doc).encode()
        yield bytes([mode]) + raw
        yield bytes([mode - 3]) + b64(raw).encode()
    yield b"\x02" + API_KEY.encode()
    yield b"\x05" + API_KEY_JSON


if __name__ == "__main__":
    fuzzlib.main("x402", test_one_input, seeds)
