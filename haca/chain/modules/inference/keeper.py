"""inference state under prefix `inference/`.

    inference/params                                                -> params JSON
    inference/escrow/<client:20><node:20>                           -> amount the client holds for that node
    inference/withdrawal/<release:u64be><client:20><node:20>        -> amount to pay back at that height
    inference/lane_withdrawal/<client:20><node:20><release:u64be>   -> the same amount, listed per lane
    inference/settled/<client:20><request id:32>                    -> receipt id (a request settles once)
    index/inference/settled/<client:20><request id:32>              -> JSON {receipt_id} (settled alone) or
                                                                       {receipt_id, batch, index, status,
                                                                       height} (in a batch): the one key read
                                                                       to refuse a second settlement (a derived
                                                                       index, not in the trie: the receipt
                                                                       record, or the batch record and its tx,
                                                                       commit to it)
    inference/batch/<batch id:32>                                   -> batch record JSON (root, count, signer,
                                                                       what settled, what was rejected and why)
    inference/receipt/<receipt id:32>                               -> settlement record JSON
    inference/allowance_spent/<allowance id:32>                     -> amount charged so far
    inference/allowance_revoked/<client:20><node:20><nonce:u64be>   -> height from which it is revoked
    inference/claim/<receipt id:32>                                 -> claim JSON (client, node, fee + settlement
                                                                       fee held, signer, payment kind, deadline)
    inference/claim_due/<deadline:u64be><receipt id:32>             -> "" (claims expiring at that height)
    inference/node_claim/<node:20><deadline:u64be><receipt id:32>   -> "" (a node's pending claims)
    inference/equivocation/<node:20><client:20><request id:32>      -> height it was reported (slashed once)

Escrow is held per (client, node) lane: only that node's receipts draw on it, so one deposit can
never back answers at two nodes. Withdrawals and revocations take effect after a delay (params)
long enough for the node to settle what it served before it saw them.

Escrowed tokens sit in the bank under ESCROW_ACCOUNT, so the bank's supply invariant covers them;
the sum of all client escrows and of the fees held by pending claims equals that account's
balance (see invariants.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from haca.chain.errors import InsufficientEscrow
from haca.chain.state import CachedState, ReadableState, get_int, set_int
from haca.chain.store import INDEX_PREFIX
from haca.chain.wiring import dependency
from haca.crypto.hashing import keccak256
from haca.proofs.verifier import verifiers
from haca.types.batch import BatchRecord
from haca.types.encoding import canonical_json
from haca.types.settlement import ClaimRecord, SettlementRecord

PREFIX = b"inference/"
PARAMS_KEY = PREFIX + b"params"
ESCROW_PREFIX = PREFIX + b"escrow/"
WITHDRAWAL_PREFIX = PREFIX + b"withdrawal/"
LANE_WITHDRAWAL_PREFIX = PREFIX + b"lane_withdrawal/"
SETTLED_PREFIX = PREFIX + b"settled/"
RECEIPT_PREFIX = PREFIX + b"receipt/"
SPENT_PREFIX = PREFIX + b"allowance_spent/"
REVOKED_PREFIX = PREFIX + b"allowance_revoked/"
CLAIM_PREFIX = PREFIX + b"claim/"
CLAIM_DUE_PREFIX = PREFIX + b"claim_due/"
NODE_CLAIM_PREFIX = PREFIX + b"node_claim/"
EQUIVOCATION_PREFIX = PREFIX + b"equivocation/"
BATCH_PREFIX = PREFIX + b"batch/"
SETTLED_INDEX_PREFIX = INDEX_PREFIX + PREFIX + b"settled/"
ESCROW_ACCOUNT = "0x" + keccak256(b"haca/module/inference/escrow")[12:].hex()


@runtime_checkable
class Bank(Protocol):
    """What this module needs from the bank (the expected-keeper idea): moving and burning tokens."""

    def send(self, state: CachedState, sender: str, recipient: str, amount: int) -> None: ...

    def burn(self, state: CachedState, holder: str, amount: int) -> None: ...


class MinStakes(Protocol):
    def min_stake(self, modes: Iterable[str]) -> int:
        """The stake a node serving `modes` needs."""


@runtime_checkable
class NodeStake(Protocol):
    """What this module needs from staking: a node's stake checked against its modes' minimum,
    read, and slashed (the slashed tokens paid out or burned)."""

    def require_stake(self, state: ReadableState, address: str, modes: Iterable[str]) -> None:
        """InsufficientStake when `address` has less bonded than serving `modes` needs."""

    def params(self, state: ReadableState) -> MinStakes: ...

    def bonded(self, state: ReadableState, address: str) -> int: ...

    def slash(self, state: CachedState, address: str, bps: int) -> int:
        """Take `bps` of the account's stake; the amount taken, held for `pay_out` / `burn`."""

    def pay_out(self, state: CachedState, recipient: str, amount: int) -> None: ...

    def burn(self, state: CachedState, amount: int) -> None: ...


