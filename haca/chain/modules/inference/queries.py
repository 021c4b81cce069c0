"""inference queries: /inference/escrow (data "client" for every lane, or "client/node" for one),
/inference/receipt (receipt id), /inference/request ("client/request id"), /inference/batch (batch id),
/inference/allowance (allowance JSON), /inference/params, /inference/claim (receipt id)."""

from __future__ import annotations

import json
from typing import Any

from haca.chain.errors import InvalidQuery, NotFound
from haca.chain.modules.inference.keeper import (
    BATCH_PREFIX,
    CLAIM_PREFIX,
    ESCROW_PREFIX,
    LANE_WITHDRAWAL_PREFIX,
    PARAMS_KEY,
    RECEIPT_PREFIX,
    SPENT_PREFIX,
    InferenceKeeper,
    lane_key,
    settled_key,
)
from haca.chain.query_args import address_arg
from haca.chain.state import ReadableState
from haca.types import fields
from haca.types.inference import EscrowAnswer, EscrowLane, Withdrawal
from haca.types.payment import SpendingAllowance

Answer = tuple[dict[str, Any], list[bytes]]


def query_escrow(keeper: InferenceKeeper, state: ReadableState, data: bytes) -> Answer:
    client_part, slash, node_part = data.partition(b"/")
    client = address_arg(client_part)
    nodes = [address_arg(node_part)] if slash else keeper.lanes(state, client)
    lanes = tuple(_lane(keeper, state, client, node) for node in nodes)
    answer = EscrowAnswer(client, sum(lane.escrow for lane in lanes), lanes)
    keys = [ESCROW_PREFIX + lane_key(client, node) for node in nodes]
    keys += [
        LANE_WITHDRAWAL_PREFIX + lane_key(client, lane.node) + w.release_height.to_bytes(8, "big")
        for lane in lanes
        for w in lane.withdrawals
    ]
    return answer.to_json(), keys


def _lane(keeper: InferenceKeeper, state: ReadableState, client: str, node: str) -> EscrowLane:
    escrow, withdrawals = keeper.escrow(state, client, node), keeper.withdrawals(state, client, node)
    withdrawing = sum(amount for _, amount in withdrawals)
    pending = tuple(Withdrawal(h, a) for h, a in withdrawals)
    # available: what the node may still serve against
    return EscrowLane(node, escrow, withdrawing, escrow - min(escrow, withdrawing), pending)


def _bytes32_arg(data: bytes, what: str) -> str:
    try:
        return fields.bytes32(data.decode(), what)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidQuery(str(exc)) from exc


def query_receipt(keeper: InferenceKeeper, state: ReadableState, data: bytes) -> Answer:
    receipt_id = _bytes32_arg(data, "receipt id")
    record = keeper.receipt(state, receipt_id)
    if record is None:
        raise NotFound(f"receipt {receipt_id} has not been settled")
    return record.to_json(), [RECEIPT_PREFIX + bytes.fromhex(receipt_id[2:])]


def query_allowance(keeper: InferenceKeeper, state: ReadableState, data: bytes) -> Answer:
    try:
        allowance = SpendingAllowance.from_json(json.loads(data))
        allowance_id = allowance.id
    except (ValueError, RecursionError) as exc:  # UnicodeEncodeError (a lone surrogate) is a ValueError
        raise InvalidQuery(f"query data must be an allowance JSON: {exc}") from exc
    spent = keeper.allowance_spent(state, allowance_id)
    revoked_from = keeper.revoked_from(state, allowance.client, allowance.node, allowance.nonce)
    answer = {
        "id": allowance_id,
        "cap": str(allowance.cap),
        "spent": str(spent),
        "revoked_from": revoked_from,  # 0: never revoked; else the height the revocation takes effect
    }
    keys = [
        SPENT_PREFIX + bytes.fromhex(allowance_id[2:]),
        keeper.revoked_key(allowance.client, allowance.node, allowance.nonce),
    ]
    return answer, keys


def query_params(keeper: InferenceKeeper, state: ReadableState, data: bytes) -> Answer:
    return keeper.params(state).to_json(), [PARAMS_KEY]


def query_claim(keeper: InferenceKeeper, state: ReadableState, data: bytes) -> Answer:
    """A pending claim on a receipt (gone once resolved or expired: see /inference/receipt)."""
    receipt_id = _bytes32_arg(data, "receipt id")
    claim = keeper.claim(state, receipt_id)
    if claim is None:
        raise NotFound(f"receipt {receipt_id} has no pending claim")
    return {"receipt_id": receipt_id, **claim.to_json()}, [CLAIM_PREFIX + bytes.fromhex(receipt_id[2:])]


def query_node_claims(keeper: InferenceKeeper, state: ReadableState, data: bytes) -> Answer:
    """The receipt ids of a node's pending claims, in deadline order (data: the node's address):
    what its settler must settle before they expire, whatever became of its own payments."""
    node = address_arg(data)
    ids = sorted(keeper.node_claims(state, node))
    claims = [(keeper.claim(state, rid), rid) for rid in ids]
    ordered = sorted((c.deadline, rid) for c, rid in claims if c is not None)
    return {"node": node, "claims": [{"receipt_id": rid, "deadline": d} for d, rid in ordered]}, []


def query_request(keeper: InferenceKeeper, state: ReadableState, data: bytes) -> Answer:
    """How a client's request settled (data "client/request id"): alone, its receipt's record
    (proven); in a batch, {receipt_id, batch, index, status, height} from the derived index, which
    has no state proof: it is a pointer, and the proof is the batch record (/inference/batch, proven)
    with the receipt's inclusion path from the batch tx (haca.client.batch)."""
    client_part, _, request_part = data.partition(b"/")
    client = address_arg(client_part)
    request_id = _bytes32_arg(request_part, "request id")
    mark = keeper.settled_request(state, client, request_id)
    if mark is None:
        raise NotFound(f"request {request_id} of {client} has not been settled")
    if "batch" in mark:
        return mark, []
    record = keeper.receipt(state, mark["receipt_id"])
    return record.to_json() if record else mark, [
        settled_key(client, request_id),
        RECEIPT_PREFIX + bytes.fromhex(mark["receipt_id"][2:]),
    ]


def query_batch(keeper: InferenceKeeper, state: ReadableState, data: bytes) -> Answer:
    """A settled batch's record: root, count, signer, what settled and what was rejected (index, code, reason)."""
    batch_id = _bytes32_arg(data, "batch id")
    record = keeper.batch(state, batch_id)
    if record is None:
        raise NotFound(f"batch {batch_id} has not been settled")
    return record.to_json(), [BATCH_PREFIX + bytes.fromhex(batch_id[2:])]
