"""A fake CometBFT RPC over a loopback HTTP server, for ChainClient's proven reads: a chain of
states (each a real Merkle-Patricia trie) and headers signed by four ed25519 validators over the
bytes CometBFT signs, so that every signature and state proof checks. What it answers is up to the
test: honest (the latest state, the latest commit), pinned to an old height, or lying in the
answer while the proof shows the truth."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from trie import HexaryTrie

from haca.client import light
from haca.crypto.hashing import sha256
from haca.crypto.state_proof import encode_proof

CHAIN_ID = "haca-fake"
GENESIS_TIME = int(time.time()) - 3600  # headers an hour old: well inside the light client's trusting period
VALIDATOR_KEYS = [Ed25519PrivateKey.from_private_bytes(sha256(f"fake validator {i}".encode())) for i in range(4)]


def _validators() -> list[dict[str, Any]]:
    out = []
    for key in VALIDATOR_KEYS:
        pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        out.append(
            {
                "address": sha256(pub)[:20].hex().upper(),
                "pub_key": {"type": "tendermint/PubKeyEd25519", "value": base64.b64encode(pub).decode()},
                "voting_power": "10",
            }
        )
    return out


VALIDATORS = _validators()  # the trusted set (RPC `validators` shape), as a client config names it


def signed_header(height: int, app_hash: bytes, last_hash: bytes | None = None) -> dict[str, Any]:
    """A `commit` answer for `height` whose header carries `app_hash`, signed by every validator;
    `last_hash`: the previous header's hash (the chain of hashes a light client walks back down)."""
    trusted = light.validators_from_rpc(VALIDATORS)
    tag = lambda text: sha256(f"{height} {text}".encode()).hex().upper()  # noqa: E731
    header = {
        "version": {"block": "11", "app": "1"},
        "chain_id": CHAIN_ID,
        "height": str(height),
        "time": datetime.fromtimestamp(GENESIS_TIME + height, UTC).strftime("%Y-%m-%dT%H:%M:%S") + ".5Z",
        "last_block_id": {
            "hash": (last_hash.hex().upper() if last_hash else tag("last")),
            "parts": {"total": 1, "hash": tag("parts")},
        },
        "last_commit_hash": tag("commit"),
        "data_hash": tag("data"),
        "validators_hash": light.validator_set_hash(trusted).hex().upper(),
        "next_validators_hash": light.validator_set_hash(trusted).hex().upper(),
        "consensus_hash": tag("consensus"),
        "app_hash": app_hash.hex().upper(),
        "last_results_hash": tag("results"),
        "evidence_hash": "",
        "proposer_address": VALIDATORS[0]["address"],
    }
    block_id = {"hash": light.hash_header(header).hex().upper(), "parts": {"total": 1, "hash": tag("block parts")}}
    signatures = []
    for key, validator in zip(VALIDATOR_KEYS, VALIDATORS, strict=True):
        timestamp = header["time"]
        message = light.precommit_sign_bytes(CHAIN_ID, height, 0, block_id, timestamp)
        signatures.append(
            {
                "block_id_flag": 2,
                "validator_address": validator["address"],
                "timestamp": timestamp,
                "signature": base64.b64encode(key.sign(message)).decode(),
            }
        )
    commit = {"height": str(height), "round": 0, "block_id": block_id, "signatures": signatures}
    return {"header": header, "commit": commit}


Answer = Callable[[bytes], dict[str, Any]]  # the state value -> the query's JSON answer


@dataclass
class FakeChain:
    """States at heights 1..`tip` (`values(height)` gives each one's key-value pairs); header h+1
    carries state h's trie root. Queries: `routes` maps a path to the state key it reads and how
    the answer is made from the value."""

    values: Callable[[int], dict[bytes, bytes]]
    routes: dict[str, tuple[bytes, Answer]]
    tip: int = 20
    answer_height: int | None = None  # None: the tip (honest); else every proven query is pinned here
    latest_commit: int | None = None  # None: tip + 1 (honest); else the commit served as the latest
    lie: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None  # rewrites answers, not proofs
    queries: list[str] = field(default_factory=list)
    _tries: dict[int, HexaryTrie] = field(default_factory=dict)
    _headers: dict[int, dict[str, Any]] = field(default_factory=dict)

    def trie(self, height: int) -> HexaryTrie:
        if height not in self._tries:
            trie = HexaryTrie({})
            for key, value in self.values(height).items():
                trie[key] = value
            self._tries[height] = trie
        return self._tries[height]

    def commit(self, height: int) -> dict[str, Any]:
        if height not in self._headers:
            last = light.hash_header(self.commit(height - 1)["header"]) if height > 1 else None
            app_hash = self.trie(height - 1).root_hash if height > 1 else sha256(b"genesis state")
            self._headers[height] = signed_header(height, app_hash, last)
        return self._headers[height]

    def handle(self, method: str, params: dict[str, Any]) -> Any:
        if method == "commit":
            latest = self.latest_commit or self.tip + 1
            height = int(params.get("height") or latest)
            if height > latest or height < 1:
                raise LookupError(f"height {height} must be less than or equal to the current blockchain height")
            return {"signed_header": self.commit(height), "canonical": True}
        if method == "validators":
            return {"validators": VALIDATORS, "count": str(len(VALIDATORS)), "total": str(len(VALIDATORS))}
        if method == "status":
            return {"sync_info": {"latest_block_height": str(self.tip)}}
        if method == "abci_query":
            return {"response": self.query(params["path"], bool(params.get("prove")))}
        raise LookupError(f"method {method} not found")

    def query(self, path: str, prove: bool) -> dict[str, Any]:
        self.queries.append(path)
        height = self.answer_height if self.answer_height is not None else self.tip
        key, answer_of = self.routes[path]
        trie = self.trie(height)
        value = trie.get(key)
        answer = answer_of(value)
        if self.lie is not None:
            answer = self.lie(path, answer)
        response: dict[str, Any] = {
            "code": 0,
            "value": base64.b64encode(json.dumps(answer).encode()).decode(),
            "height": str(height),
        }
        if prove:
            proof = encode_proof(trie.get_proof(key))
            response["key"] = base64.b64encode(key).decode()
            op = {"type": "haca:mpt", "key": response["key"], "data": base64.b64encode(proof).decode()}
            response["proofOps"] = {"ops": [op]}
        return response


class RpcServer:
    """`chain` served as CometBFT JSON-RPC on a loopback port; `close()` when done."""

    def __init__(self, chain: FakeChain) -> None:
        self.chain = chain
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                doc: dict[str, Any] = {"jsonrpc": "2.0", "id": 1}
                try:
                    doc["result"] = server.chain.handle(request["method"], request["params"])
                except LookupError as exc:  # as CometBFT answers a height it has not reached
                    doc["error"] = {"code": -32603, "message": "Internal error", "data": str(exc)}
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()