@dataclass(frozen=True)
class InferenceParams:
    # A delay of 0 would release a withdrawal at a height whose begin-block already ran.
    MINIMUMS: ClassVar[dict[str, int]] = {"withdraw_delay": 1, "revoke_delay": 1, "claim_deadline": 1}
    LIMITS: ClassVar[dict[str, int]] = {
        "withdraw_delay": 1 << 32,
        "revoke_delay": 1 << 32,
        "settlement_fee": 10**18,
        "settlement_fee_bps": 10_000,
        "claim_deadline": 1 << 32,
        "claim_window": 1 << 32,
        "claim_slash_bps": 10_000,
        "claim_compensation_bps": 10_000,
        "equivocation_slash_bps": 10_000,
        "equivocation_reward_bps": 10_000,
    }

    withdraw_delay: int = 20  # blocks between MsgWithdraw and the payout
    revoke_delay: int = 20  # blocks between MsgRevokeAllowance and the revocation taking effect
    settlement_fee: int = 100  # flat part of the burned settlement fee, per receipt
    settlement_fee_bps: int = 500  # plus this share of the inference fee (basis points)
    claim_deadline: int = 50  # blocks a node has to settle a claimed receipt with its evidence
    claim_window: int = 500  # blocks after its height that a receipt may be claimed (unbonding outlasts it)
    claim_slash_bps: int = 1_000  # share of the node's stake slashed for a claim it let expire
    claim_compensation_bps: int = 5_000  # share of that slash paid to the claiming client (the rest burned)
    equivocation_slash_bps: int = 2_000  # share of the node's stake slashed for two answers to one request
    equivocation_reward_bps: int = 1_000  # share of that slash paid to whoever reported it (the rest burned)

    def settlement_fee_for(self, fee: int) -> int:
        """Burned per settled receipt, paid from the client's escrow on top of the fee."""
        return self.settlement_fee + fee * self.settlement_fee_bps // 10_000

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def _addr(address: str) -> bytes:
    return bytes.fromhex(address[2:])


def lane_key(client: str, node: str) -> bytes:
    return _addr(client) + _addr(node)


def settled_key(client: str, request_id: str) -> bytes:
    return SETTLED_PREFIX + _addr(client) + bytes.fromhex(request_id[2:])


def settled_index_key(client: str, request_id: str) -> bytes:
    return SETTLED_INDEX_PREFIX + _addr(client) + bytes.fromhex(request_id[2:])


