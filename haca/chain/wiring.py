"""How keepers get what they need from each other (the Cosmos SDK's `expected_keepers` idea).

A keeper names what it needs from another module as a small Protocol defined next to it (named for
what it offers, e.g. `StakeRequirement`) and takes it as a constructor argument: `dependency`
checks it there, so a missing or wrong one is a TypeError when the app is built, never a check
skipped later. Where two keepers need each other, the one built first exposes a `Hook` that the
app sets once after building the other; `unset_hooks` lists what was left unset, and the app
refuses to start with any.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def dependency(owner: str, name: str, value: T, protocol: type) -> T:
    """`value`, if it offers every method of `protocol` (a runtime-checkable Protocol); else a
    TypeError naming the owner, the dependency and what is missing."""
    if value is None or not isinstance(value, protocol):
        methods = sorted(n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_"))
        missing = [m for m in methods if not callable(getattr(value, m, None))]
        raise TypeError(
            f"{owner} needs {name!r}: a {protocol.__name__} (offering {', '.join(methods)});"
            f" got {type(value).__name__}, missing {', '.join(missing)}"
        )
    return value


class Hook(Generic[P, R]):
    """A function one keeper calls but another provides, set once at wiring (for keepers that
    need each other). Calling it before it is set, or setting it twice, is a RuntimeError."""

    def __init__(self, name: str) -> None:
        self.name = name  # "<module>.<hook>", for the errors
        self._fn: Callable[P, R] | None = None

    @property
    def is_set(self) -> bool:
        return self._fn is not None

    def set(self, fn: Callable[P, R]) -> None:
        if self._fn is not None:
            raise RuntimeError(f"hook {self.name} is already set: a hook is wired once")
        if not callable(fn):
            raise TypeError(f"hook {self.name} takes a function, got {type(fn).__name__}")
        self._fn = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self._fn is None:
            raise RuntimeError(f"hook {self.name} is not wired")
        return self._fn(*args, **kwargs)


def unset_hooks(*keepers: Any) -> list[str]:
    """The names of the keepers' hooks that nobody set."""
    return [v.name for k in keepers for v in vars(k).values() if isinstance(v, Hook) and not v.is_set]
