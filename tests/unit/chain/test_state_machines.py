"""Issue 23: hypothesis state machines driving the real in-process app through signed txs in
blocks — transfers (to oneself, to module accounts, of nothing, of everything, of more), escrow
deposits and delayed withdrawals, bonds and delayed unbonding, several messages in one tx, single
and batched settlement of node-signed receipts paid per request or by allowances (with every
refusal a receipt can earn), claims answered in time or left to their deadline, equivocation
reports, duplicate votes, governance of params and of the enclave's measurement, replayed txs and
batches, and empty blocks — against a plain-Python model of the money rules (statemodel.Ledger).
`ChainMachine` makes its blocks as a validator that did not propose them (FinalizeBlock);
`ProposerMachine` as the proposer (PrepareProposal must keep exactly the txs the model says).

After every step:
- the supply invariant, from the chain's own supply query and from independent sums:
  genesis supply == total supply + burned (nothing mints after genesis), total supply == the sum
  of every balance in the store, and total supply == accounts' balances + escrow lanes + amounts
  held by pending claims + bonded + unbonding stake (the escrow and staking module accounts each
  hold exactly their share);
- the modules' own invariants;
- no negative amount anywhere;
- every balance, escrow lane, pending withdrawal, bond, unbonding entry, nonce, allowance spend,
  revocation, pending claim and param is what the model predicts;
- a request settles at most once (counted from the blocks' events and batch records) and where
  it settled is what the model says;
every tx's result code is exactly the model's, and every batch's rejected items (index and code).
At the end of each example: the supply and the balances read through the trie at past heights
are what those heights committed, and the blocks replayed on a fresh copy of the start state
through ProcessProposal and FinalizeBlock give the same app hash and codes at every height.

Runtime: the default profile (40 examples of 30 steps per machine) takes ~30 s on two cores;
HYPOTHESIS_PROFILE=long runs 1,000 examples of 80 steps per machine (HACA_SM_EXAMPLES and
HACA_SM_STEPS override either).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, multiple, precondition, rule
from tendermint.abci import types_pb2 as abci

from haca.chain.modules.bank.keeper import BALANCE_PREFIX, BURNED_KEY, SUPPLY_KEY
from haca.chain.modules.inference.keeper import ESCROW_ACCOUNT
from haca.chain.modules.staking.keeper import STAKING_ACCOUNT
from haca.chain.state import ReadableState
from haca.crypto.keys import PrivateKey
from haca.types import codes
from haca.types.bank import MsgSend
from haca.types.batch import MsgSettleBatch, assemble_batch
from haca.types.encoding import canonical_json
from haca.types.gov import MsgUpdateParams
from haca.types.inference import (
    MsgClaim,
    MsgDeposit,
    MsgReportEquivocation,
    MsgRevokeAllowance,
    MsgSettle,
    MsgWithdraw,
    SettlementItem,
)
from haca.types.payment import SpendingAllowance
from haca.types.receipt import SignedReceipt
from haca.types.staking import MsgBond, MsgUnbond
from haca.types.tee import MsgApproveMeasurement, MsgRevokeMeasurement
from haca.types.tx import Msg, decode_tx
from tests.unit.chain.apphelpers import CHAIN_ID, fee_of, signed_tx
from tests.unit.chain.statemodel import (
    ADDRESSES,
    ALLOWANCE_NONCES,
    BY_NAME,
    CLIENTS,
    DEV_MID,
    ENCLAVE,
    FAR,
    GENESIS_SUPPLY,
    KEYS,
    MALLORY,
    MODEL,
    NAMES,
    NODE,
    NODE_B,
    NODES,
    PRICE,
    RICH,
    SCRATCH,
    SIGNERS,
    Ledger,
    Served,
    SmNode,
    allowance,
    allowance_payment,
    block_time,
    duplicate_vote,
    ledger_of,
    make_receipt,
    open_copy,
    request_payment,
)

PROFILES = {"default": (40, 30), "long": (1_000, 80)}  # (max examples, steps per example)
_examples, _steps = PROFILES[os.environ.get("HYPOTHESIS_PROFILE", "default")]
EXAMPLES = int(os.environ.get("HACA_SM_EXAMPLES", _examples))
STEPS = int(os.environ.get("HACA_SM_STEPS", _steps))
MACHINE_SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
# pytest's 600 s per test guards the default run; a longer one runs as long as it takes
MACHINE_TIMEOUT = pytest.mark.timeout(600 if PROFILES["default"] == (EXAMPLES, STEPS) else 0)
QUEUE_LIMIT = 3  # txs a block collects before it is made on its own


def note(label: str) -> None:
    """A hypothesis event (in the statistics), when run under hypothesis (not in a plain test)."""
    with contextlib.suppress(InvalidArgument):
        event(label)


def name(address: str) -> str:
    return NAMES.get(address, address[:10])


@dataclass
class Op:
    """A tx to put in the next block: its signer, its messages (built when the block is made, from
    the model's state then) and its effect on the model (Refused: the code the chain must answer)."""

    label: str
    signer: PrivateKey
    build: Callable[[Ledger, int], tuple[Msg, ...]]  # (ledger, nonce) -> msgs
    apply: Callable[[Ledger, int], Any]  # (ledger, height) -> anything (a batch: its rejected items)
    batch: Batch | None = None
    result: Any = None
    raw: bytes = b""  # a tx already signed (a replay): sent as it is


@dataclass(frozen=True)
class Batch:
    msg: MsgSettleBatch
    by: PrivateKey
    root_signer: str
    items: tuple[Served, ...]

    @property
    def id(self) -> str:
        return self.msg.header(CHAIN_ID, self.by.address).id

    def __repr__(self) -> str:
        return (
            f"Batch({self.msg.mode} by {name(self.by.address)} root={name(self.root_signer)} items={list(self.items)})"
        )


@dataclass
class Block:
    txs: list[bytes]
    misbehavior: list[abci.Misbehavior]
    app_hash: bytes
    codes: list[int]
    labels: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # the types of the begin- and end-block events
    supply: tuple[int, int] = (0, 0)  # total and burned once committed


def amount_for(how: str, have: int, some: int) -> int:
    huge = (1 << 256) - 1  # the largest amount a message carries
    return {"zero": 0, "one": 1, "some": min(some, max(have, 1)), "all": have, "over": have + 1, "huge": huge}[how]


SIGNER_NAMES = [name for name, key in BY_NAME.items() if key in SIGNERS]
CLIENT_NAMES = st.sampled_from(["RICH", "RICH", "MID", "POOR"])
NODE_NAMES = st.sampled_from(["NODE", "NODE_B"])
GOV_CHANGES = [
    ("inference", "settlement_fee", "0"),
    ("inference", "settlement_fee", "700"),
    ("inference", "settlement_fee_bps", "2000"),
    ("inference", "claim_slash_bps", "5000"),
    ("inference", "claim_compensation_bps", "10000"),
    ("inference", "withdraw_delay", "1"),
    ("inference", "withdraw_delay", "6"),
    ("inference", "revoke_delay", "1"),
    ("inference", "claim_deadline", "2"),
    ("inference", "claim_deadline", "8"),
    ("inference", "claim_window", "6"),
    ("inference", "claim_window", "16"),
    ("staking", "unbonding_period", "24"),
    ("staking", "unbonding_period", "10"),
    ("staking", "min_stake_tee", "3000000"),
    ("staking", "min_stake_tee", "6000000"),
    ("staking", "min_stake_tee", "1000000"),
    ("staking", "min_stake_vanilla", "3000000"),
    ("staking", "double_sign_slash_bps", "10000"),
]
FAULTS = st.sampled_from(["none"] * 6 + ["below_price", "node_key", "stranger_key", "future", "low", "short", "forged"])
PAYMENTS = st.sampled_from(["request", "request", "allowance1", "allowance1", "allowance2", "allowance3", "allowance4"])
AMOUNTS = st.sampled_from(["zero", "one", "some", "some", "all", "over", "huge"])


class ChainMachine(RuleBasedStateMachine):
    receipts = Bundle("receipts")
    batches = Bundle("batches")
    PROPOSER = False  # blocks are made as a validator that did not propose them (FinalizeBlock)

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="haca-sm-", dir=SCRATCH)
        self.chain: SmNode = open_copy(Path(self.tmp.name))
        self.start_height = self.chain.height
        self.ledger: Ledger = ledger_of(self.chain)
        self.queue: list[Op] = []
        self.double_sign = False
        self.blocks: list[Block] = []
        self.tags = itertools.count()
        self.served: list[Served] = []
        self.settlements: Counter[tuple[str, str]] = Counter()

    # --- making blocks -----------------------------------------------------------------------

    def enqueue(self, op: Op) -> None:
        self.queue.append(op)
        if len(self.queue) >= QUEUE_LIMIT:
            self.make_block()

    def make_block(self) -> None:
        """The queued txs in one block; every code, balance and batch record as the model says.
        As the proposer (`PROPOSER`), the block is what PrepareProposal keeps: a tx whose fee
        cannot be charged or whose messages fail is dropped and charges nothing (one whose evidence
        fails to verify stays, its sender paying for the verification)."""
        queue, self.queue = self.queue, []
        height = self.chain.height + 1
        misbehavior = [duplicate_vote(height - 1)] if self.double_sign else []
        self.ledger.begin_block(height, self.double_sign)
        self.double_sign = False
        txs, expected, kept = [], [], []
        for op in queue:
            signer = op.signer.address
            nonce = self.ledger.nonce.get(signer, 0)
            msgs = op.build(self.ledger, nonce)
            raw = op.raw or signed_tx(op.signer, nonce, *msgs)
            checked = self.chain.check(raw)  # CheckTx: never an internal error
            assert checked.code != codes.INTERNAL, checked.log
            before = copy.deepcopy(self.ledger.__dict__)
            fee = 0 if any(getattr(msg, "amount", None) == 0 for msg in msgs) else fee_of(raw)
            if not fee:  # amounts must be positive: the tx does not decode
                code, charged = codes.TX_DECODE, False
            elif decode_tx(raw).nonce != nonce:  # a replay: refused before any charge
                code, charged = codes.BAD_NONCE, False
            else:

                def apply(ledger: Ledger, op: Op = op) -> None:
                    op.result = op.apply(ledger, height)

                charged = self.ledger.bal.get(signer, 0) >= fee
                code = self.ledger.run_tx(signer, fee, apply)
            note(f"{op.label}: code {code}")
            if self.PROPOSER and not (code == 0 or (charged and code == codes.INVALID_EVIDENCE)):
                self.ledger.__dict__.update(before)
                note(f"{op.label}: dropped by the proposer")
                continue
            txs.append(raw)
            expected.append(code)
            kept.append(op)
        queue = kept
        if self.PROPOSER:
            proposal = abci.RequestPrepareProposal(height=height, txs=txs, max_tx_bytes=1 << 30)
            proposal.time.seconds = block_time(height)
            proposal.misbehavior.extend(misbehavior)
            proposed = list(self.chain.app.prepare_proposal(proposal).txs)
            assert proposed == txs, "PrepareProposal kept other txs than the model"
        resp = self.chain.replay(txs, misbehavior) if self.PROPOSER else self.chain.block(txs, misbehavior)
        got = [r.code for r in resp.tx_results]
        logs = [
            f"{op.label} by {name(op.signer.address)}: {r.code} {r.log}"
            for op, r in zip(queue, resp.tx_results, strict=True)
        ]
        assert got == expected, f"height {height}: codes {got}, the model says {expected}\n" + "\n".join(logs)
        self.ledger.end_block(height)
        for ev in resp.events:  # what the begin- and end-block hooks did
            reason = {a.key: a.value for a in ev.attributes}.get("reason", "")
            note(f"block: {ev.type} {reason}".strip())
        labels = [op.label for op in queue]
        block_events = [e.type for e in resp.events]
        committed = Block(
            txs, misbehavior, self.chain.app.store.app_hash, got, labels, block_events, self.chain.supply()
        )
        self.blocks.append(committed)
        for op, result in zip(queue, resp.tx_results, strict=True):
            if result.code != 0:
                continue
            for ev in result.events:
                if ev.type in ("claim_resolved", "slash"):
                    note(f"{op.label}: {ev.type}")
                if ev.type == "settle":
                    attrs = {a.key: a.value for a in ev.attributes}
                    self.settlements[(attrs["client"], attrs["request_id"])] += 1
            if op.batch is not None:
                record = self.chain.answer("/inference/batch", op.batch.id.encode())
                rejected = [(r["index"], r["code"]) for r in record["rejected"]]
                assert rejected == op.result, f"batch rejected {record['rejected']}, the model says {op.result}"
                note(f"batch items: {len(op.batch.items) - len(rejected)} settled")
                for _, code in rejected:
                    note(f"batch item: code {code}")
                for index, served in enumerate(op.batch.items):
                    if index not in {i for i, _ in rejected}:
                        self.settlements[(served.receipt.client, served.receipt.request_id)] += 1

    # --- bank, escrow and staking ---------------------------------------------------------------

    @rule(
        sender_name=st.sampled_from(SIGNER_NAMES),
        to=st.sampled_from([*ADDRESSES, "self"]),
        how=AMOUNTS,
        some=st.integers(1, 10**6),
    )
    def transfer(self, sender_name: str, to: str, how: str, some: int) -> None:
        """A transfer to anyone (a module account, oneself), of nothing, a little, everything the
        fee leaves, or more than that."""
        sender = BY_NAME[sender_name]
        self.enqueue(self._transfer(sender, sender.address if to == "self" else to, how, some))

    def _transfer(self, sender: PrivateKey, recipient: str, how: str, some: int) -> Op:
        amounts: dict[str, int] = {}  # fixed when the block is made, from the balance before the fee

        def build(ledger: Ledger, nonce: int) -> tuple[Msg, ...]:
            have = ledger.bal.get(sender.address, 0)
            amount = amount_for(how, have, some)
            if how == "all":  # everything the fee leaves (the fee depends on the tx's size)
                for _ in range(5):
                    fee = fee_of(signed_tx(sender, nonce, MsgSend(recipient, max(amount, 1))))
                    amount = max(have - fee, 1)
            amounts["amount"] = amount
            return (MsgSend(recipient, amount),)

        def apply(ledger: Ledger, height: int) -> None:
            ledger.transfer(sender.address, recipient, amounts["amount"])

        return Op("transfer", sender, build, apply)

    @rule(client_name=st.sampled_from(SIGNER_NAMES), node_name=NODE_NAMES, how=AMOUNTS, some=st.integers(1, 200_000))
    def deposit(self, client_name: str, node_name: str, how: str, some: int) -> None:
        self.enqueue(self._deposit(BY_NAME[client_name], BY_NAME[node_name], how, some))

    def _deposit(self, client: PrivateKey, node: PrivateKey, how: str, some: int) -> Op:
        amounts: dict[str, int] = {}

        def build(ledger: Ledger, nonce: int) -> tuple[Msg, ...]:
            amounts["amount"] = amount_for(how, ledger.bal.get(client.address, 0), some)
            return (MsgDeposit(node.address, amounts["amount"]),)

        def apply(ledger: Ledger, height: int) -> None:
            ledger.deposit(client.address, node.address, amounts["amount"])

        return Op("deposit", client, build, apply)

    @rule(client_name=st.sampled_from(SIGNER_NAMES), node_name=NODE_NAMES, how=AMOUNTS, some=st.integers(1, 200_000))
    def withdraw(self, client_name: str, node_name: str, how: str, some: int) -> None:
        """A withdrawal request, of up to what the lane holds beyond its pending withdrawals, or more."""
        self.enqueue(self._withdraw(BY_NAME[client_name], BY_NAME[node_name], how, some))

    def _withdraw(self, client: PrivateKey, node: PrivateKey, how: str, some: int) -> Op:
        amounts: dict[str, int] = {}

        def build(ledger: Ledger, nonce: int) -> tuple[Msg, ...]:
            lane = ledger.lanes.get((client.address, node.address), 0)
            pending = sum(a for (_, c, n), a in ledger.withdrawals.items() if (c, n) == (client.address, node.address))
            amounts["amount"] = amount_for(how, lane - pending, some) if how != "zero" else 0
            return (MsgWithdraw(node.address, amounts["amount"]),)

        def apply(ledger: Ledger, height: int) -> None:
            ledger.withdraw(client.address, node.address, amounts["amount"], height)

        return Op("withdraw", client, build, apply)

    @rule(client_name=CLIENT_NAMES, node_name=NODE_NAMES, nonce=st.sampled_from(ALLOWANCE_NONCES))
    def revoke(self, client_name: str, node_name: str, nonce: int) -> None:
        client, node = BY_NAME[client_name], BY_NAME[node_name]

        def apply(ledger: Ledger, height: int) -> None:
            ledger.revoke(client.address, node.address, nonce, height)

        self.enqueue(Op("revoke", client, lambda ledger, n: (MsgRevokeAllowance(node.address, nonce),), apply))

    @rule(who_name=st.sampled_from(SIGNER_NAMES), how=AMOUNTS, some=st.integers(1, 3 * 10**6), unbond=st.booleans())
    def stake(self, who_name: str, how: str, some: int, unbond: bool) -> None:
        """Bond (up to half the balance, or more) or unbond (up to the bond, or more)."""
        self.enqueue(self._stake(BY_NAME[who_name], how, some, unbond))

    def _stake(self, who: PrivateKey, how: str, some: int, unbond: bool) -> Op:
        amounts: dict[str, int] = {}

        def build(ledger: Ledger, nonce: int) -> tuple[Msg, ...]:
            have = ledger.bonded.get(who.address, 0) if unbond else ledger.bal.get(who.address, 0) // 2
            amounts["amount"] = amount_for(how, have, some)
            return ((MsgUnbond if unbond else MsgBond)(amounts["amount"]),)

        def apply(ledger: Ledger, height: int) -> None:
            if unbond:
                ledger.unbond(who.address, amounts["amount"], height)
            else:
                ledger.bond(who.address, amounts["amount"])

        return Op("unbond" if unbond else "bond", who, build, apply)

    @rule(
        who_name=st.sampled_from(SIGNER_NAMES),
        node_name=NODE_NAMES,
        kinds=st.lists(st.sampled_from(["transfer", "deposit", "withdraw", "bond", "unbond"]), min_size=2, max_size=3),
        hows=st.lists(AMOUNTS, min_size=3, max_size=3),
        some=st.integers(1, 200_000),
    )
    def several_msgs_in_one_tx(
        self, who_name: str, node_name: str, kinds: list[str], hows: list[str], some: int
    ) -> None:
        """Two or three messages in one tx: all of them, or (one failing) none, and the fee anyway.
        Each amount is chosen from the state before the tx."""
        who, node = BY_NAME[who_name], BY_NAME[node_name]
        parts = []
        for kind, how in zip(kinds, hows, strict=False):
            if kind == "transfer":
                parts.append(self._transfer(who, node.address, how, some))
            elif kind == "deposit":
                parts.append(self._deposit(who, node, how, some))
            elif kind == "withdraw":
                parts.append(self._withdraw(who, node, how, some))
            else:
                parts.append(self._stake(who, how, some, kind == "unbond"))

        def build(ledger: Ledger, nonce: int) -> tuple[Msg, ...]:
            return tuple(msg for part in parts for msg in part.build(ledger, nonce))

        def apply(ledger: Ledger, height: int) -> None:
            for part in parts:
                part.apply(ledger, height)

        self.enqueue(Op("+".join(kinds), who, build, apply))

    @precondition(lambda self: any(b.txs for b in self.blocks))
    @rule(pick=st.integers(0, 10**6))
    def replay_tx(self, pick: int) -> None:
        """A tx already in a block, sent again as it is: refused (bad nonce), charging nothing."""
        sent = []
        for block in self.blocks:
            for raw, label, code in zip(block.txs, block.labels, block.codes, strict=True):
                if code == codes.TX_DECODE:
                    continue
                tx = decode_tx(raw)
                if tx.nonce < self.ledger.nonce.get(tx.signer, 0):  # its nonce is spent: a replay
                    sent.append((raw, label))
        if not sent:
            return
        raw, label = sent[pick % len(sent)]
        tx = decode_tx(raw)
        self.enqueue(
            Op(f"replayed {label}", KEYS[tx.signer], lambda ledger, n: tx.msgs, lambda ledger, h: None, raw=raw)
        )

    @rule()
    def duplicate_vote(self) -> None:
        """CometBFT hands the next block evidence of the validator's duplicate vote."""
        self.double_sign = True

    # --- receipts --------------------------------------------------------------------------------

    @initialize(target=receipts, count=st.integers(1, 4), client_name=CLIENT_NAMES, pay=PAYMENTS)
    def first_receipts(self, count: int, client_name: str, pay: str) -> Any:
        """Honest receipts of both nodes and both modes to start with."""
        modes = [("NODE", "tee"), ("NODE", "vanilla"), ("NODE_B", "vanilla"), ("NODE", "tee")]
        return multiple(*(self._serve(client_name, n, m, 1_500, "none", pay) for n, m in modes[:count]))

    @rule(
        target=receipts,
        client_name=CLIENT_NAMES,
        node_name=NODE_NAMES,
        mode=st.sampled_from(["vanilla", "tee", "tee"]),
        fee=st.sampled_from([PRICE, 1_500, 2_500, 6_000, 10**30]),
        fault=FAULTS,
        pay=PAYMENTS,
    )
    def serve(self, client_name: str, node_name: str, mode: str, fee: int, fault: str, pay: str) -> Served:
        return self._serve(client_name, node_name, mode, fee, fault, pay)

    def _serve(self, client_name: str, node_name: str, mode: str, fee: int, fault: str, pay: str) -> Served:
        """A node answers a request and signs its receipt (no tx), honestly (the right key for the
        mode: for tee the enclave, which is attested for NODE only) or with one `fault`: a fee below
        the price, the node's account key or a stranger's, a height hint two blocks ahead, a
        per-request authorisation below the fee, expiring soon or forged. The client pays per
        request or with one of its allowances for that node."""
        client, node = BY_NAME[client_name], BY_NAME[node_name]
        hint = self.chain.height + (2 if fault == "future" else 0)
        fee = PRICE - 1 if fault == "below_price" else fee
        receipt = make_receipt(client.address, node.address, mode, fee, hint, f"{next(self.tags)}")
        key = {"node_key": node, "stranger_key": MALLORY}.get(
            fault, ENCLAVE if mode == "tee" and node is NODE else node
        )
        payer = MALLORY if fault == "forged" else client
        if pay.startswith("allowance") and fault not in ("low", "short", "forged"):
            payment = allowance_payment(allowance(client.address, node.address, int(pay[-1])), payer)
        else:
            max_fee = fee - 1 if fault == "low" else fee
            expiry = hint + 3 if fault == "short" else FAR
            payment = request_payment(receipt, max_fee, expiry, payer)
        served = Served(SignedReceipt(receipt, receipt.sign(key)), key.address, payment, payer.address)
        self.served.append(served)
        return served

    @rule(
        target=receipts,
        client_name=CLIENT_NAMES,
        node_name=NODE_NAMES,
        mode=st.sampled_from(["vanilla", "tee"]),
        pay=PAYMENTS,
    )
    def serve_and_settle(self, client_name: str, node_name: str, mode: str, pay: str) -> Served:
        """The happy path: an honest receipt, settled by its node in the next block."""
        served = self._serve(client_name, node_name, mode, 1_500, "none", pay)
        self._settle([served], "node")
        return served

    @rule(target=receipts, client_name=CLIENT_NAMES, pay=PAYMENTS, fresh=st.booleans())
    def serve_and_claim(self, client_name: str, pay: str, fresh: bool) -> Served:
        """The accountable path: an honest tee receipt of NODE, claimed by its client at once."""
        served = self._serve(client_name, "NODE", "tee", 1_500, "none", pay)
        self.claim(served, "client", fresh)
        return served

    @precondition(lambda self: bool(self.ledger.claims))
    @rule(node_name=NODE_NAMES)
    def answer_claims(self, node_name: str) -> None:
        """An honest node settles the receipts claimed against it (at most two in one tx)."""
        node = BY_NAME[node_name]
        by_id = {s.id: s for s in self.served}
        claimed = sorted(rid for rid, c in self.ledger.claims.items() if c.node == node.address)[:2]
        if claimed:
            self._settle([by_id[rid] for rid in claimed], "node")

    @rule(target=receipts, original=receipts)
    def twin(self, original: Served) -> Served:
        """A second receipt the same key signs for the same request with another output."""
        r = dataclasses.replace(
            original.receipt, output_hash="0x" + "ee" * 32, timestamp=original.receipt.timestamp + 1
        )
        key = KEYS.get(original.signer, ENCLAVE)
        served = Served(SignedReceipt(r, r.sign(key)), original.signer, original.payment, original.payer)
        self.served.append(served)
        return served

    # --- settlement ------------------------------------------------------------------------------

    @rule(items=st.lists(receipts, min_size=1, max_size=2), by=st.sampled_from(["node"] * 6 + ["other"]))
    def settle(self, items: list[Served], by: str) -> None:
        """MsgSettle of one or two receipts (the same one twice too), by their node or another."""
        self._settle(items, by)

    def _settle(self, items: list[Served], by: str) -> None:
        node = items[0].receipt.node
        signer = KEYS[node] if by == "node" else (NODE_B if node == NODE.address else NODE)
        msg = MsgSettle(tuple(SettlementItem(s.signed, s.payment, b"") for s in items))
        self.enqueue(
            Op("settle", signer, lambda ledger, n: (msg,), lambda ledger, h: ledger.settle(signer.address, items, h))
        )

    @rule(
        target=batches,
        items=st.lists(receipts, min_size=1, max_size=4),
        root=st.sampled_from(["right", "right", "wrong"]),
        by=st.sampled_from(["node"] * 5 + ["mallory"]),
    )
    def settle_batch(self, items: list[Served], root: str, by: str) -> Any:
        """MsgSettleBatch of the allowance-paid receipts among `items` of the first one's node and mode."""
        batch = self._batch(items, root, by)
        if batch is None:
            return multiple()
        self._enqueue_batch(batch)
        return batch

    def _batch(self, items: list[Served], root: str, by: str) -> Batch | None:
        paid = [s for s in items if isinstance(s.payment.value, SpendingAllowance)]
        if not paid:
            return None
        node, mode = paid[0].receipt.node, paid[0].receipt.mode
        chosen = tuple(s for s in paid if (s.receipt.node, s.receipt.mode) == (node, mode))
        msg, header = assemble_batch(CHAIN_ID, node, mode, [(s.receipt, s.payment) for s in chosen])
        right = ENCLAVE if mode == "tee" else KEYS[node]
        key = right if root == "right" else MALLORY
        msg = dataclasses.replace(msg, signature=header.sign(key))
        batch = Batch(msg, KEYS[node] if by == "node" else MALLORY, key.address, chosen)
        return batch

    @rule(batch=batches)
    def replay_batch(self, batch: Batch) -> None:
        """The same batch again: refused whole once it settled."""
        self._enqueue_batch(batch)

    def _enqueue_batch(self, batch: Batch) -> None:
        def apply(ledger: Ledger, height: int) -> list[tuple[int, int]]:
            return ledger.settle_batch(
                batch.by.address, batch.msg.mode, batch.id, batch.root_signer, batch.items, height
            )

        self.enqueue(Op("settle_batch", batch.by, lambda ledger, n: (batch.msg,), apply, batch=batch))

    # --- claims and equivocation -------------------------------------------------------------------

    @rule(served=receipts, by=st.sampled_from(["client", "client", "mallory"]), fresh=st.booleans())
    def claim_receipt(self, served: Served, by: str, fresh: bool) -> None:
        """The client (or someone else) claims a receipt, with its own payment or a fresh
        per-request authorisation that outlasts the deadline."""
        self.claim(served, by, fresh)

    def claim(self, served: Served, by: str, fresh: bool) -> None:
        r = served.receipt
        signer = KEYS[r.client] if by == "client" else MALLORY
        payment, payer = served.payment, served.payer
        if fresh:
            payment, payer = request_payment(r, r.fee, FAR, KEYS[r.client]), r.client
        msg = MsgClaim(served.signed, payment)

        def apply(ledger: Ledger, height: int) -> None:
            ledger.claim(signer.address, served, payment, payer, height)

        self.enqueue(Op("claim", signer, lambda ledger, n: (msg,), apply))

    @rule(first=receipts, second=receipts, reporter_name=st.sampled_from(["MALLORY", "RICH"]))
    def report_equivocation(self, first: Served, second: Served, reporter_name: str) -> None:
        reporter = BY_NAME[reporter_name]
        msg = MsgReportEquivocation(first.signed, second.signed)

        def apply(ledger: Ledger, height: int) -> None:
            ledger.report_equivocation(reporter.address, first, second)

        self.enqueue(Op("report_equivocation", reporter, lambda ledger, n: (msg,), apply))

    # --- governance ----------------------------------------------------------------------------------

    @rule(change=st.sampled_from(GOV_CHANGES), by=st.sampled_from(["AUTHORITY"] * 4 + ["MALLORY"]))
    def update_params(self, change: tuple[str, str, str], by: str) -> None:
        """An authority (or not) changes one param; one that would let stake leave before the claims
        on it end is refused (invalid message)."""
        module, key, value = change
        signer = BY_NAME[by]

        def apply(ledger: Ledger, height: int) -> None:
            ledger.update_params(signer.address, module, {key: value})

        self.enqueue(Op("update_params", signer, lambda ledger, n: (MsgUpdateParams(module, {key: value}),), apply))

    @rule(
        scope=st.sampled_from(["*", MODEL.name]),
        approve=st.booleans(),
        by=st.sampled_from(["AUTHORITY"] * 4 + ["MALLORY"]),
    )
    def measurement(self, scope: str, approve: bool, by: str) -> None:
        """An authority approves or revokes the enclave's measurement, for every model or this one."""
        signer = BY_NAME[by]
        msg = (MsgApproveMeasurement if approve else MsgRevokeMeasurement)(DEV_MID, scope)

        def apply(ledger: Ledger, height: int) -> None:
            ledger.measurement(signer.address, scope, approve, height)

        self.enqueue(Op("approve" if approve else "revoke_measurement", signer, lambda ledger, n: (msg,), apply))

    # --- blocks ------------------------------------------------------------------------------------

    @rule()
    def block(self) -> None:
        """The queued txs (maybe none) in a block."""
        self.make_block()

    @rule(count=st.integers(1, 6))
    def advance(self, count: int) -> None:
        """The queued txs, then empty blocks: delays, deadlines and windows pass."""
        for _ in range(count):
            self.make_block()

    # --- invariants --------------------------------------------------------------------------------

    @invariant()
    def supply_is_conserved(self) -> None:
        chain, store = self.chain, self.chain.app.store
        total, burned = chain.supply()
        assert total + burned == GENESIS_SUPPLY, f"supply {total} + burned {burned} != genesis {GENESIS_SUPPLY}"
        stored = {key: int(value) for key, value in store.iter_prefix(BALANCE_PREFIX)}
        assert sum(stored.values()) == total == int(store.get(SUPPLY_KEY) or b"0")
        assert burned == int(store.get(BURNED_KEY) or b"0")
        # the same total, from the queries of every account, lane, claim and stake
        accounts = sum(chain.balance(a) for a in ADDRESSES if a not in (ESCROW_ACCOUNT, STAKING_ACCOUNT))
        lanes = sum(chain.escrow(a) for a in KEYS)
        held = sum(int(chain.answer("/inference/claim", rid.encode())["held"]) for rid in self._pending_claims())
        stakes = [chain.answer("/staking/stake", a.encode()) for a in KEYS]
        bonded = sum(int(s["bonded"]) for s in stakes)
        unbonding = sum(int(u["amount"]) for s in stakes for u in s["unbonding"])
        assert chain.balance(ESCROW_ACCOUNT) == lanes + held
        assert chain.balance(STAKING_ACCOUNT) == bonded + unbonding
        assert accounts + lanes + held + bonded + unbonding == total
        problems = [p for m in chain.app.modules for check in m.invariants().values() if (p := check(store))]
        assert problems == []

    def _pending_claims(self) -> list[str]:
        ids = []
        for node in NODES:
            answer = self.chain.answer("/inference/node_claims", node.address.encode())
            ids += [c["receipt_id"] for c in answer["claims"]]
        return ids

    @invariant()
    def params_are_what_the_model_says(self) -> None:
        assert self.chain.answer("/inference/params") == self.ledger.params.to_json()
        assert self.chain.answer("/staking/params") == self.ledger.staking.to_json()

    @invariant()
    def nothing_is_negative(self) -> None:
        store: ReadableState = self.chain.app.store
        for prefix in (
            b"bank/balance/",
            b"inference/escrow/",
            b"inference/withdrawal/",
            b"staking/bond/",
            b"staking/unbonding/",
            b"inference/allowance_spent/",
        ):
            for key, value in store.iter_prefix(prefix):
                assert int(value) >= 0, (key, value)

    @invariant()
    def state_is_what_the_model_says(self) -> None:
        chain, ledger, app, store = self.chain, self.ledger, self.chain.app, self.chain.app.store
        balances = {"0x" + k[len(BALANCE_PREFIX) :].hex(): int(v) for k, v in store.iter_prefix(BALANCE_PREFIX)}
        assert {name(a): b for a, b in balances.items() if b} == {name(a): b for a, b in ledger.bal.items() if b}
        assert chain.supply() == (ledger.supply, ledger.burned)
        assert {name(a): chain.nonce(a) for a in KEYS} == {name(a): ledger.nonce.get(a, 0) for a in KEYS}
        lanes, withdrawals = {}, {}
        for client in KEYS:
            for lane in chain.answer("/inference/escrow", client.encode())["lanes"]:
                if int(lane["escrow"]):
                    lanes[(client, lane["node"])] = int(lane["escrow"])
                for w in lane["withdrawals"]:
                    withdrawals[(w["release_height"], client, lane["node"])] = int(w["amount"])
        assert lanes == ledger.lanes
        assert withdrawals == ledger.withdrawals
        bonded, unbonding = {}, {}
        for address in KEYS:
            answer = chain.answer("/staking/stake", address.encode())
            if int(answer["bonded"]):
                bonded[address] = int(answer["bonded"])
            for u in answer["unbonding"]:
                unbonding[(u["release_height"], address)] = int(u["amount"])
        assert bonded == ledger.bonded
        assert unbonding == ledger.unbonding
        for client_key in CLIENTS:
            for node_key in NODES:
                for nonce in ALLOWANCE_NONCES:
                    a = allowance(client_key.address, node_key.address, nonce)
                    answer = chain.answer("/inference/allowance", canonical_json(a.to_json()))
                    assert int(answer["spent"]) == ledger.spent.get(a.id, 0)
                    assert answer["revoked_from"] == ledger.revoked.get((a.client, a.node, nonce), 0)
        claims = {}
        for rid in self._pending_claims():
            c = chain.answer("/inference/claim", rid.encode())
            claims[rid] = (c["client"], c["node"], int(c["held"]), c["deadline"])
        assert claims == {rid: (c.client, c.node, c.held, c.deadline) for rid, c in ledger.claims.items()}
        assert app.staking.validators(store)[0]["jailed"] is ledger.jailed

    @invariant()
    def a_request_settles_at_most_once(self) -> None:
        assert [k for k, n in self.settlements.items() if n > 1] == []
        for served in self.served:
            r = served.receipt
            resp = self.chain.query("/inference/request", f"{r.client}/{r.request_id}".encode())
            settled_by = self.ledger.settled.get((r.client, r.request_id))
            if settled_by is None:
                assert resp.code == codes.NOT_FOUND, resp.log
            else:
                assert resp.code == 0, resp.log
                assert json.loads(resp.value)["receipt_id"] == settled_by

    def assert_invariants(self) -> None:
        """Every invariant (hypothesis runs them after each step; plain tests call this)."""
        self.supply_is_conserved()
        self.params_are_what_the_model_says()
        self.nothing_is_negative()
        self.state_is_what_the_model_says()
        self.a_request_settles_at_most_once()

    # --- the end -----------------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if self.queue:
                self.make_block()
            self._history_holds()
            self._replay_matches()
        finally:
            self.chain.close()
            self.tmp.cleanup()

    def _history_holds(self) -> None:
        """Every past height still answers the supply it committed, and the balances read through
        that height's trie still add up to it (state proofs and historical queries read there)."""
        store = self.chain.app.store
        for offset, block in list(enumerate(self.blocks))[-12:]:
            height = self.start_height + 1 + offset
            answer = self.chain.answer("/bank/supply", height=height)
            assert (int(answer["total"]), int(answer["burned"])) == block.supply, f"supply at height {height}"
            balances = sum(int(v) for _, v in store.iter_prefix_at(height, BALANCE_PREFIX))
            assert balances == block.supply[0], f"balances at height {height}"

    def _replay_matches(self) -> None:
        """A fresh app over the start state, fed the same blocks through ProcessProposal first,
        commits the same app hash and answers the same codes at every height."""
        with tempfile.TemporaryDirectory(prefix="haca-sm-replay-", dir=SCRATCH) as tmp:
            replica = open_copy(Path(tmp))
            try:
                for block in self.blocks:
                    resp = replica.replay(block.txs, block.misbehavior)
                    height = replica.height
                    assert [r.code for r in resp.tx_results] == block.codes, f"replay of height {height}"
                    assert replica.app.store.app_hash == block.app_hash, f"app hash differs at height {height}"
            finally:
                replica.close()


