"""HacaEscrowScheme in the official x402 (v2) client: from a node's PAYMENT-REQUIRED to a
PAYMENT-SIGNATURE the node accepts, signed by the client's key for exactly the offer's terms."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from x402 import x402Client, x402ClientSync
from x402.http.clients.httpx import PaymentError, x402_httpx_transport
from x402.http.utils import (
    decode_payment_required_header,
    decode_payment_response_header,
    encode_payment_signature_header,
)
from x402.interfaces import PaymentPayloadContext
from x402.schemas import (
    NoMatchingRequirementsError,
    PaymentPayload,
    PaymentPayloadV1,
    PaymentRequired,
    PaymentRequirements,
)

from haca.client.errors import HacaError
from haca.client.payment import PaymentRequiredError
from haca.client.x402 import HacaEscrowScheme, offer_policy
from haca.crypto.keys import PrivateKey
from haca.node.x402v2 import decode_payment_signature, payment_required_header, payment_response_header
from haca.types import fields
from haca.types.payment import AUTHORIZATION_FIELDS, PaymentAuthorization
from haca.types.x402 import PAYMENT_REQUIRED_HEADER, PAYMENT_RESPONSE_HEADER, PAYMENT_SIGNATURE_HEADER, caip2_network

CHAIN = "haca-devnet"
NETWORK = caip2_network(CHAIN)
KEY = PrivateKey.from_seed("client")
NODE = PrivateKey.from_seed("node").address
IRIS, MLP = "sha256:" + "ab" * 32, "sha256:" + "cd" * 32
URL = "http://node.test/v1/infer"
ONE_TOKEN = 10**18  # an explicit max fee as high as x402's default cap (the chain's price bound: test_payer_bounds)


def accept(model_id: str, model: str, mode: str, amount: int, expiry: int) -> dict[str, Any]:
    """One accept as PaymentGate._accept builds it (x402 v1 shape)."""
    return {
        "scheme": "haca-escrow",
        "network": CHAIN,
        "asset": "opg",
        "maxAmountRequired": str(amount),
        "payTo": NODE.upper().replace("0X", "0x"),  # checksum-ish case: the scheme signs it lower-case
        "resource": URL,
        "description": f"inference on {model} ({mode})",
        "mimeType": "application/json",
        "maxTimeoutSeconds": 60,
        "extra": {
            "model_id": model_id,
            "model": model,
            "mode": mode,
            "price": str(amount),
            "price_unit": "request",
            "max_rows": 8,
            "terms_height": 9,
            "height": 10,
            "min_expiry": 15,
            "suggested_expiry": expiry,
            "eip712": {"primaryType": "PaymentAuthorization", "fields": AUTHORIZATION_FIELDS},
            "api_key": "or send 'Authorization: Bearer haca_…'",
        },
    }


def node_402(*accepts: dict[str, Any]) -> str:
    offers = list(accepts) or [
        accept(IRIS, "iris", "vanilla", 10_000, 110),
        accept(MLP, "mlp-regressor", "tee", 160_000, 111),
    ]
    return payment_required_header({"x402Version": 1, "error": "payment required", "accepts": offers}, URL)


def payment_required(*accepts: dict[str, Any]) -> PaymentRequired:
    decoded = decode_payment_required_header(node_402(*accepts))
    assert isinstance(decoded, PaymentRequired)
    return decoded


def signed_authorization(payload: PaymentPayload | PaymentPayloadV1) -> tuple[PaymentAuthorization, str]:
    """What the node gets from the PAYMENT-SIGNATURE header: the authorisation and its signer."""
    assert isinstance(payload, PaymentPayload)
    inner = decode_payment_signature(encode_payment_signature_header(payload), CHAIN)
    auth = PaymentAuthorization.from_json(inner["authorization"])
    return auth, auth.signer(fields.hex_bytes(inner["signature"], "signature", 65))


def test_the_sync_client_pays_the_first_offer_with_a_signature_the_node_accepts() -> None:
    client = x402ClientSync().register(NETWORK, HacaEscrowScheme(KEY, max_fee=ONE_TOKEN))  # default spend controls
    payload = client.create_payment_payload(payment_required())
    assert isinstance(payload, PaymentPayload)
    assert (payload.x402_version, payload.accepted.scheme, payload.accepted.network) == (2, "haca-escrow", NETWORK)
    assert payload.resource is not None and payload.resource.url == URL
    auth, signer = signed_authorization(payload)
    assert signer == KEY.address == auth.client
    assert (auth.chain_id, auth.node, auth.model_id, auth.mode, auth.max_fee, auth.expiry) == (
        CHAIN,
        NODE,
        IRIS,
        "vanilla",
        10_000,
        110,
    )
    again, _ = signed_authorization(client.create_payment_payload(payment_required()))
    assert again.request_id != auth.request_id  # a fresh request id each time


def test_the_async_client_with_an_offer_policy_pays_the_offer_asked_for() -> None:
    client = x402Client().register("haca:*", HacaEscrowScheme(KEY, max_fee=200_000))
    client.register_policy(offer_policy("mlp-regressor", "tee"))
    payload = asyncio.run(client.create_payment_payload(payment_required()))
    assert isinstance(payload, PaymentPayload)
    auth, signer = signed_authorization(payload)
    assert signer == KEY.address
    assert (auth.model_id, auth.mode, auth.max_fee, auth.expiry) == (MLP, "tee", 160_000, 111)
    by_id = (
        x402ClientSync()
        .register(NETWORK, HacaEscrowScheme(KEY, max_fee=ONE_TOKEN))
        .register_policy(offer_policy(MLP, "tee"))
    )
    assert signed_authorization(by_id.create_payment_payload(payment_required()))[0].model_id == MLP
    nothing = (
        x402ClientSync()
        .register(NETWORK, HacaEscrowScheme(KEY, max_fee=ONE_TOKEN))
        .register_policy(offer_policy("iris", "zkml"))
    )
    with pytest.raises(NoMatchingRequirementsError, match="filtered out by policies"):
        nothing.create_payment_payload(payment_required())


def test_an_amount_above_the_max_fee_is_refused() -> None:
    client = x402ClientSync().register(NETWORK, HacaEscrowScheme(KEY, max_fee=9_999))
    with pytest.raises(PaymentRequiredError, match="node asks 10000, more than the max fee 9999") as refused:
        client.create_payment_payload(payment_required())
    assert isinstance(refused.value, HacaError)
    at_the_bound = x402ClientSync().register(NETWORK, HacaEscrowScheme(KEY, max_fee=10_000))
    assert signed_authorization(at_the_bound.create_payment_payload(payment_required()))[0].max_fee == 10_000


def test_default_spend_controls_know_the_denom_and_cap_one_whole_token() -> None:
    scheme = HacaEscrowScheme(KEY, max_fee=ONE_TOKEN)
    assert scheme.find_default_asset("opg", NETWORK) == {
        "asset": "opg",
        "name": "HACA opg",
        "symbol": "OPG",
        "decimals": 18,
    }
    assert scheme.find_default_asset("opg", "eip155:8453") is None
    client = x402ClientSync().register(NETWORK, scheme)
    one_token = accept(IRIS, "iris", "vanilla", 10**18, 110)
    assert signed_authorization(client.create_payment_payload(payment_required(one_token)))[0].max_fee == 10**18
    with pytest.raises(NoMatchingRequirementsError, match="max_amount_per_payment"):
        client.create_payment_payload(payment_required(accept(IRIS, "iris", "vanilla", 10**18 + 1, 110)))


def test_spend_controls_a_caller_sets_bound_what_is_signed() -> None:
    capped = x402ClientSync().register(NETWORK, HacaEscrowScheme(KEY, max_fee=ONE_TOKEN))
    capped.set_spend_controls(
        {"allowed_assets": [{"network": "haca:*", "asset": "opg", "max_amount_per_payment": "9999"}]}
    )
    with pytest.raises(NoMatchingRequirementsError, match="allowed_assets"):
        capped.create_payment_payload(payment_required(accept(IRIS, "iris", "vanilla", 10_000, 110)))
    # A mixed offer keeps what fits the cap.
    cheap = accept(MLP, "mlp-regressor", "tee", 5_000, 111)
    paid = capped.create_payment_payload(payment_required(accept(IRIS, "iris", "vanilla", 10_000, 110), cheap))
    assert signed_authorization(paid)[0].model_id == MLP
    # The cap x402Client passes to the scheme is enforced by the scheme too.
    requirement = payment_required().accepts[0]
    with pytest.raises(PaymentRequiredError, match="more than the spend cap 9999"):
        HacaEscrowScheme(KEY, max_fee=ONE_TOKEN).create_payment_payload(
            requirement, PaymentPayloadContext(max_amount_per_payment="9999")
        )
    assert HacaEscrowScheme(KEY, max_fee=ONE_TOKEN).create_payment_payload(requirement, PaymentPayloadContext())[
        "signature"
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"network": "eip155:8453"}, "not a HACA network"),
        ({"amount": "1.5"}, "amount"),
        ({"pay_to": "node"}, "node"),
        ({"extra": {}}, "model_id"),
        ({"scheme": "exact"}, "is not 'haca-escrow'"),
    ],
)
def test_unusable_requirements_are_refused(change: dict[str, Any], message: str) -> None:
    requirement: PaymentRequirements = payment_required().accepts[0].model_copy(update=change)
    with pytest.raises(PaymentRequiredError, match=message):
        HacaEscrowScheme(KEY, max_fee=ONE_TOKEN).create_payment_payload(requirement)


def test_the_httpx_wrapper_retries_a_402_with_a_payment_signature() -> None:
    seen: list[dict[str, Any]] = []

    def node(request: httpx.Request) -> httpx.Response:
        header = request.headers.get(PAYMENT_SIGNATURE_HEADER)
        if header is None:
            return httpx.Response(
                402, json={"x402Version": 1, "accepts": []}, headers={PAYMENT_REQUIRED_HEADER: node_402()}
            )
        inner = decode_payment_signature(header, CHAIN)
        seen.append(inner)
        auth = PaymentAuthorization.from_json(inner["authorization"])
        settled = payment_response_header(auth.client, CHAIN, "0x" + "77" * 32, auth.max_fee)
        return httpx.Response(200, json={"output": {}}, headers={PAYMENT_RESPONSE_HEADER: settled})

    async def call(scheme: HacaEscrowScheme) -> httpx.Response:
        client = x402Client().register(NETWORK, scheme).register_policy(offer_policy("iris", "vanilla"))
        async with httpx.AsyncClient(transport=x402_httpx_transport(client, httpx.MockTransport(node))) as http:
            return await http.post(URL, json={"model": "iris", "mode": "vanilla", "input": [[1, 2, 3, 4]]})

    answer = asyncio.run(call(HacaEscrowScheme(KEY, max_fee=ONE_TOKEN)))
    assert answer.status_code == 200
    settled = decode_payment_response_header(answer.headers[PAYMENT_RESPONSE_HEADER])
    assert (settled.payer, settled.amount, settled.network) == (KEY.address, "10000", NETWORK)
    assert len(seen) == 1
    # A refusal by the scheme reaches the caller wrapped in the package's PaymentError.
    with pytest.raises(PaymentError, match="more than the max fee 1") as refused:
        asyncio.run(call(HacaEscrowScheme(KEY, max_fee=1)))
    assert isinstance(refused.value.__cause__, PaymentRequiredError)
    assert len(seen) == 1
