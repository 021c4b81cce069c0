"""The node's error hierarchy, mapped once to HTTP statuses in api.py."""

from __future__ import annotations

from typing import Any


class NodeError(Exception):
    status = 400
    code = "bad_request"
    param: str | None = None  # the request field at fault, when one is

    def with_param(self, param: str | None) -> NodeError:
        self.param = param
        return self


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


class OutputNotFound(NodeError):
    status = 404
    code = "output_not_found"


class Unauthenticated(NodeError):
    status = 401
    code = "unauthenticated"


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


class ContextLengthExceeded(NodeError):
    """An LLM request whose prompt and max_tokens do not fit the model's context."""

    status = 400
    code = "context_length_exceeded"


class Overloaded(NodeError):
    """Work the node could not finish (and settle) in time now, e.g. a zkml proof behind too long
    a proving backlog: retry after `retry_after` seconds (the Retry-After header)."""

    status = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyRequests(NodeError):
    """Every slot is busy and the wait queue is full."""

    status = 429
    code = "rate_limit_exceeded"


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "payment_required"}
ERROR_TYPES |= {404: "not_found_error", 408: "timeout", 409: "conflict_error"}
ERROR_TYPES |= {413: "invalid_request_error", 422: "invalid_request_error"}
ERROR_TYPES |= {429: "rate_limit_error", 502: "api_error", 503: "service_unavailable"}


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """The error object every node answer carries, in the OpenAI API's shape (code, message,
    type, param), so OpenAI clients and ours read the same thing."""
    return {"error": {"code": code, "message": message, "type": ERROR_TYPES.get(status, "api_error"), "param": param}}