ChainMachine.TestCase.settings = MACHINE_SETTINGS
TestChainMachine = MACHINE_TIMEOUT(pytest.mark.slow(ChainMachine.TestCase))  # the money path, bank to claims


class ProposerMachine(ChainMachine):
    """The same, with every block made by this validator as the proposer: PrepareProposal, then
    ProcessProposal and FinalizeBlock reusing its execution."""

    PROPOSER = True


ProposerMachine.TestCase.settings = MACHINE_SETTINGS
TestProposerMachine = MACHINE_TIMEOUT(pytest.mark.slow(ProposerMachine.TestCase))


# --- fixed scenarios: the machine's steps in a plain test (fast, and the shape a finding takes) ---


def run_steps(machine: ChainMachine, *steps: Callable[[ChainMachine], object]) -> None:
    """Each step, then a block, then every invariant; the replay check at the end."""
    try:
        for step in steps:
            step(machine)
            machine.make_block()
            machine.assert_invariants()
    finally:
        machine.teardown()


def test_a_claim_answered_in_time_pays_the_node_and_one_left_to_expire_slashes_it_unbonding_included() -> None:
    m = ChainMachine()
    start = m.chain.height
    answered = m._serve("RICH", "NODE", "tee", 1_500, "none", "allowance1")
    steps: list[Callable[[ChainMachine], object]] = [
        lambda m: m.stake("NODE", "some", 1_000_000, True),  # paid back 16 blocks on, unless a claim is pending
        lambda m: m.claim(answered, "client", False),
        lambda m: m.settle([answered], "node"),  # the claim resolved: the node is paid
        lambda m: m.advance(9),
        # served at the height the chain is at when the step runs, so inside the claim window
        lambda m: m.claim(m._serve("RICH", "NODE", "tee", 2_500, "none", "request"), "client", True),
        lambda m: m.advance(8),  # the unbonding waits for the deadline, the slash takes from it too
    ]
    run_steps(m, *steps)
    events = [e for b in m.blocks for e in b.events]
    assert events.count("slash") == 1 and "unbonding_postponed" in events and "unbonding_paid" in events
    assert [b.codes for b in m.blocks[:3]] == [[0], [0], [0]]
    assert m.chain.height > start + 16


