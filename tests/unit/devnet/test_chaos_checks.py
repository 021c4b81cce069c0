"""The chaos run's checks, fed fabricated observations: each fault is reported as what it is."""

from __future__ import annotations

from typing import Any

import pytest

from haca.devnet.chaos.checks import (
    ChaosReport,
    check_app_hashes,
    check_receipts,
    check_supply,
    check_txs,
    largest_block_gap,
)
from haca.devnet.chaos.observe import header_time
from haca.devnet.chaos.records import HeaderObservation, SentTx, ServedReceipt, StepRecord
from haca.devnet.chaos.runner import plan
from haca.devnet.chaos.scenarios import SCENARIOS
from haca.devnet.network import DevnetError

VALIDATORS = ["val0", "val1", "val2", "val3"]


def served(receipt_id: str, mode: str = "vanilla", path: str = "single") -> ServedReceipt:
    return ServedReceipt(receipt_id, "r-" + receipt_id, "0xclient", "0xnode", 10, mode, path, 0.0)


def headers(hashes: dict[str, list[str]], times: list[float] | None = None) -> list[HeaderObservation]:
    return [
        HeaderObservation(name, height, app_hash, (times or [float(h) for h in range(1, 100)])[height - 1])
        for name, column in hashes.items()
        for height, app_hash in enumerate(column, start=1)
    ]


def test_an_accepted_tx_no_validator_committed_is_lost_and_a_refused_one_is_not() -> None:
    sent = [
        SentTx("AA", "transfer", True),
        SentTx("BB", "transfer", True, rebroadcasts=2),
        SentTx("CC", "transfer", False, error="nonce too low"),
        SentTx("DD", "transfer", True),
    ]
    check = check_txs(sent, {"AA": 0, "BB": None, "DD": 5})
    assert (check.sent, check.accepted, check.committed, check.failed_in_block) == (4, 3, 2, 1)
    assert check.lost == ("BB",) and check.rebroadcasts == 2 and not check.ok


def test_every_accepted_tx_committed_passes() -> None:
    check = check_txs([SentTx("AA", "transfer", True)], {"AA": 0})
    assert check.ok and check.lost == ()


def test_a_receipt_settled_twice_is_reported_as_duplicated_even_if_not_served_by_the_load() -> None:
    check = check_receipts([served("0x1"), served("0x2")], {"0x1": 2, "0x2": 1, "0x9": 3}, {})
    assert check.duplicated == ("0x1", "0x9")
    assert check.lost == () and check.settled == 2 and not check.ok


def test_a_served_receipt_never_settled_is_lost_unless_refused_for_a_cause_the_run_made() -> None:
    receipts = [served("0x1", "tee"), served("0x2", "tee"), served("0x3", "tee"), served("0x4", "tee")]
    refusals = {"0x2": "measurement tee:abc is not approved for model 'iris'", "0x3": "escrow too low"}
    check = check_receipts(receipts, {"0x4": 1}, refusals, excused=("not approved",))
    assert check.lost == ("0x1", "0x3")
    assert check.refused == {"0x2": refusals["0x2"]}
    assert check.by_mode == {"tee/single": {"served": 4, "settled": 1}}


def test_a_refusal_is_not_excused_when_the_run_caused_nothing_like_it() -> None:
    check = check_receipts([served("0x2")], {}, {"0x2": "measurement is not approved"}, excused=())
    assert check.lost == ("0x2",)


def test_a_receipt_served_twice_to_the_recorder_counts_once() -> None:
    check = check_receipts([served("0x1"), served("0x1", path="batch")], {"0x1": 1}, {})
    assert check.served == 1 and check.settled == 1 and check.ok


def test_validators_agreeing_at_every_height_agree() -> None:
    same = ["h1", "h2", "h3"]
    check = check_app_hashes(headers({name: same for name in VALIDATORS}), VALIDATORS)
    assert check.agree and (check.first_height, check.last_height) == (1, 3) and not check.mismatches


def test_an_app_hash_disagreement_names_the_height_and_each_validators_hash() -> None:
    columns = {name: ["h1", "h2", "h3"] for name in VALIDATORS}
    columns["val2"] = ["h1", "X2", "h3"]
    check = check_app_hashes(headers(columns), VALIDATORS)
    assert not check.agree
    assert check.mismatches == ({"height": 2, "hashes": {"val0": "h2", "val1": "h2", "val2": "x2", "val3": "h2"}},)


def test_a_validator_a_block_behind_still_agrees() -> None:
    columns = {name: ["h1", "h2", "h3", "h4"] for name in VALIDATORS}
    columns["val3"] = ["h1", "h2", "h3"]  # read a moment earlier
    check = check_app_hashes(headers(columns), VALIDATORS)
    assert check.agree and check.last_height == 4 and check.lagging == {}


def test_a_validator_stuck_behind_fails_the_agreement_as_a_divergence_would_show() -> None:
    # CometBFT commits no block a validator disputes: one whose app diverged stops, the rest go on
    columns = {name: [f"h{i}" for i in range(1, 11)] for name in VALIDATORS}
    columns["val2"] = ["h1", "h2", "h3"]
    check = check_app_hashes(headers(columns), VALIDATORS)
    assert not check.agree and not check.mismatches and check.lagging == {"val2": 3}
    failure = report(app_hashes=check).failures()[0]
    assert "validators behind (top height) {'val2': 3}" in failure


