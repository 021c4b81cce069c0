"""The client's error hierarchy; the CLI prints these as one line (or {"error": ...} with --json)."""

from __future__ import annotations


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

    def __init__(self, message: str, abci_code: int = 0, log: str = "") -> None:
        super().__init__(message)
        self.abci_code = abci_code
        self.log = log


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
