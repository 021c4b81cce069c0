"""tee state under prefix `tee/`.

tee/policy                                   -> TeePolicy JSON
tee/approval/<scope>/<measurement id>        -> {"height", "authority"}   (scope: a model name or "*")
tee/enclave/<key:20>                         -> the enclave key's record (node, format, measurement, …,
                                                "gpus": a summary per GPU report of its latest attestation)
tee/node_key/<node:20><key:20>               -> b"" (a node's enclave keys)
tee/cover/<key:20><start:u64be>              -> last height covered ("good until") of a coverage segment
tee/attestation/<key:20><start:u64be>        -> the attestation that opened that segment (re-verifiable)
tee/lapse/<height:u64be><key:20>             -> b"" (the key lapses at that height unless re-attested)
tee/revoked/<scope>/<measurement id>         -> the height of its latest revocation (claims on receipts
                                                signed before it are voided, not slashed)
tee/gpu_required/<scope>                     -> the height it was last added to the policy's gpu_required
                                                (claims on receipts signed before it are voided, not slashed)

An attestation at height a covers receipts with height hints in [a, a + heartbeat_interval]. A
heartbeat inside a segment extends it; one after a lapse opens a new segment, so receipts signed
in the gap never settle. A node's heartbeats keep one segment (one key) per uninterrupted run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from haca.chain.state import CachedState, ReadableState, get_int, set_int
from haca.proofs.tee.policy import TeePolicy, gpu_missing
from haca.proofs.verifier import EnclaveStanding, VerdictCache
from haca.types.encoding import canonical_json
from haca.types.tee import (
    APPROVAL_PREFIX,
    COVER_PREFIX,
    GLOBAL_SCOPE,
    LAPSE_PREFIX,
    NODE_KEY_PREFIX,
    POLICY_KEY,
    EnclaveRecord,
    addr_bytes,
    approval_key,
    attestation_key,
    cover_key,
    enclave_key,
    gpu_required_key,
    lapse_key,
    revoked_key,
    u64,
)


@dataclass(frozen=True)
class Segment:
    start: int
    until: int  # inclusive


class TeeKeeper:
    def __init__(self) -> None:
        self.cache = VerdictCache(4096)  # verified attestations, keyed by evidence, roots and time

    # --- policy and approvals ---------------------------------------------------------------

    def policy(self, state: ReadableState) -> TeePolicy:
        raw = state.get(POLICY_KEY)
        return TeePolicy.from_json(json.loads(raw)) if raw else TeePolicy()

    def set_policy(self, state: CachedState, policy: TeePolicy) -> None:
        state.set(POLICY_KEY, canonical_json(policy.to_json()))

    def note_gpu_required(
        self, state: CachedState, before: tuple[str, ...], after: tuple[str, ...], height: int
    ) -> None:
        """Record the height at which each scope newly entered gpu_required."""
        for scope in sorted(set(after) - set(before)):
            set_int(state, gpu_required_key(scope), height)

    def gpu_required_since(self, state: ReadableState, model: str) -> int:
        """The height from which `model`'s receipts have needed GPU evidence without a break: the
        latest addition among the scopes requiring it now ("*", the model); 0 if none does."""
        required = set(self.gpu_required(state)) & {GLOBAL_SCOPE, model}
        return min((get_int(state, gpu_required_key(scope)) for scope in required), default=0)

    def gpu_required(self, state: ReadableState) -> tuple[str, ...]:
        """The policy's gpu_required, read without validating the whole policy (roots and all)."""
        raw = state.get(POLICY_KEY)
        return tuple(json.loads(raw).get("gpu_required", ())) if raw else ()

    def approval(self, state: ReadableState, scope: str, measurement_id: str) -> dict[str, Any] | None:
        raw = state.get(approval_key(scope, measurement_id))
        return json.loads(raw) if raw else None

    def approve(self, state: CachedState, scope: str, measurement_id: str, height: int, authority: str) -> None:
        state.set(approval_key(scope, measurement_id), canonical_json({"height": height, "authority": authority}))

    def revoke(self, state: CachedState, scope: str, measurement_id: str, height: int) -> None:
        state.delete(approval_key(scope, measurement_id))
        set_int(state, revoked_key(scope, measurement_id), height)

    def revoked_at(self, state: ReadableState, measurement_id: str, model: str) -> int:
        """The latest height at which governance revoked the measurement for `model` or for every
        model ("*"); 0 when it never did."""
        return max(get_int(state, revoked_key(scope, measurement_id)) for scope in (GLOBAL_SCOPE, model))

    def approved_scope(self, state: ReadableState, measurement_id: str, models: list[str]) -> str | None:
        """The scope ("*" or one of `models`) under which the measurement is approved now, if any."""
        for scope in (GLOBAL_SCOPE, *models):
            if state.get(approval_key(scope, measurement_id)) is not None:
                return scope
        return None

    def approvals(self, state: ReadableState) -> list[dict[str, Any]]:
        out = []
        for key, raw in state.iter_prefix(APPROVAL_PREFIX):
            scope, _, mid = key[len(APPROVAL_PREFIX) :].decode().partition("/")
            out.append({"model": scope, "measurement_id": mid, **json.loads(raw)})
        return out

    # --- enclave keys -----------------------------------------------------------------------

    def enclave(self, state: ReadableState, key: str) -> EnclaveRecord | None:
        raw = state.get(enclave_key(key))
        return EnclaveRecord.from_json(json.loads(raw)) if raw else None

    def node_keys(self, state: ReadableState, node: str) -> list[str]:
        prefix = NODE_KEY_PREFIX + addr_bytes(node)
        return ["0x" + k[len(prefix) :].hex() for k, _ in state.iter_prefix(prefix)]

    def segments(self, state: ReadableState, key: str) -> list[Segment]:
        prefix = COVER_PREFIX + addr_bytes(key)
        return [Segment(int.from_bytes(k[len(prefix) :], "big"), int(v)) for k, v in state.iter_prefix(prefix)]

    def segment_at(self, state: ReadableState, key: str, height: int) -> Segment | None:
        return next((s for s in self.segments(state, key) if s.start <= height <= s.until), None)

    def attestation(self, state: ReadableState, key: str, start: int) -> dict[str, Any] | None:
        raw = state.get(attestation_key(key, start))
        return json.loads(raw) if raw else None

    def record_attestation(
        self,
        state: CachedState,
        record: EnclaveRecord,
        attestation: dict[str, Any],
        height: int,
        interval: int,
    ) -> Segment:
        """Store an attestation of `record.key` at `height` (what it showed: `record`, its coverage
        heights set here): extend the open segment or open one."""
        key = record.key
        previous = self.enclave(state, key)
        segments = self.segments(state, key)
        last = segments[-1] if segments else None
        until = height + interval
        if last is not None and last.until >= height - 1:
            segment = Segment(last.start, until)
            state.delete(lapse_key(last.until + 1, key))
        else:
            segment = Segment(height, until)
            state.set(attestation_key(key, height), canonical_json(attestation))
        state.set(cover_key(key, segment.start), str(until).encode())
        state.set(lapse_key(until + 1, key), b"")
        registered = previous.registered_height if previous else height
        record = replace(record, registered_height=registered, attested_height=height, good_until=until)
        state.set(enclave_key(key), canonical_json(record.to_json()))
        state.set(NODE_KEY_PREFIX + addr_bytes(record.node) + addr_bytes(key), b"")
        return segment

    def lapsing(self, state: ReadableState, height: int) -> list[str]:
        """The keys whose coverage ends just before `height` (found by their height prefix)."""
        prefix = LAPSE_PREFIX + u64(height)
        return ["0x" + k[len(prefix) :].hex() for k, _ in state.iter_prefix(prefix)]

    def drop_lapse(self, state: CachedState, height: int, key: str) -> None:
        state.delete(lapse_key(height, key))

    def standing(self, state: ReadableState, key: str, height: int, model: str) -> EnclaveStanding | None:
        """Whether `key` may sign a receipt for `model` at `height`, judged now (revocation is immediate)."""
        record = self.enclave(state, key)
        if record is None:
            return None
        segment = self.segment_at(state, key, height)
        scope = self.approved_scope(state, record.measurement_id, [model])
        missing = gpu_missing(self.gpu_required(state), len(record.gpus), key, model)
        if segment is None:
            detail = (
                f"no attestation of enclave key {key} covers height {height}"
                f" (last attested at {record.attested_height}, good until {record.good_until}):"
                " a heartbeat was missed or the key was not yet registered"
            )
        elif scope is None:
            detail = f"measurement {record.measurement_id} is not approved for model {model!r} (revoked or never)"
        else:
            detail = missing
        approved = scope is not None and not missing
        return EnclaveStanding.from_record(record, segment is not None, approved, detail)
