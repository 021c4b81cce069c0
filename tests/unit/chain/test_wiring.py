"""Wiring: every keeper gets what it needs from the others when it is built (small Protocols, the
expected-keeper idea). A missing dependency is one TypeError at construction naming it, never a
check skipped later; a hook is set once."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from haca.chain import app as app_module
from haca.chain.app import HacaApp
from haca.chain.modules.bank.keeper import BankKeeper
from haca.chain.modules.gov.keeper import GovKeeper
from haca.chain.modules.gov.module import GovModule
from haca.chain.modules.inference.keeper import InferenceKeeper
from haca.chain.modules.registry.keeper import RegistryKeeper
from haca.chain.modules.staking.keeper import StakingKeeper
from haca.chain.state import ReadableState
from haca.chain.store import CommitStore
from haca.chain.wiring import Hook, unset_hooks


def bank() -> BankKeeper:
    return BankKeeper(module_accounts=frozenset())


class StakeCheckOnly:
    """Offers the registry what it needs from staking, and nothing of slashing."""

    def require_stake(self, state: ReadableState, address: str, modes: Any) -> None:
        return None


def test_the_app_wires_each_keeper_with_its_dependencies(tmp_path: Path) -> None:
    app = HacaApp(CommitStore(tmp_path / "state.db"))
    assert app.registry.stakes is app.staking
    assert app.inference.staking is app.staking
    assert app.inference.bank is app.bank and app.staking.bank is app.bank
    assert app.staking.slashable_until.is_set
    assert unset_hooks(app.auth, app.bank, app.staking, app.registry, app.tee, app.inference, app.gov) == []


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda: InferenceKeeper(bank()), "staking"),  # type: ignore[call-arg]
        (lambda: InferenceKeeper(bank(), None), "InferenceKeeper needs 'staking'"),  # type: ignore[arg-type]
        (lambda: InferenceKeeper(None, StakingKeeper(bank())), "InferenceKeeper needs 'bank'"),  # type: ignore[arg-type]
        (lambda: RegistryKeeper(), "stakes"),  # type: ignore[call-arg]
        (lambda: RegistryKeeper(object()), "RegistryKeeper needs 'stakes'"),  # type: ignore[arg-type]
        (lambda: StakingKeeper(None), "StakingKeeper needs 'bank'"),  # type: ignore[arg-type]
        (lambda: BankKeeper(), "module_accounts"),  # type: ignore[call-arg]
        (lambda: GovModule(GovKeeper(), []), "consistency"),  # type: ignore[call-arg]
        (lambda: GovModule(GovKeeper(), [], None), "GovModule needs 'consistency'"),  # type: ignore[arg-type]
    ],
)
def test_a_keeper_without_its_dependency_is_refused_when_built(build: Any, named: str) -> None:
    with pytest.raises(TypeError, match=named):
        build()


def test_a_dependency_lacking_a_method_is_refused_and_the_method_named() -> None:
    with pytest.raises(TypeError, match=r"InferenceKeeper needs 'staking': a NodeStake .*missing .*slash"):
        InferenceKeeper(bank(), StakeCheckOnly())  # type: ignore[arg-type]


def test_an_app_with_staking_left_out_fails_at_construction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A staking module that only checks stakes (no slashing): the app refuses to be built, with one
    error naming what inference misses, instead of serving with the slashing turned off."""
    monkeypatch.setattr(app_module, "StakingKeeper", lambda bank: StakeCheckOnly())
    with pytest.raises(TypeError, match="InferenceKeeper needs 'staking'"):
        HacaApp(CommitStore(tmp_path / "state.db"))


def test_an_app_with_a_hook_left_unset_fails_at_construction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Hook, "set", lambda self, fn: None)
    with pytest.raises(RuntimeError, match=r"not fully wired.*staking\.slashable_until"):
        HacaApp(CommitStore(tmp_path / "state.db"))


def test_a_hook_is_set_once(tmp_path: Path) -> None:
    app = HacaApp(CommitStore(tmp_path / "state.db"))
    with pytest.raises(RuntimeError, match=r"staking\.slashable_until is already set"):
        app.staking.slashable_until.set(lambda state, address: 0)


def test_a_hook_called_before_it_is_set_is_an_error_not_a_default() -> None:
    staking = StakingKeeper(bank())
    assert unset_hooks(staking) == ["staking.slashable_until"]
    with pytest.raises(RuntimeError, match=r"staking\.slashable_until is not wired"):
        staking.slashable_until(cast(ReadableState, None), "0x" + "00" * 20)
    with pytest.raises(TypeError, match="takes a function"):
        staking.slashable_until.set(3)  # type: ignore[arg-type]
