"""The checks after a chaos run, as pure functions of what was observed (haca.devnet.chaos.records
and answers read from the chain): no RPC here, so a unit test can fabricate a disagreement, a
duplicated settlement or a lost tx and see it reported."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from haca.devnet.chaos.records import HeaderObservation, SentTx, ServedReceipt, StepRecord


@dataclass(frozen=True)
class TxCheck:
    sent: int
    accepted: int
    committed: int
    failed_in_block: int  # committed with a non-zero code (executed, refused by DeliverTx)
    rebroadcasts: int
    lost: tuple[str, ...]  # accepted by CheckTx, never committed

    @property
    def ok(self) -> bool:
        return not self.lost


def check_txs(sent: Sequence[SentTx], committed: Mapping[str, int | None]) -> TxCheck:
    """`committed`: tx hash -> its DeliverTx code, or None when no validator has it in a block."""
    accepted = [tx for tx in sent if tx.accepted]
    codes = [committed.get(tx.hash) for tx in accepted]
    return TxCheck(
        sent=len(sent),
        accepted=len(accepted),
        committed=sum(code is not None for code in codes),
        failed_in_block=sum(code not in (None, 0) for code in codes),
        rebroadcasts=sum(tx.rebroadcasts for tx in sent),
        lost=tuple(tx.hash for tx, code in zip(accepted, codes, strict=True) if code is None),
    )


@dataclass(frozen=True)
class ReceiptCheck:
    served: int
    settled: int
    duplicated: tuple[str, ...]  # settled more than once (any receipt on the chain, served by us or not)
    lost: tuple[str, ...]  # served, never settled, and not refused for an outside cause
    refused: dict[str, str]  # served, refused by the chain for an outside cause the run caused: id -> reason
    by_mode: dict[str, dict[str, int]]
    # settled and paid by one of the run's clients, but never received by it (the response was lost
    # or refused by the client's checks): reported, not a failure of this campaign (issue 23's open
    # finding: such an answer is paid for and cannot be fetched)
    unreceived: dict[str, str] = field(default_factory=dict)  # receipt id -> "<client> <mode>"

    @property
    def ok(self) -> bool:
        return not self.lost and not self.duplicated


def check_receipts(
    served: Sequence[ServedReceipt],
    settlements: Mapping[str, int],
    refusals: Mapping[str, str],
    excused: Sequence[str] = (),
    payers: Mapping[str, str] | None = None,
    clients: Iterable[str] = (),
) -> ReceiptCheck:
    """`settlements`: receipt id -> how many committed, successful settlements carry it (from
    every block); `refusals`: receipt id -> the reason its node gave up on it; `excused`: reason
    fragments a perturbation of this run causes (e.g. a revoked measurement) — a receipt the chain
    refused for one of those was not lost, the node was told why; `payers`: settled receipt id ->
    paying client, and `clients` the run's clients, to find what they paid for and never got."""
    by_mode: dict[str, dict[str, int]] = defaultdict(lambda: {"served": 0, "settled": 0})
    lost: list[str] = []
    refused: dict[str, str] = {}
    seen: set[str] = set()
    for receipt in served:
        if receipt.receipt_id in seen:
            continue
        seen.add(receipt.receipt_id)
        counts = by_mode[f"{receipt.mode}/{receipt.path}"]
        counts["served"] += 1
        if settlements.get(receipt.receipt_id, 0) > 0:
            counts["settled"] += 1
            continue
        reason = refusals.get(receipt.receipt_id, "")
        if reason and any(fragment in reason for fragment in excused):
            refused[receipt.receipt_id] = reason
        else:
            lost.append(receipt.receipt_id)
    ours = {c.lower() for c in clients}
    unreceived = {
        rid: payer for rid, payer in sorted((payers or {}).items()) if payer.split()[0] in ours and rid not in seen
    }
    return ReceiptCheck(
        unreceived=unreceived,
        served=len(seen),
        settled=sum(c["settled"] for c in by_mode.values()),
        duplicated=tuple(sorted(rid for rid, count in settlements.items() if count > 1)),
        lost=tuple(lost),
        refused=refused,
        by_mode=dict(by_mode),
    )


@dataclass(frozen=True)
class AppHashCheck:
    agree: bool
    first_height: int
    last_height: int  # the highest height a validator reported
    mismatches: tuple[dict[str, Any], ...]  # {height, hashes: {validator: app hash}}
    missing: dict[str, int]  # validator -> heights up to its own top it did not answer for
    lagging: dict[str, int] = field(default_factory=dict)  # validator -> its top, when behind the others


LAG_TOLERANCE = 3  # blocks a validator may trail the highest one as their heights are read, one after another


def check_app_hashes(headers: Iterable[HeaderObservation], validators: Sequence[str], first: int = 1) -> AppHashCheck:
    """Every validator must report the same app hash at every height from `first` up, and all must
    have reached the same height (within LAG_TOLERANCE): CometBFT does not commit a block whose app
    hash a validator disputes, so a validator that diverged shows as one stuck behind the others
    (or as a halted chain), not as a mismatch in committed headers."""
    table: dict[int, dict[str, str]] = defaultdict(dict)
    tops: dict[str, int] = dict.fromkeys(validators, 0)
    for header in headers:
        table[header.height][header.validator] = header.app_hash.lower()
        tops[header.validator] = max(tops.get(header.validator, 0), header.height)
    last = max(tops.values()) if tops else 0
    mismatches = []
    missing: dict[str, int] = {}
    for height in range(first, last + 1):
        row = table.get(height, {})
        for name in validators:
            if height <= tops[name] and name not in row:
                missing[name] = missing.get(name, 0) + 1
        if len(set(row.values())) > 1:
            mismatches.append({"height": height, "hashes": dict(sorted(row.items()))})
    lagging = {name: top for name, top in tops.items() if top < last - LAG_TOLERANCE}
    agree = last >= first and not mismatches and not missing and not lagging
    return AppHashCheck(agree, first, last, tuple(mismatches), missing, lagging)


