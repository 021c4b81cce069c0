"""tee queries: /tee/policy, /tee/measurements (every approval), /tee/node_enclaves (data: node
address), /tee/enclave (data "key" for its record and coverage, or "key@height/model" for its
standing for one receipt, with the attestation that covers that height, so a client can
re-verify it)."""

from __future__ import annotations

from typing import Any

from haca.chain.errors import InvalidQuery, NotFound
from haca.chain.modules.tee.keeper import (
    POLICY_KEY,
    TeeKeeper,
    approval_key,
    attestation_key,
    cover_key,
    enclave_key,
)
from haca.chain.query_args import address_arg
from haca.chain.state import ReadableState
from haca.types import fields
from haca.types.tee import GLOBAL_SCOPE

Answer = tuple[dict[str, Any], list[bytes]]


def query_policy(tee: TeeKeeper, state: ReadableState, data: bytes) -> Answer:
    return tee.policy(state).to_json(), [POLICY_KEY]


def query_measurements(tee: TeeKeeper, state: ReadableState, data: bytes) -> Answer:
    approvals = tee.approvals(state)
    return {"approvals": approvals}, [approval_key(a["model"], a["measurement_id"]) for a in approvals]


def query_node_enclaves(tee: TeeKeeper, state: ReadableState, data: bytes) -> Answer:
    node = address_arg(data)
    keys = tee.node_keys(state, node)
    enclaves = [e.to_json() for e in (tee.enclave(state, key) for key in keys) if e is not None]
    return {"node": node, "enclaves": enclaves}, [enclave_key(key) for key in keys]


def query_enclave(tee: TeeKeeper, state: ReadableState, data: bytes) -> Answer:
    key_part, at, rest = data.partition(b"@")
    key = address_arg(key_part)
    record = tee.enclave(state, key)
    if record is None:
        raise NotFound(f"{key} is not a registered enclave key")
    segments = tee.segments(state, key)
    answer: dict[str, Any] = {
        "enclave": record.to_json(),
        "segments": [{"start": s.start, "until": s.until} for s in segments],
    }
    keys = [enclave_key(key)] + [cover_key(key, s.start) for s in segments]
    if not at:
        return answer, keys
    height_text, slash, model = rest.decode(errors="replace").partition("/")
    if not (height_text.isascii() and height_text.isdigit() and len(height_text) <= 19) or not slash:
        raise InvalidQuery("query data must be 'key' or 'key@height/model'")
    try:
        fields.name(model, "model")
    except ValueError as exc:
        raise InvalidQuery(str(exc)) from exc
    height = int(height_text)
    standing = tee.standing(state, key, height, model)
    assert standing is not None  # the record exists
    segment = tee.segment_at(state, key, height)
    attestation = tee.attestation(state, key, segment.start) if segment else None
    answer.update(
        height=height,
        model=model,
        covered=standing.covered,
        approved=standing.approved,
        detail=standing.detail,
        attestation=attestation,
    )
    if segment is not None:
        keys.append(attestation_key(key, segment.start))
    keys += [approval_key(GLOBAL_SCOPE, record.measurement_id), approval_key(model, record.measurement_id)]
    return answer, keys
