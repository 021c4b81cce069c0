"""A client home (`--home`, $HACA_HOME, default ~/.haca): config.json and keys/.

`haca devnet up --home DIR` writes both, so later commands with the same home need no flags.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from haca.client.chain import DEFAULT_MAX_PROOF_LAG, DEFAULT_TRUSTING_PERIOD, ChainClient
from haca.client.errors import ConfigError, KeyNotFound
from haca.crypto.keys import PrivateKey

DEFAULT_HOME = Path("~/.haca")


def resolve_home(home: Path | str | None) -> Path:
    if home is None:
        home = os.environ.get("HACA_HOME") or DEFAULT_HOME
    return Path(home).expanduser().resolve()


@dataclass
class ClientConfig:
    chain_id: str
    rpc: list[str]
    denom: str = "opg"
    default_key: str = ""
    validators: list[dict[str, Any]] = field(default_factory=list)  # trusted set for light-client checks
    extra: dict[str, Any] = field(default_factory=dict)  # later: hub, nodes
    # blocks a proven answer may be behind the latest header verified (haca.client.chain)
    max_proof_lag: int = DEFAULT_MAX_PROOF_LAG
    # The light client's trust (haca.client.light): anchored at header 1, signed by
    # `validators` (genesis), or at `trust_height` whose header hashes to `trust_hash` (a height and
    # hash from a source you trust, for a chain older than the trusting period); never skipping
    # from a header older than `trusting_period` seconds — keep it below the chain's unbonding time.
    trust_height: int = 0
    trust_hash: str = ""
    trusting_period: int = DEFAULT_TRUSTING_PERIOD

    @classmethod
    def load(cls, home: Path) -> ClientConfig:
        path = home / "config.json"
        if not path.exists():
            raise ConfigError(f"no client config at {path}: run 'haca devnet up --home {home}' or write one")
        doc = json.loads(path.read_text())
        try:
            return cls(**doc)
        except TypeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def save(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.json").write_text(json.dumps(asdict(self), indent=2) + "\n")


@dataclass(frozen=True)
class StoredKey:
    name: str
    key: PrivateKey

    @property
    def address(self) -> str:
        return self.key.address


class KeyStore:
    """Named secp256k1 keys, one JSON file each (0600). Dev-grade: keys are stored unencrypted."""

    def __init__(self, home: Path) -> None:
        self.dir = home / "keys"

    def add(self, name: str, key: PrivateKey | None = None, overwrite: bool = False) -> StoredKey:
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"key name {name!r}: use letters, digits, - and _")
        path = self.dir / f"{name}.json"
        if path.exists() and not overwrite:
            raise ConfigError(f"key {name!r} already exists")
        key = key or PrivateKey.generate()
        self.dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"name": name, "address": key.address, "private_key": key.hex}) + "\n")
        path.chmod(0o600)
        return StoredKey(name, key)

    def get(self, name_or_address: str) -> StoredKey:
        for stored in self.list():
            if name_or_address in (stored.name, stored.address) or name_or_address.lower() == stored.address:
                return stored
        raise KeyNotFound(f"no key named {name_or_address!r} in {self.dir}")

    def list(self) -> list[StoredKey]:
        if not self.dir.exists():
            return []
        keys = []
        for path in sorted(self.dir.glob("*.json")):
            doc = json.loads(path.read_text())
            keys.append(StoredKey(doc["name"], PrivateKey.from_hex(doc["private_key"])))
        return keys


def connect(config: ClientConfig) -> ChainClient:
    """A chain client for a client config, trusting the validator set the config names."""
    return ChainClient(
        config.rpc,
        config.chain_id,
        config.validators or None,
        max_proof_lag=config.max_proof_lag,
        trusting_period=config.trusting_period,
        trust_height=config.trust_height,
        trust_hash=config.trust_hash,
    )
