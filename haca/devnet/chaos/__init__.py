"""`haca devnet chaos`: faults injected into a live devnet under load, then the chain checked
(no tx or receipt lost, none settled twice, app hashes agree, the supply invariant holds)."""

from haca.devnet.chaos.checks import ChaosReport
from haca.devnet.chaos.runner import ChaosOptions, run_chaos
from haca.devnet.chaos.scenarios import SCENARIOS

__all__ = ["SCENARIOS", "ChaosOptions", "ChaosReport", "run_chaos"]
