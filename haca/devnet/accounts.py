"""Deterministic dev accounts: the same keys on every machine, funded in every devnet genesis."""

from __future__ import annotations

from haca.crypto.keys import PrivateKey

DEV_ACCOUNTS = 10
DEV_BALANCE = 10**24  # base units per dev account


SERVICE_ACCOUNTS = ("node0", "publisher")  # the devnet's inference node operator and model publisher


def dev_keys(count: int = DEV_ACCOUNTS) -> list[tuple[str, PrivateKey]]:
    return [(f"dev{i}", PrivateKey.from_seed(f"haca devnet account {i}")) for i in range(count)]


def service_keys() -> list[tuple[str, PrivateKey]]:
    return [(name, PrivateKey.from_seed(f"haca devnet {name}")) for name in SERVICE_ACCOUNTS]


VALIDATOR_BOND = 10**21  # each devnet validator's operator bonds this at genesis
NODE_BOND = 10**21  # node0's bond at genesis (above the devnet's minimum stakes)


def operator_key(moniker: str) -> PrivateKey:
    """The account that operates (and bonds for) devnet validator `moniker`."""
    return PrivateKey.from_seed(f"haca devnet operator {moniker}")
