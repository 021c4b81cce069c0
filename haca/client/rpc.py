"""CometBFT JSON-RPC over HTTP (httpx): the only way client, node and explorer reach the chain.

One `CometRpc` holds every configured endpoint and fails over between them. A transport failure
(connection refused, timeout, an HTTP answer that is not JSON-RPC) moves the call to the next
endpoint; the one that answered is used first from then on (sticky), and an endpoint that failed is
skipped for `retry_after` seconds. With `slow_after`, an endpoint that answered but took longer than
that is tried after the others from then on (an overloaded node does not hold every call while
another answers at once); the node reads the chain so, with short timeouts. An answer — a JSON-RPC
error, an ABCI query with a nonzero code — is final: it is raised as is and never retried
elsewhere. When no endpoint answers, the call raises `ChainUnavailable` naming every endpoint tried
or skipped.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from haca.client.errors import ChainUnavailable, QueryFailed, RpcError

CONNECT_TIMEOUT = 2.0  # a dead endpoint on loopback refuses at once; a dropped SYN costs this much
RETRY_AFTER = 3.0  # seconds a failed endpoint is skipped before it is tried again


class _Unreachable(Exception):
    """One endpoint did not answer. `maybe_delivered`: the request may have reached it (a read
    timeout or a broken answer, not a refused connection)."""

    def __init__(self, reason: str, maybe_delivered: bool) -> None:
        super().__init__(reason)
        self.maybe_delivered = maybe_delivered


class CometRpc:
    def __init__(
        self,
        urls: str | Sequence[str],
        timeout: float = 10.0,
        connect_timeout: float = CONNECT_TIMEOUT,
        retry_after: float = RETRY_AFTER,
        slow_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`urls`: one endpoint or several of the same chain, in order of preference. `clock`: the
        seconds that `retry_after` and `slow_after` are measured in (injectable: tests need not sleep)."""
        self.urls = [u.rstrip("/") for u in ([urls] if isinstance(urls, str) else urls)]
        if not self.urls:
            raise RpcError("no RPC URL configured")
        limits = httpx.Timeout(timeout, connect=min(connect_timeout, timeout))
        self._http = [httpx.Client(base_url=url, timeout=limits) for url in self.urls]
        self.retry_after = retry_after
        self.slow_after = slow_after
        self.clock = clock
        self._current = 0  # the endpoint that answered last
        self._down_until = [0.0] * len(self.urls)  # clock time before which an endpoint is skipped
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The endpoint calls go to first (the one that answered last)."""
        return self.urls[self._current]

    def close(self) -> None:
        for http in self._http:
            http.close()

    # --- transport --------------------------------------------------------------------------------

    def _candidates(self) -> tuple[list[int], list[int]]:
        """(endpoints to try, starting at the current one; endpoints skipped as recently down)."""
        now = self.clock()
        with self._lock:
            start, down_until = self._current, self._down_until
            order = [(start + i) % len(self.urls) for i in range(len(self.urls))]
            live = [i for i in order if down_until[i] <= now]
        return live, [i for i in order if i not in live]

    def _mark(self, index: int, ok: bool) -> None:
        with self._lock:
            if ok:
                self._current, self._down_until[index] = index, 0.0
            else:
                self._down_until[index] = self.clock() + self.retry_after
                if self._current == index:
                    self._current = (index + 1) % len(self.urls)

    def rotate(self) -> None:
        """Ask the next endpoint first from now on (the current one answers, but behind the chain)."""
        with self._lock:
            self._current = (self._current + 1) % len(self.urls)

    def _demote(self, index: int) -> None:
        """A slow answer: the next endpoint is tried first from now on (this one stays live)."""
        with self._lock:
            if self._current == index and len(self.urls) > 1:
                self._current = (index + 1) % len(self.urls)

    def _post(self, index: int, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = self._http[index].post("/", json=payload)
        except httpx.HTTPError as exc:
            refused = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
            raise _Unreachable(str(exc) or type(exc).__name__, maybe_delivered=not refused) from exc
        try:
            doc = resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Unreachable(f"HTTP {resp.status_code}, not JSON", maybe_delivered=True) from None
        if not isinstance(doc, dict) or ("result" not in doc and "error" not in doc):
            raise _Unreachable(f"HTTP {resp.status_code}, not a JSON-RPC answer", maybe_delivered=True)
        return doc

    def _request(self, method: str, params: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The first JSON-RPC answer from any endpoint, and whether an endpoint tried before it
        may have received the request too."""
        payload = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        live, skipped = self._candidates()
        failures, maybe_delivered = [], False
        for index in live:
            started = self.clock()
            try:
                doc = self._post(index, payload)
            except _Unreachable as exc:
                self._mark(index, ok=False)
                failures.append(f"{self.urls[index]}: {exc}")
                maybe_delivered = maybe_delivered or exc.maybe_delivered
                continue
            if self.slow_after is not None and self.clock() - started > self.slow_after:
                self._demote(index)
            elif index != self._current or self._down_until[index]:
                self._mark(index, ok=True)
            return doc, maybe_delivered
        failures += [f"{self.urls[i]}: skipped, failed in the last {self.retry_after:g}s" for i in skipped]
        raise ChainUnavailable(
            f"{method}: no chain RPC endpoint answered ({'; '.join(failures)})",
            tuple(self.urls[i] for i in live + skipped),
        )

    @staticmethod
    def _result(method: str, doc: dict[str, Any]) -> Any:
        if "error" in doc:
            err = doc["error"] if isinstance(doc["error"], dict) else {"message": str(doc["error"])}
            raise RpcError(f"{method}: {err.get('message', '')} {err.get('data', '')}".strip())
        return doc["result"]

    def call(self, method: str, **params: Any) -> Any:
        doc, _ = self._request(method, params)
        return self._result(method, doc)

    # --- methods ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("status")
        return result

    def height(self) -> int:
        return int(self.status()["sync_info"]["latest_block_height"])

    def broadcast_tx_sync(self, raw: bytes) -> dict[str, Any]:
        """CheckTx through the first endpoint that answers. Resending to another endpoint is safe
        (same bytes, same hash: mempool caches and the nonce let it commit at most once). When an
        endpoint that failed may have received the tx, another endpoint's "already in cache" or
        refusal of a tx that is already committed means it was accepted: that is reported as
        accepted, with the tx's hash, rather than as a rejection."""
        doc, maybe_delivered = self._request("broadcast_tx_sync", {"tx": base64.b64encode(raw).decode()})
        if not maybe_delivered:
            result: dict[str, Any] = self._result("broadcast_tx_sync", doc)
            return result
        tx_hash = hashlib.sha256(raw).hexdigest().upper()
        accepted = {"code": 0, "data": "", "log": "", "codespace": "", "hash": tx_hash}
        if "error" in doc and "already exists in cache" in json.dumps(doc["error"]):
            return accepted
        result = self._result("broadcast_tx_sync", doc)
        if int(result.get("code", 0)) != 0 and self._committed(tx_hash):
            return accepted  # refused here because it is already committed (its nonce is used)
        return result

    def _committed(self, tx_hash: str) -> bool:
        try:
            self.tx(tx_hash)
        except RpcError:
            return False
        return True

    def tx(self, tx_hash: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call(
            "tx", hash=base64.b64encode(bytes.fromhex(tx_hash.removeprefix("0x"))).decode()
        )
        return result

    def block(self, height: int) -> dict[str, Any]:
        result: dict[str, Any] = self.call("block", height=str(height))
        return result

    def commit(self, height: int) -> dict[str, Any]:
        result: dict[str, Any] = self.call("commit", height=str(height))
        return result

    def validators(self, height: int) -> list[dict[str, Any]]:
        result = self.call("validators", height=str(height), per_page="100")
        validators: list[dict[str, Any]] = result["validators"]
        return validators

    def abci_query(self, path: str, data: bytes = b"", height: int = 0, prove: bool = False) -> dict[str, Any]:
        """The raw ABCI query response; raise QueryFailed when the app answers a nonzero code."""
        result = self.call("abci_query", path=path, data=data.hex(), height=str(height), prove=prove)
        response: dict[str, Any] = result["response"]
        if int(response.get("code", 0)) != 0:
            raise QueryFailed(f"{path}: {response.get('log', '')}")
        return response


def b64(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""
