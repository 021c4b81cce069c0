"""Settling a receipt batch (MsgSettleBatch) with one signature check and hashing per item.

Refused whole (nothing changes), in CheckTx as in the block: the signer is not a registered node
for the batch's mode or is under its minimum stake; the batch was settled before; the root signature is not the node's
(vanilla) or an enclave key attested for the node (tee).

Every item is then checked on its own, and one that fails is skipped and recorded as rejected
(index, code, reason) in the batch record while the others settle: the root signature binds all
items, so refusing 999 good receipts for one overdrawn escrow would only delay honest payment,
and the rejected item keeps the node's signature (through the root) for a claim. The item checks
are those of MsgSettle less the per-receipt signatures: height hint not in the future, the model's
terms at that height allow the mode and price it at most the fee, the node serves that model in
that mode, tee: the enclave's attestation covers the height and its measurement is approved for
the model, the allowance is valid (signed by its client for this node and chain, unexpired, not
revoked) and its cap covers the fee, the request never settled, the lane covers fee + settlement
fee.

CheckTx stops after the batch-level checks (after the root signature): an item that fails is
skipped, never a reason to refuse the tx, so checking items before the block would only cost every
validator the work twice (and again at every recheck).

State written per item: one key (the request's settled mark, which says where the receipt sits).
Lanes, allowance spends, the node's balance and the burn are written once per batch.
"""

from __future__ import annotations

from typing import Any

from haca.chain.errors import (
    AlreadySettled,
    ChainError,
    ClaimConflict,
    FeeAboveLimit,
    InvalidEvidence,
    InvalidPayment,
    Unauthorized,
)
from haca.chain.events import Event
from haca.chain.modules.inference.checks import (
    check_escrow,
    check_fee,
    check_height_hint,
    check_mode_registered,
    check_not_settled,
    check_settlement_window,
    check_stake,
    check_standing,
)
from haca.chain.modules.inference.keeper import InferenceKeeper
from haca.chain.modules.inference.payment import check_authorisation
from haca.chain.modules.registry.keeper import RegistryKeeper
from haca.chain.modules.tee.keeper import TeeKeeper
from haca.chain.tx import TxContext
from haca.crypto.keys import SignatureError
from haca.proofs.verifier import EnclaveStanding
from haca.types.batch import BatchMark, BatchRecord, MsgSettleBatch, RejectedItem
from haca.types.modes import Mode, Status
from haca.types.payment import SpendingAllowance
from haca.types.registry import ModelManifest, NodeRegistration

MAX_REASON = 300  # a rejection's reason as stored (the batch record stays bounded)


