"""`GET /v1/outputs/{request_id}`: the output a client paid for, fetched again (its response was
lost after the receipt was queued). Only the paying client gets it — see haca.types.outputs for
the two ways it proves that — and any other caller gets the same 404 as for a request never
served, so nothing says whether a request exists."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from haca.crypto.keys import SignatureError
from haca.node.context import NodeContext
from haca.node.errors import InvalidRequest, OutputNotFound, Unauthenticated
from haca.types import fields
from haca.types.outputs import (
    IDEMPOTENCY_HEADER,
    OUTPUT_SIGNATURE_HEADER,
    idempotency_key,
    idempotent_request_id,
    output_requester,
)
from haca.types.payment import API_KEY_PREFIX, SpendingAllowance, decode_api_key


def paying_client(ctx: NodeContext, headers: Mapping[str, str], request_id: str) -> str:
    """The client asking for `request_id`'s output, as its credentials prove (401 without any)."""
    signature = headers.get(OUTPUT_SIGNATURE_HEADER.lower())
    if signature is not None:
        try:
            raw = fields.hex_bytes(signature, OUTPUT_SIGNATURE_HEADER, 65)
            return output_requester(ctx.chain_id, ctx.key.address, request_id, raw)
        except (ValueError, SignatureError) as exc:
            raise Unauthenticated(f"invalid {OUTPUT_SIGNATURE_HEADER}: {exc}") from None
    bearer = headers.get("authorization", "")
    key = headers.get(IDEMPOTENCY_HEADER.lower())
    if bearer.lower().startswith("bearer ") and key is not None:
        try:
            payment = decode_api_key(bearer[7:].strip())
            allowance = payment.value
            assert isinstance(allowance, SpendingAllowance)
            signer = payment.signer()
            key = idempotency_key(key)
        except (ValueError, SignatureError) as exc:
            raise Unauthenticated(f"invalid API key or {IDEMPOTENCY_HEADER}: {exc}") from None
        if signer != allowance.client or allowance.node != ctx.key.address:
            raise Unauthenticated(f"the API key is not an allowance of its client for this node {ctx.key.address}")
        if idempotent_request_id(allowance.id, key) != request_id:
            raise OutputNotFound(f"no output of request {request_id} for these credentials")
        return allowance.client
    raise Unauthenticated(
        f"fetching an output takes the paying client's {OUTPUT_SIGNATURE_HEADER} (EIP-712 OutputRequest), or"
        f" the 'Authorization: Bearer {API_KEY_PREFIX}…' and {IDEMPOTENCY_HEADER} the request was sent with"
    )


def output_answer(ctx: NodeContext, headers: Mapping[str, str], request_id: str) -> dict[str, Any]:
    """The kept output and its receipt (with its settlement status), for the paying client only."""
    try:
        request_id = fields.bytes32(request_id.lower(), "request id")
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    client = paying_client(ctx, headers, request_id)
    kept = ctx.store.output(client, request_id)
    stored = ctx.store.get(kept.receipt_id) if kept is not None else None
    if kept is None or stored is None:
        raise OutputNotFound(f"no output of request {request_id} for these credentials")
    return {**kept.to_json(), "receipt": stored.item.receipt.to_json(), "status": stored.status}
