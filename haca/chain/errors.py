"""The chain's error hierarchy; each class has a stable ABCI code, mapped once in app.py."""

from __future__ import annotations

from haca.types import codes


class ChainError(Exception):
    """A tx or query the chain refuses; `code` is what CheckTx/FinalizeBlock/Query report.
    `refused_item`: which item of a multi-item message (and its receipt) caused it, reported to
    the sender as structured result data, not only in the log text."""

    code = codes.INTERNAL
    codespace = "haca"
    refused_item: tuple[int, str] | None = None

    def naming_item(self, index: int, receipt_id: str) -> ChainError:
        self.refused_item = (index, receipt_id)
        return self


class TxDecodeFailed(ChainError):
    code = codes.TX_DECODE


class WrongChainId(ChainError):
    code = codes.WRONG_CHAIN_ID


class InvalidSignature(ChainError):
    code = codes.INVALID_SIGNATURE


class BadNonce(ChainError):
    code = codes.BAD_NONCE


class InsufficientFee(ChainError):
    code = codes.INSUFFICIENT_FEE


class InsufficientFunds(ChainError):
    code = codes.INSUFFICIENT_FUNDS


class UnknownMessage(ChainError):
    code = codes.UNKNOWN_MESSAGE


class InvalidMessage(ChainError):
    code = codes.INVALID_MESSAGE


class UnknownQuery(ChainError):
    code = codes.UNKNOWN_QUERY


class InvalidQuery(ChainError):
    code = codes.INVALID_QUERY


class InvalidGenesis(ChainError):
    code = codes.INVALID_GENESIS


class Unauthorized(ChainError):
    code = codes.UNAUTHORIZED


class NotFound(ChainError):
    code = codes.NOT_FOUND


class AlreadySettled(ChainError):
    code = codes.ALREADY_SETTLED


class AuthorizationExpired(ChainError):
    code = codes.AUTHORIZATION_EXPIRED


class FeeAboveLimit(ChainError):
    """A fee above the authorisation's max fee, or past an allowance's cap."""

    code = codes.FEE_ABOVE_LIMIT


class InsufficientEscrow(ChainError):
    code = codes.INSUFFICIENT_ESCROW


class InvalidEvidence(ChainError):
    code = codes.INVALID_EVIDENCE


class InvalidPayment(ChainError):
    """A payment authorisation that is malformed, mis-signed or for another request, node or chain."""

    code = codes.INVALID_PAYMENT


class InvalidAttestation(ChainError):
    """Attestation evidence does not verify, does not bind the key, or the TEE policy refuses it."""

    code = codes.INVALID_ATTESTATION


class MeasurementNotApproved(ChainError):
    """The enclave's measurement is not approved (or was revoked) by the chain's TEE policy."""

    code = codes.MEASUREMENT_NOT_APPROVED


class EnclaveNotInGoodStanding(ChainError):
    """No attestation of the enclave key covers the receipt's height (e.g. a missed heartbeat)."""

    code = codes.ENCLAVE_NOT_IN_GOOD_STANDING


class InsufficientStake(ChainError):
    """A node's bond is below the minimum stake for a mode it serves, or an unbond asks for more
    than is bonded."""

    code = codes.INSUFFICIENT_STAKE


class ClaimConflict(ChainError):
    """A claim for a receipt that is already claimed, settled, or not claimable."""

    code = codes.CLAIM_CONFLICT


class ClaimWindowNotCovered(ChainError):
    """A claim on a receipt whose payment does not leave the node the whole claim window to settle
    (it expires, or the allowance is revoked, before the deadline), or on a receipt too old to claim."""

    code = codes.CLAIM_WINDOW_NOT_COVERED
