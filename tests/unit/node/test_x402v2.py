"""The node's x402 v2 headers: what the official x402 package reads from PAYMENT-REQUIRED and
PAYMENT-RESPONSE, and what the node accepts as a PAYMENT-SIGNATURE."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from x402.http.utils import decode_payment_required_header, decode_payment_response_header
from x402.schemas import PaymentRequired

from haca.crypto.keys import PrivateKey
from haca.node.x402v2 import decode_payment_signature, payment_required_header, payment_response_header
from haca.types.payment import AUTHORIZATION_FIELDS

CHAIN = "haca-devnet"
NODE = PrivateKey.from_seed("node").address
CLIENT = PrivateKey.from_seed("client").address
IRIS, MLP = "sha256:" + "ab" * 32, "sha256:" + "cd" * 32
URL = "http://127.0.0.1:8000/v1/infer"


def accept(model_id: str, model: str, mode: str, price: int, unit: str, max_rows: int) -> dict[str, Any]:
    """One accept as PaymentGate._accept builds it (x402 v1 shape)."""
    height = 40
    return {
        "scheme": "haca-escrow",
        "network": CHAIN,
        "asset": "opg",
        "maxAmountRequired": str(price * (max_rows if unit == "row" else 1)),
        "payTo": NODE,
        "resource": URL,
        "description": f"inference on {model} ({mode}): {price} per {unit}",
        "mimeType": "application/json",
        "maxTimeoutSeconds": 60,
        "extra": {
            "model_id": model_id,
            "model": model,
            "mode": mode,
            "price": str(price),
            "price_unit": unit,
            "max_rows": max_rows,
            "terms_height": height - 1,
            "height": height,
            "min_expiry": height + 5,
            "suggested_expiry": height + 100,
            "eip712": {"primaryType": "PaymentAuthorization", "fields": AUTHORIZATION_FIELDS},
            "api_key": "or send 'Authorization: Bearer haca_…' from `haca allowance create`",
        },
    }


def requirements_v1() -> dict[str, Any]:
    return {
        "x402Version": 1,
        "error": "payment required",
        "accepts": [
            accept(IRIS, "iris", "vanilla", 10_000, "request", 16),
            accept(MLP, "mlp-regressor", "tee", 20_000, "row", 64),
        ],
    }


def test_payment_required_decodes_with_the_x402_package_as_v2() -> None:
    decoded = decode_payment_required_header(payment_required_header(requirements_v1(), URL))
    assert isinstance(decoded, PaymentRequired)
    assert decoded.x402_version == 2
    assert decoded.error == "payment required"
    assert decoded.resource is not None
    assert decoded.resource.url == URL
    assert decoded.resource.mime_type == "application/json"
    assert decoded.resource.description == "paid inference: iris (vanilla), mlp-regressor (tee)"
    iris, mlp = decoded.accepts
    assert (iris.scheme, iris.network, iris.asset, iris.amount) == ("haca-escrow", "haca:haca-devnet", "opg", "10000")
    assert (iris.pay_to, iris.max_timeout_seconds) == (NODE, 60)
    assert iris.extra == json.loads(json.dumps(requirements_v1()["accepts"][0]["extra"]))  # as JSON: tuples are lists
    assert mlp.amount == str(20_000 * 64)
    assert mlp.extra["model_id"] == MLP and mlp.extra["mode"] == "tee"


def test_one_offer_keeps_its_own_description() -> None:
    one = requirements_v1()
    one["accepts"] = one["accepts"][:1]
    decoded = decode_payment_required_header(payment_required_header(one, URL))
    assert isinstance(decoded, PaymentRequired) and decoded.resource is not None
    assert decoded.resource.description == "inference on iris (vanilla): 10000 per request"


def test_no_offer_is_still_a_payment_required() -> None:
    empty = {"x402Version": 1, "error": "this node serves nothing at this height", "accepts": []}
    decoded = decode_payment_required_header(payment_required_header(empty, URL))
    assert isinstance(decoded, PaymentRequired) and decoded.accepts == []
    assert decoded.error == "this node serves nothing at this height"


def test_payment_response_decodes_with_the_x402_package() -> None:
    receipt_id = "0x" + "77" * 32
    settled = decode_payment_response_header(payment_response_header(CLIENT, CHAIN, receipt_id, 30_000))
    assert settled.success is True
    assert (settled.payer, settled.transaction, settled.network, settled.amount) == (
        CLIENT,
        receipt_id,
        "haca:haca-devnet",
        "30000",
    )


def encode(doc: Any) -> str:
    return base64.b64encode(json.dumps(doc).encode()).decode()


def payment_payload(**changes: Any) -> dict[str, Any]:
    accepted = {
        "scheme": "haca-escrow",
        "network": "haca:haca-devnet",
        "asset": "opg",
        "amount": "10000",
        "payTo": NODE,
        "maxTimeoutSeconds": 60,
        "extra": {},
    }
    doc: dict[str, Any] = {
        "x402Version": 2,
        "accepted": accepted,
        "resource": {"url": URL},
        "payload": {"authorization": {"chain_id": CHAIN}, "signature": "0x" + "00" * 65},
    }
    for key, value in changes.items():
        if key in accepted:
            accepted[key] = value
        else:
            doc[key] = value
    return doc


def test_a_v2_payment_signature_yields_its_inner_payload() -> None:
    assert decode_payment_signature(encode(payment_payload()), CHAIN) == {
        "authorization": {"chain_id": CHAIN},
        "signature": "0x" + "00" * 65,
    }


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (encode(payment_payload(x402Version=1)), "x402Version must be 2"),
        (encode(payment_payload(x402Version="2")), "x402Version must be 2"),
        (encode(payment_payload(x402Version=True)), "x402Version must be 2"),
        (encode({k: v for k, v in payment_payload().items() if k != "x402Version"}), "x402Version must be 2"),
        (encode(payment_payload(scheme="exact")), "scheme must be 'haca-escrow'"),
        (encode(payment_payload(network="haca:other-chain")), "network must be 'haca:haca-devnet'"),
        (encode(payment_payload(network="haca-devnet")), "network must be 'haca:haca-devnet'"),
        (encode(payment_payload(accepted="haca-escrow")), "'accepted' must be an object"),
        (encode({k: v for k, v in payment_payload().items() if k != "payload"}), "'payload' must be an object"),
        (encode(payment_payload(payload=["authorization", "signature"])), "'payload' must be an object"),
        (encode(payment_payload(payload={"authorization": {}})), r"missing fields \['signature'\]"),
        (encode(payment_payload(payload={})), r"missing fields \['authorization', 'signature'\]"),
        ("not base64!", "not valid base64"),
        ("eyJ4NDAyVmVyc2lvbiI6Mn0", "not valid base64"),  # unpadded
        ("ZG9n", "not base64 of UTF-8 JSON"),  # "dog"
        (base64.b64encode(b"\xff\xfe{}").decode(), "not base64 of UTF-8 JSON"),
        (encode([1, 2]), "must be a JSON object"),
        (encode("x"), "must be a JSON object"),
        (encode(None), "must be a JSON object"),
        (base64.b64encode(b"[" * 100_000 + b"]" * 100_000).decode(), "longer than|not base64 of UTF-8 JSON"),
        ("é" * 8, "not valid base64"),
    ],
)
def test_a_bad_payment_signature_is_refused(header: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_payment_signature(header, CHAIN)


def test_headers_for_a_chain_id_that_is_no_caip2_reference_are_refused() -> None:
    with pytest.raises(ValueError, match="CAIP-2"):
        decode_payment_signature(encode(payment_payload()), "chain with spaces")
    with pytest.raises(ValueError, match="CAIP-2"):
        payment_response_header(CLIENT, "chain with spaces", "0x" + "77" * 32, 1)
