"""The application's genesis state (CometBFT's `app_state`): denom, fee params, funded accounts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from haca.chain.errors import InvalidGenesis
from haca.chain.modules.auth.keeper import FeeParams
from haca.chain.modules.inference.keeper import InferenceParams
from haca.chain.modules.registry.keeper import RegistryParams
from haca.crypto.keys import normalize_address
from haca.types.encoding import parse_uint


@dataclass(frozen=True)
class GenesisAccount:
    address: str
    balance: int


@dataclass(frozen=True)
class AppGenesis:
    denom: str = "opg"
    fees: FeeParams = field(default_factory=FeeParams)
    inference: InferenceParams = field(default_factory=InferenceParams)
    registry: RegistryParams = field(default_factory=RegistryParams)
    accounts: tuple[GenesisAccount, ...] = ()

    @property
    def total_supply(self) -> int:
        return sum(a.balance for a in self.accounts)

    def to_json(self) -> dict[str, Any]:
        return {
            "denom": self.denom,
            "params": {
                "auth": self.fees.to_json(),
                "inference": self.inference.to_json(),
                "registry": self.registry.to_json(),
            },
            "accounts": [{"address": a.address, "balance": str(a.balance)} for a in self.accounts],
        }


def parse_app_genesis(raw: bytes) -> AppGenesis:
    """Validate `app_state` bytes; raise InvalidGenesis with the reason."""
    try:
        doc = json.loads(raw or b"{}")
        denom = doc.get("denom", "opg")
        if not isinstance(denom, str) or not denom.isalnum():
            raise ValueError(f"denom must be alphanumeric, got {denom!r}")
        fee_doc = doc.get("params", {}).get("auth", {})
        fees = FeeParams(
            tx_fee_base=parse_uint(fee_doc.get("tx_fee_base", FeeParams.tx_fee_base), "tx_fee_base", 64),
            tx_fee_per_byte=parse_uint(
                fee_doc.get("tx_fee_per_byte", FeeParams.tx_fee_per_byte), "tx_fee_per_byte", 64
            ),
        )
        inf_doc = doc.get("params", {}).get("inference", {})
        defaults = InferenceParams()
        inference = InferenceParams(
            **{name: parse_uint(inf_doc.get(name, getattr(defaults, name)), name, 64) for name in defaults.to_json()}
        )
        if inference.settlement_fee_bps > 10_000:
            raise ValueError("settlement_fee_bps must be at most 10000")
        reg_doc = doc.get("params", {}).get("registry", {})
        registry = RegistryParams(
            price_delay=parse_uint(reg_doc.get("price_delay", RegistryParams.price_delay), "price_delay", 32)
        )
        for name in ("withdraw_delay", "revoke_delay"):
            if getattr(inference, name) > 1 << 32:
                raise ValueError(f"{name} must be at most 2**32 blocks")
        accounts = tuple(
            GenesisAccount(normalize_address(a["address"]), parse_uint(a["balance"], "balance"))
            for a in doc.get("accounts", [])
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InvalidGenesis(f"invalid app_state: {exc}") from exc
    if len({a.address for a in accounts}) != len(accounts):
        raise InvalidGenesis("invalid app_state: an account is listed twice")
    return AppGenesis(denom=denom, fees=fees, inference=inference, registry=registry, accounts=accounts)
