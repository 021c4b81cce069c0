"""Importing this module registers every chain message type with the tx decoder."""

from haca.types import bank, inference, registry  # noqa: F401
