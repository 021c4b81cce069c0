"""What a chaos run observes: the txs the load generator sent, the receipts nodes served, the
perturbation steps and their recovery. Plain data: the checks (haca.devnet.chaos.checks) are pure
functions of these, so unit tests feed them fabricated observations."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SentTx:
    """A tx the load generator signed and broadcast (the same raw bytes each rebroadcast)."""

    hash: str
    kind: str  # "transfer" | "deposit" | ...
    accepted: bool  # CheckTx accepted it (on at least one broadcast)
    error: str = ""  # the last refusal or transport error
    rebroadcasts: int = 0


@dataclass
class ServedReceipt:
    """A receipt a node returned to a paying client: what must settle exactly once."""

    receipt_id: str
    request_id: str
    client: str
    node: str
    fee: int
    mode: str
    path: str  # "single" (MsgSettle) | "batch" (MsgSettleBatch)
    served_at: float


@dataclass
class StepRecord:
    """One perturbation: when it was injected and healed, and how long until the target answered
    again (recovery_s; None when it did not within the bound, or the step failed)."""

    name: str
    kind: str
    target: str
    started: float = 0.0
    healed: float = 0.0
    recovered: float = 0.0
    recovery_s: float | None = None
    error: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HeaderObservation:
    """What one validator's RPC reports for one height: the header's app hash and block time."""

    validator: str
    height: int
    app_hash: str
    time_s: float  # the header's time, seconds since the epoch
