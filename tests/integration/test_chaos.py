"""Issue 23, part 1, on a live 4-validator devnet: a short run of every chaos scenario (faults under
load), each checked exactly: no accepted tx lost, no served receipt lost or settled twice, app
hashes equal at every height, the supply invariant, and a recovery time for every perturbation."""

from __future__ import annotations

import pytest

from haca.devnet.chaos import SCENARIOS, ChaosOptions, run_chaos

pytestmark = [pytest.mark.devnet, pytest.mark.slow]

# Seconds of load per scenario: a few slots of faults each, the whole module a few minutes on 2 cores.
DURATIONS = {"validators": 30.0, "services": 40.0, "tee": 40.0}


@pytest.mark.parametrize("scenario", list(DURATIONS))
def test_a_short_chaos_run_loses_nothing_and_every_fault_recovers(inference_devnet, scenario):
    options = ChaosOptions(scenario, DURATIONS[scenario], inference_devnet.home, drain_timeout_s=240.0)
    report = run_chaos(options).to_json()

    assert report["failures"] == [], report
    assert report["txs_lost"] == 0
    assert report["receipts_lost"] == 0
    assert report["receipts_double_settled"] == 0
    assert report["app_hash_agree"] is True
    assert report["supply_invariant_ok"] is True
    steps = report["perturbations"]
    assert [s["name"] for s in steps] == [p.name for p in SCENARIOS[scenario]()]
    for step in steps:
        assert step["error"] == "" and step["recovery_s"] is not None and step["recovery_s"] >= 0, step
    # the load ran through the faults: transfers committed, receipts of each path settled
    assert report["txs_committed"] > 0
    assert report["receipts_by_mode"]["vanilla/single"]["settled"] > 0
    assert report["receipts_by_mode"]["vanilla/batch"]["settled"] > 0
    assert report["receipts_by_mode"]["tee/single"]["settled"] > 0