def settle_batch(
    ctx: TxContext, registry: RegistryKeeper, tee: TeeKeeper, keeper: InferenceKeeper, msg: MsgSettleBatch
) -> list[Event]:
    node_address, state = ctx.signer, ctx.state
    node = registry.node(state, node_address)
    check_mode_registered(node_address, node, msg.mode)
    check_stake(keeper, state, node_address, msg.mode)
    ids = msg.receipt_ids(ctx.chain_id, node_address)
    header = msg.header(ctx.chain_id, node_address)
    batch_id = header.id
    if keeper.batch_seen(state, batch_id):
        raise AlreadySettled(f"batch {batch_id} was settled before")
    try:
        signer = header.signer(msg.signature)
    except SignatureError as exc:
        raise InvalidEvidence(f"batch root signature: {exc}") from exc
    if msg.mode == Mode.VANILLA and signer != node_address:
        raise InvalidEvidence(f"batch root is signed by {signer}, not by the node {node_address}")
    known = tee.enclave(state, signer) if msg.mode == Mode.TEE else None
    if msg.mode == Mode.TEE:
        if signer == node_address:
            raise InvalidEvidence("a tee batch root must be signed by an attested enclave key, not the node's")
        if known is None or known.node != node_address:
            raise InvalidEvidence(f"batch root is signed by {signer}, not an enclave key attested for {node_address}")
    if ctx.checking:  # an item's failure never fails the tx: the block checks every item
        keeper.mark_batch_checked(state, batch_id)
        return []

    run = _BatchRun(ctx, registry, tee, keeper, msg, node, signer)
    status = (Status.VERIFIED if msg.mode == Mode.TEE else Status.SETTLED).value
    # A claimed receipt is paid by its claim (hold and terms): it settles alone, by inference/settle.
    claimed = keeper.node_claims(state, node_address)
    events: list[Event] = []
    rejected: list[RejectedItem] = []
    for index, item in enumerate(msg.items):
        receipt_id = "0x" + ids[index].hex()
        try:
            if receipt_id in claimed:
                raise ClaimConflict(f"receipt {receipt_id} is claimed: it settles alone (inference/settle)")
            run.check(index)
        except ChainError as exc:
            rejected.append(RejectedItem(index, exc.code, str(exc)[:MAX_REASON]))
            continue
        mark = BatchMark(batch_id, ctx.height, index, receipt_id, status)
        keeper.record_batch_item(state, run.clients[item.allowance], item.request_id, mark.canonical())
    fees, burned = run.pay(keeper, state)
    record = BatchRecord(
        batch_id,
        node_address,
        msg.mode,
        "0x" + header.root.hex(),
        header.count,
        signer,
        ctx.height,
        header.count - len(rejected),
        tuple(rejected),
        fees,
        burned,
        known.format if known is not None else None,
        known.dev if known is not None else None,
    )
    keeper.record_batch(state, record)
    stored = record.to_json()
    attrs = {k: str(stored[k]) for k in ("batch_id", "node", "mode", "root", "count", "settled", "fees")}
    events.append(Event("settle_batch", {**attrs, "rejected": str(len(rejected)), "burned": str(burned)}))
    return events


