"""The node's error hierarchy, mapped once to HTTP statuses in api.py."""

from __future__ import annotations

from typing import Any


class NodeError(Exception):
    status = 400
    code = "bad_request"


class InvalidRequest(NodeError):
    status = 400
    code = "invalid_request"


class InvalidInputError(NodeError):
    status = 422
    code = "invalid_input"


class ModelNotFound(NodeError):
    status = 404
    code = "model_not_found"


class ModeNotSupported(NodeError):
    status = 400
    code = "mode_not_supported"


class ReceiptNotFound(NodeError):
    status = 404
    code = "receipt_not_found"


class PayloadTooLarge(NodeError):
    status = 413
    code = "payload_too_large"


class RequestTimeout(NodeError):
    status = 408
    code = "request_timeout"


class TooManyRows(NodeError):
    """More rows than the model's terms allow in one request: the fee follows the work."""

    status = 413
    code = "too_many_rows"


class RequestConflict(NodeError):
    status = 409
    code = "request_conflict"


class PaymentRequired(NodeError):
    """HTTP 402 with x402 payment requirements."""

    status = 402
    code = "payment_required"

    def __init__(self, message: str, requirements: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.requirements = requirements or {}


class EnclaveUnavailable(NodeError):
    """tee mode cannot be served now: the enclave is unreachable or its attestation has lapsed."""

    status = 503
    code = "enclave_unavailable"
