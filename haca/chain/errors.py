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


class Unauthorized(ChainError):
    code = 13


class NotFound(ChainError):
    code = 14


class AlreadySettled(ChainError):
    code = 15


class AuthorizationExpired(ChainError):
    code = 16


class FeeAboveLimit(ChainError):
    """A fee above the authorisation's max fee, or past an allowance's cap."""

    code = 17


class InsufficientEscrow(ChainError):
    code = 18


class InvalidEvidence(ChainError):
    code = 19


class InvalidPayment(ChainError):
    """A payment authorisation that is malformed, mis-signed or for another request, node or chain."""

    code = 20
