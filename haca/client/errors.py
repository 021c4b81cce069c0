"""The client's error hierarchy; the CLI prints these as one line (or {"error": ...} with --json)."""

from __future__ import annotations

import json


class HacaError(Exception):
    code = "error"


class ConfigError(HacaError):
    code = "config"


class KeyNotFound(HacaError):
    code = "key_not_found"


class RpcError(HacaError):
    code = "rpc"


class ChainUnavailable(RpcError):
    """No configured RPC endpoint answered (connection refused, timeout, HTTP error page): an
    outage, not an answer. `endpoints` are the URLs tried or skipped as recently down."""

    code = "chain_unavailable"

    def __init__(self, message: str, endpoints: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.endpoints = endpoints


class TxRejected(HacaError):
    """The chain refused a tx (CheckTx or FinalizeBlock code != 0)."""

    code = "tx_rejected"

    def __init__(self, message: str, abci_code: int = 0, log: str = "", data: bytes = b"") -> None:
        super().__init__(message)
        self.abci_code = abci_code
        self.log = log
        self.data = data  # the app's structured detail of the refusal (canonical JSON), if any

    @property
    def refused_receipt(self) -> str | None:
        """The receipt id of the item a multi-item settlement was refused for, as the chain reports
        it in the result data (None when the refusal names no item)."""
        try:
            detail = json.loads(self.data) if self.data else {}
            receipt_id = detail["refused_item"]["receipt_id"]
        except (ValueError, KeyError, TypeError):
            return None
        return receipt_id if isinstance(receipt_id, str) else None


class QueryFailed(HacaError):
    code = "query_failed"


class ProofInvalid(HacaError):
    code = "proof_invalid"


class NotFound(HacaError):
    code = "not_found"


class StaleProof(ProofInvalid):
    """A proven answer for a state older than the latest header the client has verified, less the
    window it allows (`ChainClient.max_proof_lag`): its signatures and proof may all check, yet the
    value may be one that has since changed (a balance since spent). `height` is the answer's,
    `latest` the highest height verified."""

    code = "proof_stale"

    def __init__(self, message: str, height: int = 0, latest: int = 0) -> None:
        super().__init__(message)
        self.height = height
        self.latest = latest


class PaymentRequiredError(HacaError):
    """The node wants more than the caller allows, or could not be paid."""

    code = "payment_required"


class NodeError(HacaError):
    """The node refused the request (4xx/5xx other than 402). `status` is the HTTP status,
    `node_code` the code the node's error body names (haca.node.errors), "" if it names none."""

    code = "node_error"

    def __init__(self, message: str, status: int = 0, node_code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.node_code = node_code


class NodeNotFound(NotFound, NodeError):
    """The node has no such receipt or model (404)."""


class NodeRejected(NodeError):
    """The node refused the request itself (malformed, too large, a mode it does not serve, a
    replayed request id): sending it again will not help."""


class AnswerLost(NodeError):
    """The paid request reached the node but its answer did not come back: if the node served it,
    its output is kept for this client (`Client.fetch_output(request_id)`) until the payment expires."""

    def __init__(self, message: str, request_id: str) -> None:
        super().__init__(message)
        self.request_id = request_id


class NodeUnavailable(NodeError):
    """The node cannot serve now (overloaded, rate-limited, its enclave or chain down, timed out):
    worth retrying later."""


_NODE_CODES: dict[str, type[NodeError]] = {
    "receipt_not_found": NodeNotFound,
    "output_not_found": NodeNotFound,
    "model_not_found": NodeNotFound,
    "overloaded": NodeUnavailable,
    "rate_limit_exceeded": NodeUnavailable,
    "enclave_unavailable": NodeUnavailable,
    "chain_unavailable": NodeUnavailable,
    "chain_error": NodeUnavailable,
    "request_timeout": NodeUnavailable,
}


def node_error(status: int, body: object, text: str = "") -> HacaError:
    """The typed exception for a node's error answer: its HTTP status and JSON body (the OpenAI
    shape {"error": {"code", "message"}}, or x402's {"error": "..."}), `text` when it is not JSON."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message, node_code = str(error.get("message", "")), str(error.get("code") or "")
    else:
        message, node_code = (error, "") if isinstance(error, str) else (text[:200], "")
    if status == 402:
        return PaymentRequiredError(f"node refused the payment: {message}")
    kind = _NODE_CODES.get(node_code)
    if kind is None:
        kind = NodeNotFound if status == 404 else NodeUnavailable if status in (429, 502, 503, 504) else NodeError
        kind = NodeRejected if kind is NodeError and 400 <= status < 500 else kind
    return kind(f"node answered {status}: {message}", status, node_code)
