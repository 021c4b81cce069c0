"""CometBFT JSON-RPC over HTTP (httpx): the only way client, node and explorer reach the chain."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx

from haca.client.errors import QueryFailed, RpcError


class CometRpc:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def call(self, method: str, **params: Any) -> Any:
        try:
            resp = self._http.post("/", json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        except httpx.HTTPError as exc:
            raise RpcError(f"{self.url}: {method}: {exc}") from exc
        try:
            doc = resp.json()
        except json.JSONDecodeError as exc:
            raise RpcError(f"{self.url}: {method}: HTTP {resp.status_code}, not JSON") from exc
        if "error" in doc:
            err = doc["error"]
            raise RpcError(f"{method}: {err.get('message', '')} {err.get('data', '')}".strip())
        return doc["result"]

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("status")
        return result

    def height(self) -> int:
        return int(self.status()["sync_info"]["latest_block_height"])

    def broadcast_tx_sync(self, raw: bytes) -> dict[str, Any]:
        result: dict[str, Any] = self.call("broadcast_tx_sync", tx=base64.b64encode(raw).decode())
        return result

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
