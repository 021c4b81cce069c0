"""A paid answer lost on the way can be fetched again by the client that paid for it, and only by
it: GET /v1/outputs/{request_id} with the client's signature, or with the API key and the
Idempotency-Key the request was sent with (a retry of which is a 409, never a second charge)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from haca.client.payment import ReceiptInvalid, create_api_key, verify_answer
from haca.client.results import FetchedOutput
from haca.client.sdk import AsyncClient
from haca.crypto.keys import PrivateKey
from haca.types.outputs import StoredOutput, idempotent_request_id, sign_output_request
from haca.types.payment import decode_api_key
from tests.unit.node.nodehelpers import CHAIN_ID, CLIENT, HEIGHT, NODE, OTHER
from tests.unit.node.test_api import INPUT, SCHEMA, Node, assert_error, body, make_node, paid_headers


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return make_node(tmp_path)


def signed_by(key: PrivateKey, request_id: str) -> dict[str, str]:
    return {"X-HACA-Output-Signature": "0x" + sign_output_request(key, CHAIN_ID, NODE.address, request_id).hex()}


def test_the_paying_client_fetches_the_output_and_receipt_it_paid_for_and_no_one_else_does(node):
    auth, headers = paid_headers(node)
    answer = node.client.post("/v1/infer", json=body(), headers=headers).json()
    fetched = node.client.get(f"/v1/outputs/{auth.request_id}", headers=signed_by(CLIENT, auth.request_id))
    assert fetched.status_code == 200, fetched.text
    doc = fetched.json()
    assert (doc["output"], doc["receipt"], doc["status"]) == (answer["output"], answer["receipt"], "pending")
    assert (doc["request_id"], doc["receipt_id"], doc["expiry"]) == (
        auth.request_id,
        answer["receipt"]["id"],
        auth.expiry,
    )
    verify_answer(doc, INPUT, SCHEMA, NODE.address, auth)  # the same answer, checked as the SDK checks one
    # another key's signature recovers another client: found nothing, as for a request never served
    assert_error(
        node.client.get(f"/v1/outputs/{auth.request_id}", headers=signed_by(OTHER, auth.request_id)),
        404,
        "output_not_found",
    )
    # a signature over another request id recovers some other address: nothing either
    other_id = "0x" + "ab" * 32
    assert_error(
        node.client.get(f"/v1/outputs/{auth.request_id}", headers=signed_by(CLIENT, other_id)), 404, "output_not_found"
    )


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthenticated"),
        ({"X-HACA-Output-Signature": "0x1234"}, 401, "unauthenticated"),
        ({"X-HACA-Output-Signature": "0x" + "00" * 65}, 401, "unauthenticated"),
        ({"Authorization": "Bearer haca_notakey", "Idempotency-Key": "k"}, 401, "unauthenticated"),
    ],
    ids=["no_credentials", "short_signature", "zero_signature", "bad_api_key"],
)
def test_fetching_without_valid_credentials_is_a_401_with_a_json_error(node, headers, status, code):
    assert_error(node.client.get(f"/v1/outputs/0x{'11' * 32}", headers=headers), status, code)


def test_a_malformed_request_id_is_a_400(node):
    assert_error(
        node.client.get("/v1/outputs/0x12", headers=signed_by(CLIENT, "0x" + "12" * 32)), 400, "invalid_request"
    )


def test_an_idempotency_key_makes_an_api_key_retry_a_409_charged_once_and_the_output_fetchable(node):
    """An agent's answer is lost; it retries with the same Idempotency-Key: refused (409) with
    where to fetch it, and only one receipt is charged; the output is fetched with the same headers."""
    api_key = create_api_key(CLIENT, CHAIN_ID, NODE.address, cap=100, expiry=HEIGHT + 1000, nonce=1)
    headers = {"Authorization": f"Bearer {api_key}", "Idempotency-Key": "order-42-7f3c9a1e5b2d"}
    first = node.client.post("/v1/infer", json=body(), headers=headers)
    assert first.status_code == 200, first.text
    request_id = idempotent_request_id(decode_api_key(api_key).value.id, "order-42-7f3c9a1e5b2d")  # type: ignore[union-attr]
    assert first.json()["receipt"]["request_id"] == request_id
    message = assert_error(node.client.post("/v1/infer", json=body(), headers=headers), 409, "request_conflict")
    assert f"GET /v1/outputs/{request_id}" in message
    assert node.store.unsettled_count() == 1
    fetched = node.client.get(f"/v1/outputs/{request_id}", headers=headers)
    assert fetched.status_code == 200 and fetched.json()["output"] == first.json()["output"]
    # the API key alone (public once its allowance settles on chain) fetches nothing
    assert_error(
        node.client.get(f"/v1/outputs/{request_id}", headers={"Authorization": f"Bearer {api_key}"}),
        401,
        "unauthenticated",
    )
    other_key = {**headers, "Idempotency-Key": "order-43-7f3c9a1e5b2d"}
    assert_error(node.client.get(f"/v1/outputs/{request_id}", headers=other_key), 404, "output_not_found")


@pytest.mark.parametrize(
    "key", ["x" * 256, "short-and-guessy", "tab\tinside-the-key-0123"], ids=["too_long", "too_short", "not_printable"]
)
def test_an_idempotency_key_too_short_too_long_or_not_printable_is_a_400(node, key):
    api_key = create_api_key(CLIENT, CHAIN_ID, NODE.address, cap=100, expiry=HEIGHT + 1000, nonce=1)
    headers = {"Authorization": f"Bearer {api_key}", "Idempotency-Key": key[:15] if key.startswith("short") else key}
    message = assert_error(node.client.post("/v1/infer", json=body(), headers=headers), 400, "invalid_request")
    assert message == "Idempotency-Key must be 16 to 255 printable ASCII characters, random per request (a UUID)"
    assert node.store.unsettled_count() == 0


def test_an_api_key_request_whose_payment_never_expires_is_kept_within_the_retention_bound(node):
    """An allowance expiring at 2**64 - 1 once wedged the receipt database (an integer too large
    for SQLite inside an open transaction): it is served, and so is the next request."""
    api_key = create_api_key(CLIENT, CHAIN_ID, NODE.address, cap=100, expiry=2**64 - 1, nonce=1)
    headers = {"Authorization": f"Bearer {api_key}"}
    assert [node.client.post("/v1/infer", json=body(), headers=headers).status_code for _ in range(2)] == [200, 200]
    assert node.store.unsettled_count() == 2


def test_outputs_are_dropped_once_their_payment_has_expired(node):
    auth, headers = paid_headers(node)
    node.client.post("/v1/infer", json=body(), headers=headers)
    assert node.store.drop_outputs(auth.expiry) == 0  # still valid at its expiry height
    assert node.store.drop_outputs(auth.expiry + 1) == 1
    assert_error(
        node.client.get(f"/v1/outputs/{auth.request_id}", headers=signed_by(CLIENT, auth.request_id)),
        404,
        "output_not_found",
    )


def fetch(node: Node, request_id: str) -> FetchedOutput:
    """AsyncClient.fetch_output against the node app in-process (ASGI)."""

    async def run() -> FetchedOutput:
        client = AsyncClient("http://node.test", CLIENT, chain=None, node_address=NODE.address)  # type: ignore[arg-type]
        client.chain = SimpleNamespace(chain_id=CHAIN_ID)  # type: ignore[assignment]
        client.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=node.app))
        try:
            return await client.fetch_output(request_id)
        finally:
            await client.http.aclose()

    return asyncio.run(run())


def test_the_sdk_fetches_a_lost_output_and_refuses_one_that_is_not_what_the_receipt_commits_to(node, monkeypatch):
    auth, headers = paid_headers(node)
    answer = node.client.post("/v1/infer", json=body(), headers=headers).json()
    fetched = fetch(node, auth.request_id)
    assert (fetched.output, fetched.receipt.id) == ({"output": answer["output"]}, answer["receipt"]["id"])
    assert fetched.status == "pending"
    real = node.store.output

    def changed(client: str, request_id: str) -> StoredOutput:  # a node answering another output
        kept = real(client, request_id)
        assert kept is not None
        output = {"y": {**kept.output["output"]["y"], "data": [[9.0, 9.0]]}}
        return StoredOutput(kept.request_id, kept.receipt_id, {"output": output}, kept.expiry)

    monkeypatch.setattr(node.store, "output", changed)
    with pytest.raises(ReceiptInvalid, match="not the one its receipt commits to"):
        fetch(node, auth.request_id)
