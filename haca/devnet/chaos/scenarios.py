"""The named chaos scenarios: each a list of perturbations, spread over the run's duration (a long
run repeats its list)."""

from __future__ import annotations

from collections.abc import Callable

from haca.devnet.chaos.perturb import (
    AttestationExpiry,
    BatchNodeKill,
    EnclaveKill,
    MeasurementRevoked,
    MinTcbRaised,
    Perturbation,
    ProverKill,
    ServiceKill,
    ValidatorDisconnect,
    ValidatorKill,
    ValidatorPause,
)


def validators() -> list[Perturbation]:
    # val0 is left alone: node0 and the clients prefer its RPC, and the steps are about consensus
    return [
        ValidatorKill("val1", hold_s=3.0),
        ValidatorKill("val2", hold_s=2.0, part="app"),
        ValidatorKill("val3", hold_s=2.0, part="cometbft"),
        ValidatorPause("val1", hold_s=5.0),
        ValidatorDisconnect("val2", hold_s=5.0),
    ]


def services() -> list[Perturbation]:
    return [
        ServiceKill("node0", hold_s=2.0),
        BatchNodeKill(hold_s=2.0),
        EnclaveKill(hold_s=2.0),
        ProverKill(),
        ServiceKill("hub", hold_s=2.0),
    ]


def tee() -> list[Perturbation]:
    return [
        MeasurementRevoked(hold_s=4.0),
        AttestationExpiry(hold_s=2.0),
        EnclaveKill(hold_s=2.0),
        MinTcbRaised(hold_s=2.0),
    ]


def everything() -> list[Perturbation]:
    # interleaved, so each kind of fault meets load that the previous one disturbed
    groups = [validators(), services(), tee()]
    mixed: list[Perturbation] = []
    for i in range(max(len(g) for g in groups)):
        for group in groups:
            if i < len(group) and group[i].name not in {p.name for p in mixed}:
                mixed.append(group[i])
    return mixed


SCENARIOS: dict[str, Callable[[], list[Perturbation]]] = {
    "validators": validators,
    "services": services,
    "tee": tee,
    "all": everything,
}