class _BatchRun:
    """One batch's checks, with what every item shares (models at a height, enclave standing,
    allowances, lanes) looked up once and the running sums kept in memory until `pay`."""

    def __init__(
        self,
        ctx: TxContext,
        registry: RegistryKeeper,
        tee: TeeKeeper,
        keeper: InferenceKeeper,
        msg: MsgSettleBatch,
        node: NodeRegistration,
        signer: str,
    ) -> None:
        self.ctx, self.registry, self.tee, self.keeper, self.msg = ctx, registry, tee, keeper, msg
        self.node, self.signer = node, signer
        self.params = keeper.params(ctx.state)
        self.clients = msg.clients()
        self.allowance_error: list[ChainError | None] = [self._allowance_error(a) for a in range(len(msg.allowances))]
        self.spent = [self._spent(a) for a in range(len(msg.allowances))]
        self.charged = [0] * len(msg.allowances)  # fees each allowance pays in this batch
        self.burned = [0] * len(msg.allowances)  # settlement fees each allowance's lane pays
        self.lane_escrow: list[int | None] = [None] * len(msg.allowances)
        self.lane_of = self._lanes()
        self.lane_owed = [0] * len(msg.allowances)  # charged + burned so far, per lane (first allowance)
        self.seen: set[tuple[bytes, bytes]] = set()
        self._models: dict[tuple[int, int], ModelManifest | ChainError] = {}
        self._standing: dict[tuple[int, int], EnclaveStanding | None] = {}

    def _allowance_error(self, index: int) -> ChainError | None:
        payment = self.msg.allowances[index]
        try:
            check_authorisation(self.ctx, payment, self.ctx.signer)
        except ChainError as exc:
            return exc
        allowance = payment.value
        assert isinstance(allowance, SpendingAllowance)
        if self.keeper.is_revoked(self.ctx.state, allowance.client, allowance.node, allowance.nonce, self.ctx.height):
            return InvalidPayment(f"allowance nonce {allowance.nonce} was revoked by {allowance.client}")
        return None

    def _spent(self, index: int) -> int:
        return self.keeper.allowance_spent(self.ctx.state, self.msg.spending[index].id)

    def _lanes(self) -> list[int]:
        """Allowances of one client share its lane: the index of the first allowance of that client."""
        first: dict[bytes, int] = {}
        return [first.setdefault(client, index) for index, client in enumerate(self.clients)]

    def _manifest(self, model: int, height: int) -> ModelManifest:
        key = (model, height)
        if key not in self._models:
            try:
                manifest = self.registry.model_in_effect(
                    self.ctx.state, self.msg.models[model], height, self.ctx.signer
                )
                if self.msg.mode not in manifest.modes:
                    raise Unauthorized(f"model {manifest.name!r} does not allow mode {self.msg.mode!r}")
                if manifest.name not in self.node.models:
                    raise Unauthorized(f"node {self.ctx.signer} is not registered for {manifest.name!r}")
                self._models[key] = manifest
            except ChainError as exc:
                self._models[key] = exc
        found = self._models[key]
        if isinstance(found, ChainError):
            raise found
        return found

    def _check_enclave(self, model: int, height: int, name: str) -> None:
        key = (model, height)
        if key not in self._standing:
            self._standing[key] = self.tee.standing(self.ctx.state, self.signer, height, name)
        check_standing(self.signer, self._standing[key])  # the key was checked to be the node's at the start

    def _escrow(self, lane: int) -> int:
        have = self.lane_escrow[lane]
        if have is None:
            have = self.keeper.escrow(self.ctx.state, self.msg.allowances[lane].value.client, self.ctx.signer)
            self.lane_escrow[lane] = have
        return have

    def check(self, index: int) -> None:
        """Raise the item's refusal, or count it as settling (fees added to the running sums)."""
        item = self.msg.items[index]
        a = item.allowance
        check_height_hint(item.height_hint, self.ctx.height)
        check_settlement_window(self.ctx.height, item.height_hint, self.params.claim_window)
        manifest = self._manifest(item.model, item.height_hint)
        if self.msg.mode == Mode.TEE:
            self._check_enclave(item.model, item.height_hint, manifest.name)
        check_fee(manifest, item.fee, item.prompt_tokens, item.completion_tokens, item.height_hint)
        if (error := self.allowance_error[a]) is not None:
            raise type(error)(str(error))
        allowance = self.msg.spending[a]
        if (too_much := allowance.per_request_limit(item.fee)) is not None:
            raise FeeAboveLimit(too_much)
        used = self.spent[a] + self.charged[a]
        if used + item.fee > allowance.cap:
            raise FeeAboveLimit(f"allowance cap {allowance.cap}: {used} spent, fee {item.fee} would exceed it")
        request = (self.clients[a], item.request_id)
        if request in self.seen:
            raise AlreadySettled(f"request 0x{item.request_id.hex()} is in this batch twice")
        client = allowance.client
        check_not_settled(self.keeper, self.ctx.state, client, "0x" + item.request_id.hex())
        lane = self.lane_of[a]
        settlement_fee = self.params.settlement_fee_for(item.fee)
        owed, have = self.lane_owed[lane], self._escrow(lane)
        check_escrow(have, item.fee, settlement_fee, client, self.ctx.signer, owed)
        self.seen.add(request)
        self.charged[a] += item.fee
        self.burned[a] += settlement_fee
        self.lane_owed[lane] += item.fee + settlement_fee

    def pay(self, keeper: InferenceKeeper, state: Any) -> tuple[int, int]:
        """Move what the batch charged: per allowance its spend; per lane fee to the node, settlement fee burned."""
        node = self.ctx.signer
        for a, payment in enumerate(self.msg.spending):
            if self.charged[a]:
                keeper.add_allowance_spent(state, payment.id, self.charged[a])
        fees, burned = sum(self.charged), sum(self.burned)
        for lane in sorted(set(self.lane_of)):
            members = [a for a in range(len(self.clients)) if self.lane_of[a] == lane]
            fee, burn = sum(self.charged[a] for a in members), sum(self.burned[a] for a in members)
            client = self.msg.allowances[lane].value.client
            if fee:
                keeper.pay_from_escrow(state, client, node, node, fee)
            if burn:
                keeper.burn_from_escrow(state, client, node, burn)
        return fees, burned
