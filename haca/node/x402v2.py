"""The node's x402 version 2 wire format, built from and reduced to what `PaymentGate` speaks.

- `payment_required_header`: the 402's `PAYMENT-REQUIRED` header (base64 JSON `PaymentRequired`),
  from the gate's v1-shaped requirements (`PaymentGate.requirements`).
- `decode_payment_signature`: a `PAYMENT-SIGNATURE` header (base64 JSON `PaymentPayload`) down to
  the scheme's inner payload `{"authorization", "signature"}`, which the gate checks as it does
  the payload of a v1 `X-PAYMENT`.
- `payment_response_header`: the paid answer's `PAYMENT-RESPONSE` header (base64 JSON
  `SettleResponse`): the receipt stands for the settlement, which the node posts later.

Plain json/base64 on purpose: the node does not depend on the x402 package.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from haca.types.x402 import SCHEME, X402_VERSION, caip2_network

MAX_HEADER_CHARS = 64 * 1024  # a PAYMENT-SIGNATURE is ~2 KiB; refuse to parse anything far larger


def _encode(doc: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()


def payment_required_header(requirements_v1: dict[str, Any], resource_url: str) -> str:
    """The x402 v2 `PaymentRequired` for the gate's v1 requirements, base64-encoded JSON.

    Each v1 accept becomes a v2 one (network as CAIP-2, `maxAmountRequired` as `amount`, `extra`
    unchanged); v1's per-accept resource, description and mime type become the one `resource`
    (the description is the accepts' common one, else a list of the model offers)."""
    accepts_v1 = requirements_v1["accepts"]
    accepts = [
        {
            "scheme": accept["scheme"],
            "network": caip2_network(accept["network"]),
            "asset": accept["asset"],
            "amount": str(accept["maxAmountRequired"]),
            "payTo": accept["payTo"],
            "maxTimeoutSeconds": int(accept["maxTimeoutSeconds"]),
            "extra": accept.get("extra", {}),
        }
        for accept in accepts_v1
    ]
    descriptions = {str(a["description"]) for a in accepts_v1 if a.get("description")}
    if len(descriptions) == 1:
        description = descriptions.pop()
    else:
        offers = sorted(
            {f"{a['extra']['model']} ({a['extra']['mode']})" for a in accepts_v1 if "model" in a.get("extra", {})}
        )
        description = "paid inference: " + ", ".join(offers) if offers else "paid inference"
    mime_types = {str(a["mimeType"]) for a in accepts_v1 if a.get("mimeType")}
    doc: dict[str, Any] = {
        "x402Version": X402_VERSION,
        "error": str(requirements_v1.get("error", "payment required")),
        "resource": {
            "url": resource_url,
            "description": description,
            "mimeType": mime_types.pop() if len(mime_types) == 1 else "application/json",
        },
        "accepts": accepts,
    }
    return _encode(doc)


def decode_payment_signature(header: str, chain_id: str) -> dict[str, Any]:
    """The inner payload `{"authorization": …, "signature": …}` of a `PAYMENT-SIGNATURE` header
    for scheme `haca-escrow` on this chain; ValueError naming what is wrong otherwise. Neither the
    authorisation nor the signature is checked here (the payment gate does)."""
    if not isinstance(header, str):
        raise ValueError("PAYMENT-SIGNATURE must be a string")
    if len(header) > MAX_HEADER_CHARS:
        raise ValueError(f"PAYMENT-SIGNATURE is longer than {MAX_HEADER_CHARS} characters")
    try:
        raw = base64.b64decode(header.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("PAYMENT-SIGNATURE is not valid base64") from exc
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError("PAYMENT-SIGNATURE is not base64 of UTF-8 JSON") from exc
    if not isinstance(doc, dict):
        raise ValueError("PAYMENT-SIGNATURE must be a JSON object (an x402 PaymentPayload)")
    version = doc.get("x402Version")
    if type(version) is not int or version != X402_VERSION:
        raise ValueError(f"PAYMENT-SIGNATURE: x402Version must be {X402_VERSION}, got {version!r}")
    accepted = doc.get("accepted")
    if not isinstance(accepted, dict):
        raise ValueError("PAYMENT-SIGNATURE: 'accepted' must be an object (the payment requirements paid)")
    network = caip2_network(chain_id)
    if accepted.get("scheme") != SCHEME:
        raise ValueError(f"PAYMENT-SIGNATURE: scheme must be {SCHEME!r}, got {accepted.get('scheme')!r}")
    if accepted.get("network") != network:
        raise ValueError(f"PAYMENT-SIGNATURE: network must be {network!r}, got {accepted.get('network')!r}")
    payload = doc.get("payload")
    if not isinstance(payload, dict):
        raise ValueError("PAYMENT-SIGNATURE: 'payload' must be an object")
    missing = sorted({"authorization", "signature"} - set(payload))
    if missing:
        raise ValueError(f"PAYMENT-SIGNATURE payload: missing fields {missing}")
    return {"authorization": payload["authorization"], "signature": payload["signature"]}


def payment_response_header(payer: str, chain_id: str, receipt_id: str, amount: int) -> str:
    """The x402 v2 `SettleResponse` of a paid answer, base64-encoded JSON. `transaction` is the
    receipt's id: the node settles its receipts on chain in batches later, and the receipt id is
    what identifies this payment in that settlement."""
    return _encode(
        {
            "success": True,
            "payer": payer,
            "transaction": receipt_id,
            "network": caip2_network(chain_id),
            "amount": str(amount),
        }
    )
