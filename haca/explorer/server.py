"""`haca explorer`: serves the explorer's page (built at setup into build/explorer) and passes the
page's JSON-RPC calls through to the chain's RPC, read-only methods only.

The server is not trusted: the page checks what it shows itself (headers signed by the trusted
validator set, state proofs against their app hash), so a tampering server or RPC node is caught
in the browser. `/config.json` gives the page the chain id and that trusted set (from the client
config, i.e. genesis).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse

import haca
from haca.client.config import ClientConfig

# What the page may ask the chain: reads only (never broadcast_*, never unsafe_*)
READ_METHODS = frozenset(
    {
        "status",
        "block",
        "blockchain",
        "block_results",
        "commit",
        "validators",
        "abci_query",
        "tx",
        "genesis",
        "unconfirmed_txs",
    }
)
ASSETS = Path(haca.__file__).resolve().parents[1] / "build" / "explorer"
MAX_RPC_BODY = 64 * 1024


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status)


def create_app(
    config: ClientConfig, assets: Path = ASSETS, transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    """The explorer's web app for the chain `config` names; `transport` (tests) replaces the network."""
    if not (assets / "index.html").exists():
        raise FileNotFoundError(f"the explorer is not built at {assets}: run `make setup`")
    http = httpx.AsyncClient(timeout=15, transport=transport)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await http.aclose()

    app = FastAPI(title="HACA explorer", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    files = {p.name: p for p in assets.iterdir() if p.is_file()}

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/config.json")
    async def page_config() -> dict[str, Any]:
        nodes = [{"address": n.get("address", ""), "url": n.get("url", "")} for n in config.extra.get("nodes", [])]
        trust = {"trust_height": config.trust_height, "trust_hash": config.trust_hash}
        return {
            "chain_id": config.chain_id,
            "denom": config.denom,
            "validators": config.validators,
            "nodes": nodes,
            "trusting_period": config.trusting_period,
            **trust,
        }

    @app.post("/rpc")
    async def rpc(request: Request) -> JSONResponse:
        body = await request.body()
        if len(body) > MAX_RPC_BODY:
            return _error(413, "too_large", f"a JSON-RPC call is at most {MAX_RPC_BODY} bytes")
        try:
            call = json.loads(body)
        except ValueError:
            return _error(400, "invalid_json", "the body must be a JSON-RPC call")
        if not isinstance(call, dict) or not isinstance(call.get("method"), str):
            return _error(400, "invalid_call", "a JSON-RPC call needs a method")
        if call["method"] not in READ_METHODS:
            return _error(403, "method_not_allowed", f"the explorer passes read methods only: {sorted(READ_METHODS)}")
        params = call.get("params", {})
        if not isinstance(params, dict | list):
            return _error(400, "invalid_call", "JSON-RPC params are an object or a list")
        # Forward a call rebuilt from what was checked, never the raw body: CometBFT's JSON decoding
        # matches keys case-insensitively, so {"method": "status", "Method": "broadcast_tx_sync"}
        # would otherwise run the second.
        forwarded = {"jsonrpc": "2.0", "id": call.get("id"), "method": call["method"], "params": params}
        last = ""
        for url in config.rpc:  # the first RPC that answers
            try:
                answer = await http.post(url, json=forwarded)
            except httpx.HTTPError as exc:
                last = type(exc).__name__
                continue
            try:
                return JSONResponse(answer.json(), answer.status_code)
            except ValueError:
                last = f"{url} answered HTTP {answer.status_code} without JSON"
        return _error(502, "chain_unavailable", f"no chain RPC endpoint answered ({last})")

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(files["index.html"])

    @app.get("/{name}")
    async def asset(name: str) -> Any:
        path = files.get(name)
        if path is None:
            return _error(404, "not_found", f"no file {name!r}")
        return FileResponse(path)

    return app