def test_a_validator_that_answered_nothing_fails_the_agreement() -> None:
    columns = {name: ["h1", "h2", "h3", "h4", "h5"] for name in VALIDATORS[:3]}
    check = check_app_hashes(headers(columns), VALIDATORS)
    assert not check.agree and check.lagging == {"val3": 0}


def test_a_disagreement_during_a_tree_change_says_so() -> None:
    mismatch = check_app_hashes(headers({"val0": ["a"], "val1": ["b"]}), ["val0", "val1"])
    changed = report(app_hashes=mismatch)
    changed.code_changed = True
    assert "sources changed during the run" in changed.failures()[0]
    assert changed.to_json()["state_machine_code_changed"] is True


def test_a_height_missing_from_one_validators_answers_is_reported() -> None:
    observations = headers({name: ["h1", "h2", "h3"] for name in VALIDATORS})
    observations = [o for o in observations if not (o.validator == "val1" and o.height == 2)]
    check = check_app_hashes(observations, VALIDATORS)
    assert not check.agree and check.missing == {"val1": 1}


def test_the_largest_block_gap_is_between_consecutive_heights() -> None:
    observations = headers({"val0": ["a", "b", "c", "d"]}, times=[10.0, 10.5, 17.25, 17.75])
    gap = largest_block_gap(observations)
    assert (gap.seconds, gap.height) == (6.75, 3)


def test_the_supply_invariant_holds_when_balances_sum_to_total_and_total_plus_burned_is_minted() -> None:
    assert check_supply({"a": 60, "escrow": 30, "staking": 5}, 95, 5, 100, 7).ok
    assert not check_supply({"a": 60, "escrow": 31, "staking": 5}, 95, 5, 100, 7).ok  # balances != total
    assert not check_supply({"a": 60, "escrow": 30, "staking": 5}, 95, 6, 100, 7).ok  # minted != total + burned


def test_header_time_keeps_nanoseconds() -> None:
    assert header_time("2026-12-07T09:00:01.5Z") - header_time("2026-12-07T09:00:00.000000001Z") > 1.49
    assert header_time("1970-01-01T00:00:02.250000000Z") == 2.25


def report(**changes: Any) -> ChaosReport:
    good: dict[str, Any] = {
        "scenario": "validators",
        "duration_s": 30.0,
        "txs": check_txs([SentTx("AA", "transfer", True)], {"AA": 0}),
        "receipts": check_receipts([served("0x1")], {"0x1": 1}, {}),
        "app_hashes": check_app_hashes(headers({name: ["h1"] for name in VALIDATORS}), VALIDATORS),
        "block_gap": largest_block_gap([]),
        "supply": check_supply({"a": 1}, 1, 0, 1, 1),
        "steps": [StepRecord("kill-val1", "kill", "val1", recovery_s=1.5)],
    }
    return ChaosReport(**(good | changes))


def test_a_clean_run_passes_and_its_json_has_the_headline_fields() -> None:
    doc = report().to_json()
    assert doc["ok"] and doc["failures"] == []
    assert (doc["txs_lost"], doc["receipts_lost"], doc["receipts_double_settled"]) == (0, 0, 0)
    assert doc["app_hash_agree"] is True and doc["supply_invariant_ok"] is True
    assert doc["perturbations"][0]["recovery_s"] == 1.5


def test_each_failed_check_fails_the_run() -> None:
    assert not report(txs=check_txs([SentTx("AA", "transfer", True)], {})).ok
    assert not report(receipts=check_receipts([served("0x1")], {"0x1": 2}, {})).ok
    assert not report(supply=check_supply({"a": 1}, 2, 0, 2, 1)).ok
    mismatch = check_app_hashes(headers({"val0": ["a"], "val1": ["b"]}), ["val0", "val1"])
    assert not report(app_hashes=mismatch).ok


def test_a_step_that_did_not_recover_or_failed_fails_the_run() -> None:
    failures = report(steps=[StepRecord("pause-val1", "pause", "val1"), StepRecord("x", "kill", "y", error="boom")])
    assert failures.failures() == ["step pause-val1: did not recover", "step x: boom"]


def test_a_long_run_repeats_the_scenarios_list_and_a_short_one_runs_it_once() -> None:
    once = [p.name for p in SCENARIOS["validators"]()]
    assert [p.name for p in plan("validators", 30, 40)] == once
    assert [p.name for p in plan("validators", 3 * len(once) * 40, 40)] == once * 3


def test_all_runs_every_perturbation_of_the_other_scenarios() -> None:
    everything = [p.name for p in SCENARIOS["all"]()]
    parts = {p.name for name in ("validators", "services", "tee") for p in SCENARIOS[name]()}
    assert sorted(everything) == sorted(parts)  # each once (kill-enclave0 is in services and tee)


def test_an_unknown_scenario_is_refused_by_name() -> None:
    with pytest.raises(DevnetError, match="no scenario 'nope'"):
        plan("nope", 10, 40)


def test_a_receipt_a_run_client_paid_for_but_never_received_is_reported_not_failed() -> None:
    payers = {"0x1": "0xclient tee", "0x2": "0xclient tee", "0x3": "0xsomeone-else vanilla"}
    check = check_receipts([served("0x1")], {"0x1": 1, "0x2": 1, "0x3": 1}, {}, payers=payers, clients=["0xCLIENT"])
    assert check.unreceived == {"0x2": "0xclient tee"} and check.ok