def test_a_revoked_measurement_voids_a_claim_and_the_receipt_settles_once_approved_again() -> None:
    m = ChainMachine()
    served = m._serve("RICH", "NODE", "tee", 1_500, "none", "request")
    run_steps(
        m,
        lambda m: m.claim(served, "client", False),
        lambda m: m.measurement("*", False, "AUTHORITY"),
        lambda m: m.answer_claims("NODE"),  # measurement not approved (22)
        lambda m: m.advance(4),  # the deadline passes: voided, no slash
        lambda m: m.measurement("*", True, "AUTHORITY"),
        lambda m: m.settle([served], "node"),
    )
    assert [b.codes for b in m.blocks if b.codes] == [[0], [0], [codes.MEASUREMENT_NOT_APPROVED], [0], [0]]
    assert m.ledger.settled[(RICH.address, served.receipt.request_id)] == served.id


def test_a_batch_replayed_and_a_receipt_settled_twice_are_refused() -> None:
    m = ChainMachine()
    first = m._serve("RICH", "NODE", "vanilla", 1_500, "none", "allowance1")
    second = m._serve("RICH", "NODE", "vanilla", 2_500, "none", "allowance4")  # above its per-request maximum
    made = m._batch([first, second], "right", "node")
    assert made is not None
    batch: Batch = made
    rejected: list[dict[str, Any]] = []
    run_steps(
        m,
        lambda m: m._enqueue_batch(batch),
        lambda m: m.replay_batch(batch),
        lambda m: m.settle([first], "node"),
        lambda m: rejected.extend(m.chain.answer("/inference/batch", batch.id.encode())["rejected"]),
    )
    assert [b.codes for b in m.blocks] == [[0], [codes.ALREADY_SETTLED], [codes.ALREADY_SETTLED], []]
    assert [(r["index"], r["code"]) for r in rejected] == [(1, codes.FEE_ABOVE_LIMIT)]


