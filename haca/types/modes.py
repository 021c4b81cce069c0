"""Verification modes and receipt statuses: the names every layer uses for them.

Both are `StrEnum`s, so they compare equal to, and serialise as, their plain string values on
the wire and in state; parsed fields stay plain strings.
"""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    """How an inference is evidenced (DESIGN.md, "Verification modes")."""

    VANILLA = "vanilla"  # the node's signature only: settled, not independently verified
    TEE = "tee"  # signed by a key born in an attested enclave
    ZKML = "zkml"  # an EZKL proof binds input and output


class Status(StrEnum):
    """Where a receipt is on its way from answer to settlement."""

    PENDING = "pending"  # answered, queued at the node
    PROVING = "proving"  # a zkml proof is being made
    SUBMITTED = "submitted"  # in a settlement tx not yet seen committed
    SETTLED = "settled"  # settled on chain without independent verification (vanilla)
    VERIFIED = "verified"  # settled on chain with its evidence verified
    REJECTED = "rejected"  # the chain refused it
    FAILED = "failed"  # no evidence could be produced, or a claim against it succeeded


UNSETTLED = (Status.PENDING, Status.PROVING, Status.SUBMITTED)
FINAL = (Status.SETTLED, Status.VERIFIED, Status.REJECTED, Status.FAILED)
