"""The application's genesis state (CometBFT's `app_state`): denom, fee params, funded accounts."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from haca.chain.errors import InvalidGenesis
from haca.chain.modules.auth.keeper import FeeParams
from haca.chain.modules.inference.keeper import InferenceParams
from haca.chain.modules.registry.keeper import RegistryParams
from haca.chain.modules.staking.keeper import STAKING_ACCOUNT, StakingParams
from haca.chain.params import parse_params
from haca.chain.windows import evidence_windows_error
from haca.crypto.keys import normalize_address
from haca.proofs.tee.policy import TeePolicy
from haca.types.encoding import parse_uint
from haca.types.fields import model_id
from haca.types.tee import MsgApproveMeasurement


@dataclass(frozen=True)
class GenesisAccount:
    address: str
    balance: int


@dataclass(frozen=True)
class TeeGenesis:
    policy: TeePolicy = field(default_factory=TeePolicy)
    approvals: tuple[tuple[str, str], ...] = ()  # (model name or "*", measurement id)

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy.to_json(),
            "approvals": [{"model": scope, "measurement_id": mid} for scope, mid in self.approvals],
        }

    @classmethod
    def from_json(cls, doc: Any) -> TeeGenesis:
        if not isinstance(doc, dict) or not set(doc) <= {"policy", "approvals"}:
            raise ValueError("tee: expected an object with 'policy' and 'approvals'")
        approvals = doc.get("approvals", [])
        if not isinstance(approvals, list):
            raise ValueError("tee.approvals: expected a list")
        parsed = tuple(
            sorted({(a.model, a.measurement_id) for a in (MsgApproveMeasurement.from_json(x) for x in approvals)})
        )
        return cls(TeePolicy.from_json(doc.get("policy", {})), parsed)


@dataclass(frozen=True)
class AppGenesis:
    denom: str = "opg"
    fees: FeeParams = field(default_factory=FeeParams)
    inference: InferenceParams = field(default_factory=InferenceParams)
    registry: RegistryParams = field(default_factory=RegistryParams)
    accounts: tuple[GenesisAccount, ...] = ()
    authorities: tuple[str, ...] = ()  # governance: the accounts whose messages change params and policy
    tee: TeeGenesis = field(default_factory=TeeGenesis)
    # zkml: sha256 of the SRS file per logrows (a genesis artefact every validator holds)
    srs: tuple[tuple[int, str], ...] = ()
    staking: StakingParams = field(default_factory=StakingParams)
    bonds: tuple[tuple[str, int], ...] = ()  # (address, amount) bonded at genesis (validators' operators, nodes)
    validators: tuple[tuple[str, str], ...] = ()  # (ed25519 public key, base64; its operator's address)

    @property
    def total_supply(self) -> int:
        """Everything genesis creates: the accounts' balances and the bonds (held by the staking module)."""
        return sum(a.balance for a in self.accounts) + sum(amount for _, amount in self.bonds)

    def to_json(self) -> dict[str, Any]:
        return {
            "denom": self.denom,
            "params": {
                "auth": self.fees.to_json(),
                "inference": self.inference.to_json(),
                "registry": self.registry.to_json(),
                "staking": self.staking.to_json(),
            },
            "accounts": [{"address": a.address, "balance": str(a.balance)} for a in self.accounts],
            "authorities": list(self.authorities),
            "tee": self.tee.to_json(),
            "zk": {"srs": {str(k): v for k, v in self.srs}},
            "staking": {
                "bonds": [{"address": a, "amount": str(n)} for a, n in self.bonds],
                "validators": [{"pub_key": k, "operator": o} for k, o in self.validators],
            },
        }


def parse_app_genesis(raw: bytes) -> AppGenesis:
    """Validate `app_state` bytes; raise InvalidGenesis with the reason."""
    try:
        doc = json.loads(raw or b"{}")
        denom = doc.get("denom", "opg")
        if not isinstance(denom, str) or not denom.isalnum():
            raise ValueError(f"denom must be alphanumeric, got {denom!r}")
        params = doc.get("params", {})
        if not isinstance(params, dict):
            raise ValueError("params must be an object")
        fees = parse_params(FeeParams, params.get("auth", {}), FeeParams())
        inference = parse_params(InferenceParams, params.get("inference", {}), InferenceParams())
        registry = parse_params(RegistryParams, params.get("registry", {}), RegistryParams())
        staking = parse_params(StakingParams, params.get("staking", {}), StakingParams())
        bonds, validators = _staking(doc.get("staking", {}))
        authorities = doc.get("authorities", [])
        if not isinstance(authorities, list):
            raise ValueError("authorities must be a list of addresses")
        authorities = tuple(sorted({normalize_address(a) for a in authorities}))
        tee = TeeGenesis.from_json(doc.get("tee", {}))
        srs = _srs_pins(doc.get("zk", {}))
        accounts = tuple(
            GenesisAccount(normalize_address(a["address"]), parse_uint(a["balance"], "balance"))
            for a in doc.get("accounts", [])
        )
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error) as exc:
        raise InvalidGenesis(f"invalid app_state: {exc}") from exc
    if len({a.address for a in accounts}) != len(accounts):
        raise InvalidGenesis("invalid app_state: an account is listed twice")
    if windows := evidence_windows_error(inference, staking):
        raise InvalidGenesis(f"invalid app_state: {windows}")
    if STAKING_ACCOUNT in {a.address for a in accounts}:
        raise InvalidGenesis("invalid app_state: the staking module account holds only bonds")
    return AppGenesis(
        denom=denom,
        fees=fees,
        inference=inference,
        registry=registry,
        accounts=accounts,
        authorities=authorities,
        tee=tee,
        srs=srs,
        staking=staking,
        bonds=bonds,
        validators=validators,
    )


def _staking(doc: Any) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """`{"bonds": [{"address", "amount"}], "validators": [{"pub_key": base64 ed25519, "operator"}]}`."""
    if not isinstance(doc, dict) or not set(doc) <= {"bonds", "validators"}:
        raise ValueError("staking: expected {'bonds': [...], 'validators': [...]}")
    bonds: dict[str, int] = {}
    for bond in doc.get("bonds", []):
        address = normalize_address(bond["address"])
        if address in bonds:
            raise ValueError(f"staking.bonds: {address} is listed twice")
        bonds[address] = parse_uint(bond["amount"], "staking.bonds.amount")
    validators = []
    for validator in doc.get("validators", []):
        key = base64.b64decode(validator["pub_key"], validate=True)
        if len(key) != 32:
            raise ValueError("staking.validators.pub_key: expected a base64 ed25519 public key (32 bytes)")
        validators.append((base64.b64encode(key).decode(), normalize_address(validator["operator"])))
    if len({k for k, _ in validators}) != len(validators):
        raise ValueError("staking.validators: a public key is listed twice")
    return tuple(sorted(bonds.items())), tuple(sorted(validators))


def _srs_pins(doc: Any) -> tuple[tuple[int, str], ...]:
    if not isinstance(doc, dict) or not set(doc) <= {"srs"} or not isinstance(doc.get("srs", {}), dict):
        raise ValueError("zk: expected {'srs': {logrows: 'sha256:…'}}")
    pins = []
    for logrows, digest in doc.get("srs", {}).items():
        if not (isinstance(logrows, str) and logrows.isdigit() and 1 <= int(logrows) <= 28):
            raise ValueError(f"zk.srs: {logrows!r} is not a logrows from 1 to 28")
        pins.append((int(logrows), model_id(digest, f"zk.srs.{logrows}")))
    return tuple(sorted(pins))
