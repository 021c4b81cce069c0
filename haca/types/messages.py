"""Importing this module registers every chain message type with the tx decoder."""

from haca.types import bank, batch, gov, inference, registry, staking  # noqa: F401
