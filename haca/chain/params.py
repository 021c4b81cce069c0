"""Module params: unsigned-integer dataclasses parsed one way for genesis and for governance."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

from haca.types.encoding import parse_uint

P = TypeVar("P")  # a frozen dataclass of ints with a `LIMITS: ClassVar[dict[str, int]]`


def parse_params(cls: type[P], doc: Any, base: P) -> P:
    """`doc` over `base`: named fields replace base's, each an unsigned integer within its limit;
    unknown fields are refused (ValueError naming them)."""
    if not isinstance(doc, dict):
        raise ValueError(f"{cls.__name__}: expected an object of params")
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(doc) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown params {unknown}; known: {names}")
    values = {name: parse_uint(doc.get(name, getattr(base, name)), name, 128) for name in names}
    minimums: Mapping[str, int] = getattr(cls, "MINIMUMS", {})
    for name, least in minimums.items():
        if values[name] < least:
            raise ValueError(f"{name} must be at least {least}")
    limits: Mapping[str, int] = getattr(cls, "LIMITS", {})
    for name, limit in limits.items():
        if values[name] > limit:
            raise ValueError(f"{name} must be at most {limit}")
    return cls(**values)
