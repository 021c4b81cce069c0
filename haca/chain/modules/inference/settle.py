"""Settling one receipt: every check that must hold before the fee moves, then the transfers.

Checks (any failure rejects the whole MsgSettle, nothing changes):
the tx signer is the receipt's node and signed it; the receipt's height hint is not in the future;
the node's bond meets the mode's minimum stake (for a claimed receipt: it did when claimed);
the model's terms in effect at that height allow the mode and price it at most the fee (terms
changed later never void a receipt); the node is registered for that model and mode; the mode's
verifier accepts the signature (vanilla: the node's account key; tee: an enclave key attested for
the node, covering the receipt's height, with a measurement approved now); the client
signed the payment for this node, chain, request (or allowance), unexpired and not revoked at
this height, fee within max or cap; the request was never settled; the client's escrow for this
node covers fee + settlement fee.
"""

from __future__ import annotations

from haca.chain.errors import (
    EnclaveNotInGoodStanding,
    InvalidEvidence,
    InvalidPayment,
    MeasurementNotApproved,
    Unauthorized,
)
from haca.chain.events import Event
from haca.chain.modules.inference.checks import (
    check_escrow,
    check_fee,
    check_height_hint,
    check_model_registered,
    check_not_settled,
    check_settlement_window,
    check_stake,
)
from haca.chain.modules.inference.claims import resolve_claim
from haca.chain.modules.inference.keeper import InferenceKeeper
from haca.chain.modules.inference.payment import check_payment_for
from haca.chain.modules.registry.keeper import RegistryKeeper
from haca.chain.modules.tee.keeper import TeeKeeper
from haca.chain.tx import TxContext
from haca.proofs.receipt import EvidenceError
from haca.proofs.verifier import CircuitArtefacts, EnclaveLapsed, MeasurementRevoked, VerifyContext, verify
from haca.proofs.zk.srs import srs_file
from haca.types.inference import SettlementItem
from haca.types.modes import Mode
from haca.types.payment import SpendingAllowance
from haca.types.registry import ModelManifest
from haca.types.settlement import EnclaveSigner, SettlementRecord


def settle_item(
    ctx: TxContext, registry: RegistryKeeper, tee: TeeKeeper, keeper: InferenceKeeper, item: SettlementItem
) -> list[Event]:
    receipt = item.receipt.receipt
    if receipt.node != ctx.signer:
        raise Unauthorized(f"receipt is from node {receipt.node}; only that node may settle it")
    if receipt.chain_id != ctx.chain_id:
        raise InvalidPayment(f"receipt is for chain {receipt.chain_id!r}")
    check_height_hint(receipt.height_hint, ctx.height)
    params = keeper.params(ctx.state)
    claim = keeper.claim(ctx.state, item.receipt.id)
    claimed = claim is not None
    if not claimed:
        # A receipt settles within the claim window of its height: a node cannot sign receipts
        # with old height hints to make them unclaimable and still be paid for them.
        check_settlement_window(ctx.height, receipt.height_hint, params.claim_window)
    manifest = registry.model_in_effect(ctx.state, receipt.model_id, receipt.height_hint, receipt.node)
    node = registry.node(ctx.state, ctx.signer)
    check_model_registered(ctx.signer, node, manifest, receipt.mode)
    if claim is None or claim.bonded < claim.min_stake:
        # The minimum stake bounds new business. A claimed receipt whose node met the minimum when
        # the claim was made is paid by the claim's hold: a node slashed (or a minimum raised)
        # since must still answer it, or one slash would cascade into one for every later claim.
        check_stake(keeper, ctx.state, ctx.signer, receipt.mode)
    vctx = VerifyContext(
        ctx.chain_id,
        ctx.height,
        ctx.time,
        manifest.name,
        ctx.signer,
        enclave=lambda key: tee.standing(ctx.state, key, receipt.height_hint, manifest.name),
        circuit=_circuit(registry, keeper, ctx, manifest) if receipt.mode == Mode.ZKML else None,
        defer_proof=ctx.checking,
    )
    try:
        verdict = verify(keeper.verifiers, item.receipt, item.evidence, vctx)
    except MeasurementRevoked as exc:
        raise MeasurementNotApproved(str(exc)) from exc
    except EnclaveLapsed as exc:
        raise EnclaveNotInGoodStanding(str(exc)) from exc
    except EvidenceError as exc:
        raise InvalidEvidence(str(exc)) from exc
    check_fee(manifest, receipt.fee, receipt.prompt_tokens, receipt.completion_tokens, receipt.height_hint)
    if not claimed:
        _check_payment(ctx, keeper, item)
    # (a claimed receipt's payment is its claim: checked when it was made, its hold pays)
    check_not_settled(keeper, ctx.state, receipt.client, receipt.request_id)
    if verdict.provisional:
        # CheckTx with the proof left to the block: the mempool's state must not show the receipt
        # settled (a junk proof would keep the client's claim out of the mempool until it fails).
        return []
    resolved = resolve_claim(keeper, ctx.state, item.receipt.id)  # a claimed receipt's evidence arrived

    # The client's escrow pays the inference fee to the node and the settlement fee to the burn.
    settlement_fee = params.settlement_fee_for(receipt.fee)
    payment_kind = item.payment.kind
    if resolved is not None:  # at the claim's terms
        settlement_fee, payment_kind = resolved[1].held - receipt.fee, resolved[1].payment
    escrow = keeper.escrow(ctx.state, receipt.client, receipt.node)
    check_escrow(escrow, receipt.fee, settlement_fee, receipt.client, receipt.node)
    keeper.pay_from_escrow(ctx.state, receipt.client, receipt.node, receipt.node, receipt.fee)
    keeper.burn_from_escrow(ctx.state, receipt.client, receipt.node, settlement_fee)
    # tee: which attested key signed it, and whether that was the DEV attester
    enclave = EnclaveSigner(verdict.signer, verdict.enclave.format, verdict.enclave.dev) if verdict.enclave else None
    record = SettlementRecord(
        item.receipt.id,
        verdict.status,
        ctx.height,
        receipt.node,
        receipt.client,
        receipt.request_id,
        receipt.model_id,
        receipt.mode,
        receipt.fee,
        settlement_fee,
        payment_kind,
        enclave,
    )
    keeper.record_settlement(ctx.state, record)
    settled = Event("settle", {k: str(v) for k, v in record.to_json().items()})
    return [settled] if resolved is None else [resolved[0], settled]


def _circuit(
    registry: RegistryKeeper, keeper: InferenceKeeper, ctx: TxContext, manifest: ModelManifest
) -> CircuitArtefacts | None:
    ref = manifest.circuit
    if ref is None:
        return None
    settings, vk = registry.blob(ctx.state, ref.settings_hash), registry.blob(ctx.state, ref.vk_hash)
    if settings is None or vk is None or keeper.srs_dir is None:
        return None  # the verifier refuses: nothing to verify against
    srs = srs_file(keeper.srs_dir, ref.logrows)
    return CircuitArtefacts(settings, vk, ref.settings_hash, ref.vk_hash, srs)


def _check_payment(ctx: TxContext, keeper: InferenceKeeper, item: SettlementItem) -> None:
    receipt = item.receipt.receipt
    auth = check_payment_for(ctx, keeper, receipt, item.payment)
    if isinstance(auth, SpendingAllowance):
        keeper.add_allowance_spent(ctx.state, auth.id, receipt.fee)
