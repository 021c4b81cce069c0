"""Evidence windows across modules: a node's stake must stay slashable for everything it signed
while bonded. A receipt may be claimed up to `claim_window` blocks after its height and the claim
then runs `claim_deadline` blocks, so stake that starts unbonding when the receipt is signed must
still be there `claim_window + claim_deadline` blocks later. Genesis and governance refuse
parameter sets that break this (a slow node that unbonds would escape its claims)."""

from __future__ import annotations

from haca.chain.modules.inference.keeper import InferenceParams
from haca.chain.modules.staking.keeper import StakingParams


def evidence_windows_error(inference: InferenceParams, staking: StakingParams) -> str:
    """Why these params let stake leave before the claims on it end ("" when they do not)."""
    needed = inference.claim_window + inference.claim_deadline
    if staking.unbonding_period < needed:
        return (
            f"staking unbonding_period {staking.unbonding_period} is shorter than inference claim_window"
            f" {inference.claim_window} + claim_deadline {inference.claim_deadline} = {needed}:"
            " stake would leave before the claims on what it signed end"
        )
    return ""