@dataclass(frozen=True)
class BlockGap:
    seconds: float
    height: int  # the block that came `seconds` after its parent


def largest_block_gap(headers: Iterable[HeaderObservation]) -> BlockGap:
    """The longest time between consecutive block headers (of one validator's chain)."""
    times = sorted({(h.height, h.time_s) for h in headers})
    gap = BlockGap(0.0, 0)
    for (h0, t0), (h1, t1) in itertools.pairwise(times):
        if h1 == h0 + 1 and t1 - t0 > gap.seconds:
            gap = BlockGap(round(t1 - t0, 3), h1)
    return gap


@dataclass(frozen=True)
class SupplyCheck:
    ok: bool
    height: int
    balances: int  # the sum over every account that can hold tokens (module accounts included)
    total: int  # the bank's supply
    burned: int
    minted: int  # what genesis created

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, int) and not isinstance(v, bool) else v) for k, v in asdict(self).items()}


def check_supply(balances: Mapping[str, int], total: int, burned: int, minted: int, height: int) -> SupplyCheck:
    """genesis supply = balances + escrow + bonded + unbonding + burned, where escrow and the
    stakes are the balances of the inference and staking module accounts: the balances sum to
    the bank's total, and total + burned is what genesis minted."""
    held = sum(balances.values())
    return SupplyCheck(held == total and total + burned == minted, height, held, total, burned, minted)


@dataclass
class ChaosReport:
    scenario: str
    duration_s: float
    txs: TxCheck
    receipts: ReceiptCheck
    app_hashes: AppHashCheck
    block_gap: BlockGap
    supply: SupplyCheck
    steps: list[StepRecord]
    load: dict[str, Any] = field(default_factory=dict)  # requests and failures per load worker
    notes: list[str] = field(default_factory=list)
    code_changed: bool = False  # the app's sources in the tree changed during the run

    def failures(self) -> list[str]:
        """Each failed check, in words (empty: the run passed)."""
        found = []
        if self.txs.lost:
            found.append(f"{len(self.txs.lost)} accepted tx(s) never committed")
        if self.receipts.lost:
            found.append(f"{len(self.receipts.lost)} served receipt(s) never settled")
        if self.receipts.duplicated:
            found.append(f"{len(self.receipts.duplicated)} receipt(s) settled more than once")
        if not self.app_hashes.agree:
            mixed = (
                " (the state machine's sources changed during the run: a validator restarted since"
                " runs other code than the rest)"
                if self.code_changed
                else ""
            )
            found.append(
                f"app hashes disagree: {len(self.app_hashes.mismatches)} height(s) differ,"
                f" missing answers {self.app_hashes.missing}, validators behind (top height)"
                f" {self.app_hashes.lagging}{mixed}"
            )
        if not self.supply.ok:
            found.append("supply invariant broken")
        for step in self.steps:
            if step.error or step.recovery_s is None:
                found.append(f"step {step.name}: {step.error or 'did not recover'}")
        return found

    @property
    def ok(self) -> bool:
        return not self.failures()

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "duration_s": round(self.duration_s, 1),
            "ok": self.ok,
            "failures": self.failures(),
            "txs_sent": self.txs.sent,
            "txs_accepted": self.txs.accepted,
            "txs_committed": self.txs.committed,
            "txs_failed_in_block": self.txs.failed_in_block,
            "txs_rebroadcast": self.txs.rebroadcasts,
            "txs_lost": len(self.txs.lost),
            "txs_lost_hashes": list(self.txs.lost),
            "receipts_served": self.receipts.served,
            "receipts_settled": self.receipts.settled,
            "receipts_lost": len(self.receipts.lost),
            "receipts_lost_ids": list(self.receipts.lost),
            "receipts_double_settled": len(self.receipts.duplicated),
            "receipts_double_settled_ids": list(self.receipts.duplicated),
            "receipts_refused_outside_cause": len(self.receipts.refused),
            "receipts_refused_reasons": self.receipts.refused,
            "receipts_by_mode": self.receipts.by_mode,
            "receipts_settled_unreceived": len(self.receipts.unreceived),
            "receipts_settled_unreceived_ids": self.receipts.unreceived,
            "app_hash_agree": self.app_hashes.agree,
            "app_hash_heights": [self.app_hashes.first_height, self.app_hashes.last_height],
            "app_hash_mismatches": list(self.app_hashes.mismatches),
            "app_hash_missing": self.app_hashes.missing,
            "validators_behind": self.app_hashes.lagging,
            "largest_block_gap_s": self.block_gap.seconds,
            "largest_block_gap_height": self.block_gap.height,
            "supply_invariant_ok": self.supply.ok,
            "supply": self.supply.to_json(),
            "perturbations": [s.to_json() for s in self.steps],
            "load": self.load,
            "state_machine_code_changed": self.code_changed,
            "notes": self.notes,
        }