class InferenceKeeper:
    def __init__(self, bank: Bank, staking: NodeStake, srs_dir: Path | None = None) -> None:
        self.bank = dependency("InferenceKeeper", "bank", bank, Bank)
        self.staking = dependency("InferenceKeeper", "staking", staking, NodeStake)
        # One verifier per mode, sharing a verdict cache across CheckTx, recheck, proposals and
        # FinalizeBlock (it holds only context-free results, so every validator agrees).
        self.verifiers = verifiers()
        self.srs_dir = srs_dir  # zkml: where this validator keeps the genesis SRS files (None: it has none)

    # --- params ---------------------------------------------------------------------------------

    def params(self, state: ReadableState) -> InferenceParams:
        raw = state.get(PARAMS_KEY)
        return InferenceParams(**json.loads(raw)) if raw else InferenceParams()

    def set_params(self, state: CachedState, params: InferenceParams) -> None:
        state.set(PARAMS_KEY, canonical_json(params.to_json()))

    # --- escrow ---------------------------------------------------------------------------------

    def escrow(self, state: ReadableState, client: str, node: str) -> int:
        return get_int(state, ESCROW_PREFIX + lane_key(client, node))

    def lanes(self, state: ReadableState, client: str) -> list[str]:
        """The nodes the client holds escrow for (in address order)."""
        prefix = ESCROW_PREFIX + _addr(client)
        return ["0x" + k[len(prefix) :].hex() for k, _ in state.iter_prefix(prefix)]

    def deposit(self, state: CachedState, client: str, node: str, amount: int) -> None:
        self.bank.send(state, client, ESCROW_ACCOUNT, amount)
        set_int(state, ESCROW_PREFIX + lane_key(client, node), self.escrow(state, client, node) + amount)

    def withdrawing(self, state: ReadableState, client: str, node: str) -> int:
        """The total of the lane's pending withdrawals (a lane has few: the sum is read, not kept)."""
        return sum(amount for _, amount in self.withdrawals(state, client, node))

    def request_withdrawal(self, state: CachedState, client: str, node: str, amount: int, height: int) -> int:
        lane = lane_key(client, node)
        have, pending = self.escrow(state, client, node), self.withdrawing(state, client, node)
        if amount + pending > have:
            raise InsufficientEscrow(f"escrow for {node} is {have}, already withdrawing {pending}, asked {amount}")
        release = height + self.params(state).withdraw_delay
        key = WITHDRAWAL_PREFIX + release.to_bytes(8, "big") + lane
        set_int(state, key, get_int(state, key) + amount)
        listed = LANE_WITHDRAWAL_PREFIX + lane + release.to_bytes(8, "big")
        set_int(state, listed, get_int(state, listed) + amount)
        return release

    def withdrawals(self, state: ReadableState, client: str, node: str) -> list[tuple[int, int]]:
        """(release height, amount) of the lane's pending withdrawals."""
        prefix = LANE_WITHDRAWAL_PREFIX + lane_key(client, node)
        return [(int.from_bytes(k[len(prefix) :], "big"), int(v)) for k, v in state.iter_prefix(prefix)]

    def release_withdrawals(self, state: CachedState, height: int) -> list[tuple[str, str, int]]:
        """Pay out every withdrawal due at `height` (what is left of the lane's escrow, if less).
        Due withdrawals are found by their height prefix: nothing else is read."""
        paid = []
        due = WITHDRAWAL_PREFIX + height.to_bytes(8, "big")
        for key, value in list(state.iter_prefix(due)):
            lane = key[len(due) :]
            client, node = "0x" + lane[:20].hex(), "0x" + lane[20:].hex()
            amount = min(int(value), self.escrow(state, client, node))
            if amount:
                self.pay_from_escrow(state, client, node, client, amount)
            state.delete(key)
            state.delete(LANE_WITHDRAWAL_PREFIX + lane + height.to_bytes(8, "big"))
            paid.append((client, node, amount))
        return paid

    def pay_from_escrow(self, state: CachedState, client: str, node: str, recipient: str, amount: int) -> None:
        have = self.escrow(state, client, node)
        if have < amount:
            raise InsufficientEscrow(f"client {client} has {have} in escrow for {node}, needs {amount}")
        set_int(state, ESCROW_PREFIX + lane_key(client, node), have - amount)
        self.bank.send(state, ESCROW_ACCOUNT, recipient, amount)

    def burn_from_escrow(self, state: CachedState, client: str, node: str, amount: int) -> None:
        self.pay_from_escrow(state, client, node, ESCROW_ACCOUNT, amount)
        self.bank.burn(state, ESCROW_ACCOUNT, amount)

    def total_escrow(self, state: ReadableState) -> int:
        """Everything ESCROW_ACCOUNT owes: the lanes and the fees pending claims hold."""
        lanes = sum(int(v) for _, v in state.iter_prefix(ESCROW_PREFIX))
        return lanes + sum(ClaimRecord.from_json(json.loads(v)).held for _, v in state.iter_prefix(CLAIM_PREFIX))

    def take_from_escrow(self, state: CachedState, client: str, node: str, amount: int) -> None:
        """Move `amount` out of the lane (it stays in ESCROW_ACCOUNT, e.g. held by a claim)."""
        have = self.escrow(state, client, node)
        if amount > have:
            raise InsufficientEscrow(f"escrow of {client} for {node} is {have}; {amount} needed")
        set_int(state, ESCROW_PREFIX + lane_key(client, node), have - amount)

    def return_to_escrow(self, state: CachedState, client: str, node: str, amount: int) -> None:
        set_int(state, ESCROW_PREFIX + lane_key(client, node), self.escrow(state, client, node) + amount)

    # --- claims ---------------------------------------------------------------------------------

    def claim(self, state: ReadableState, receipt_id: str) -> ClaimRecord | None:
        raw = state.get(CLAIM_PREFIX + bytes.fromhex(receipt_id[2:]))
        return ClaimRecord.from_json(json.loads(raw)) if raw else None

    def add_claim(self, state: CachedState, receipt_id: str, claim: ClaimRecord) -> None:
        rid, deadline = bytes.fromhex(receipt_id[2:]), claim.deadline.to_bytes(8, "big")
        state.set(CLAIM_PREFIX + rid, canonical_json(claim.to_json()))
        state.set(CLAIM_DUE_PREFIX + deadline + rid, b"")
        state.set(NODE_CLAIM_PREFIX + _addr(claim.node) + deadline + rid, b"")

    def drop_claim(self, state: CachedState, receipt_id: str, claim: ClaimRecord) -> None:
        rid, deadline = bytes.fromhex(receipt_id[2:]), claim.deadline.to_bytes(8, "big")
        state.delete(CLAIM_PREFIX + rid)
        state.delete(CLAIM_DUE_PREFIX + deadline + rid)
        state.delete(NODE_CLAIM_PREFIX + _addr(claim.node) + deadline + rid)

    def claims_due(self, state: ReadableState, height: int) -> list[str]:
        """The receipts whose claims expire at `height` (by their height prefix)."""
        prefix = CLAIM_DUE_PREFIX + height.to_bytes(8, "big")
        return ["0x" + k[len(prefix) :].hex() for k, _ in state.iter_prefix(prefix)]

    def last_claim_deadline(self, state: ReadableState, node: str) -> int:
        """The latest deadline among the node's pending claims (0: none); its stake stays until then."""
        prefix = NODE_CLAIM_PREFIX + _addr(node)
        last = 0
        for key, _ in state.iter_prefix(prefix):  # a node has few pending claims; keys sort by deadline
            last = int.from_bytes(key[len(prefix) : len(prefix) + 8], "big")
        return last

    def equivocation_reported(self, state: ReadableState, node: str, client: str, request_id: str) -> bool:
        return state.get(EQUIVOCATION_PREFIX + _addr(node) + _addr(client) + bytes.fromhex(request_id[2:])) is not None

    def record_equivocation(self, state: CachedState, node: str, client: str, request_id: str, height: int) -> None:
        key = EQUIVOCATION_PREFIX + _addr(node) + _addr(client) + bytes.fromhex(request_id[2:])
        set_int(state, key, height)

    # --- settlement records ---------------------------------------------------------------------

    def settled_receipt(self, state: ReadableState, client: str, request_id: str) -> str | None:
        record = self.settled_request(state, client, request_id)
        return None if record is None else str(record["receipt_id"])

    def settled_request(self, state: ReadableState, client: str, request_id: str) -> dict[str, Any] | None:
        """How a request settled: {receipt_id} (alone: its record is under the receipt id) or, for a
        batch item, {receipt_id, batch, index, status, height}."""
        raw = state.get(settled_index_key(client, request_id))
        if raw:
            return json.loads(raw)
        alone = state.get(settled_key(client, request_id))  # in the trie too (and at past heights)
        return {"receipt_id": alone.decode()} if alone else None

    def record_batch_item(self, state: CachedState, client: bytes, request_id: bytes, record: bytes) -> None:
        """A batch item's one write, to the derived index: where its request's receipt settled."""
        state.set(SETTLED_INDEX_PREFIX + client + request_id, record)

    def batch_seen(self, state: ReadableState, batch_id: str) -> bool:
        """Whether the batch settled (or, in CheckTx's state, was checked): it is taken once."""
        return state.get(BATCH_PREFIX + bytes.fromhex(batch_id[2:])) is not None

    def batch(self, state: ReadableState, batch_id: str) -> BatchRecord | None:
        raw = state.get(BATCH_PREFIX + bytes.fromhex(batch_id[2:]))
        return BatchRecord.from_json(json.loads(raw)) if raw else None

    def record_batch(self, state: CachedState, record: BatchRecord) -> None:
        state.set(BATCH_PREFIX + bytes.fromhex(record.batch_id[2:]), canonical_json(record.to_json()))

    def mark_batch_checked(self, state: CachedState, batch_id: str) -> None:
        """CheckTx: the batch passed, so the mempool takes no second tx of it (never committed)."""
        state.set(BATCH_PREFIX + bytes.fromhex(batch_id[2:]), canonical_json({"batch_id": batch_id, "checked": True}))

    def node_claims(self, state: ReadableState, node: str) -> set[str]:
        """The receipt ids of the node's pending claims (a node has few)."""
        prefix = NODE_CLAIM_PREFIX + _addr(node)
        return {"0x" + key[len(prefix) + 8 :].hex() for key, _ in state.iter_prefix(prefix)}

    def record_settlement(self, state: CachedState, record: SettlementRecord) -> None:
        state.set(settled_key(record.client, record.request_id), record.receipt_id.encode())
        mark = canonical_json({"receipt_id": record.receipt_id})
        state.set(settled_index_key(record.client, record.request_id), mark)
        state.set(RECEIPT_PREFIX + bytes.fromhex(record.receipt_id[2:]), canonical_json(record.to_json()))

    def receipt(self, state: ReadableState, receipt_id: str) -> SettlementRecord | None:
        raw = state.get(RECEIPT_PREFIX + bytes.fromhex(receipt_id[2:]))
        return SettlementRecord.from_json(json.loads(raw)) if raw else None

    # --- allowances -----------------------------------------------------------------------------

    def allowance_spent(self, state: ReadableState, allowance_id: str) -> int:
        return get_int(state, SPENT_PREFIX + bytes.fromhex(allowance_id[2:]))

    def add_allowance_spent(self, state: CachedState, allowance_id: str, amount: int) -> None:
        set_int(
            state, SPENT_PREFIX + bytes.fromhex(allowance_id[2:]), self.allowance_spent(state, allowance_id) + amount
        )

    def revoked_key(self, client: str, node: str, nonce: int) -> bytes:
        return REVOKED_PREFIX + _addr(client) + _addr(node) + nonce.to_bytes(8, "big")

    def revoked_from(self, state: ReadableState, client: str, node: str, nonce: int) -> int:
        """The height from which the allowance is revoked; 0 when it never was."""
        return get_int(state, self.revoked_key(client, node, nonce))

    def is_revoked(self, state: ReadableState, client: str, node: str, nonce: int, height: int) -> bool:
        start = self.revoked_from(state, client, node, nonce)
        return start != 0 and height >= start

    def revoke(self, state: CachedState, client: str, node: str, nonce: int, height: int) -> int:
        """Announce a revocation; it takes effect `revoke_delay` blocks on (a second revocation
        never moves that height). Returns the effective height."""
        if start := self.revoked_from(state, client, node, nonce):
            return start
        start = height + max(1, self.params(state).revoke_delay)
        set_int(state, self.revoked_key(client, node, nonce), start)
        return start