def test_a_minimum_stake_raised_above_the_nodes_bond_is_no_excuse_for_a_silent_node() -> None:
    """It could have settled its claimed receipt (the claim pays): silent, it is slashed."""
    m = ChainMachine()
    served = m._serve("RICH", "NODE", "tee", 1_500, "none", "request")
    run_steps(
        m,
        lambda m: m.claim(served, "client", False),
        lambda m: m.update_params(("staking", "min_stake_tee", "6000000"), "AUTHORITY"),
        lambda m: m.advance(4),  # the deadline passes, the node silent
    )
    assert [b.codes for b in m.blocks if b.codes] == [[0], [0]]
    events = [e for b in m.blocks for e in b.events]
    assert "slash" in events and "claim_voided" not in events


def test_a_node_below_a_raised_minimum_still_settles_its_claimed_receipt_but_no_new_one() -> None:
    m = ChainMachine()
    claimed = m._serve("RICH", "NODE", "tee", 1_500, "none", "request")
    unclaimed = m._serve("RICH", "NODE", "tee", 1_500, "none", "request")
    run_steps(
        m,
        lambda m: m.claim(claimed, "client", False),
        lambda m: m.update_params(("staking", "min_stake_tee", "6000000"), "AUTHORITY"),
        lambda m: m.answer_claims("NODE"),  # the claim's hold pays
        lambda m: m.settle([unclaimed], "node"),  # new business under the raised minimum (24)
        lambda m: m.advance(4),
    )
    assert [b.codes for b in m.blocks if b.codes] == [[0], [0], [0], [codes.INSUFFICIENT_STAKE]]
    events = [e for b in m.blocks for e in b.events]
    assert "claim_voided" not in events and "slash" not in events
    assert m.ledger.settled[(RICH.address, claimed.receipt.request_id)] == claimed.id
