"""The chain's error hierarchy; each class has a stable ABCI code, mapped once in app.py."""

from __future__ import annotations


class ChainError(Exception):
    """A tx or query the chain refuses; `code` is what CheckTx/FinalizeBlock/Query report."""

    code = 1
    codespace = "haca"


class TxDecodeFailed(ChainError):
    code = 2


class WrongChainId(ChainError):
    code = 3


class InvalidSignature(ChainError):
    code = 4


class BadNonce(ChainError):
    code = 5


class InsufficientFee(ChainError):
    code = 6


class InsufficientFunds(ChainError):
    code = 7


class UnknownMessage(ChainError):
    code = 8


class InvalidMessage(ChainError):
    code = 9


class UnknownQuery(ChainError):
    code = 10


class InvalidQuery(ChainError):
    code = 11


class InvalidGenesis(ChainError):
    code = 12
