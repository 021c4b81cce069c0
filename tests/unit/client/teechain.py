"""A chain for the tee client checks: the real app in-process (DEV CPU evidence and DEV GPU
evidence, as the devnet's enclave brings, under a policy that takes dev-gpu), a node serving two
models, an enclave key, receipts it signs; and `AppChain`, the client's proven reads answered by
that app with its state proofs, each checked against the app hash it committed (the light-client
part is tested elsewhere). Shared by the SDK's tests and the explorer's."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, cast

import pytest

from haca.chain.genesis import AppGenesis, GenesisAccount, TeeGenesis
from haca.chain.modules.inference.keeper import InferenceParams
from haca.client.chain import ProvenValue
from haca.client.errors import ProofInvalid, QueryFailed
from haca.crypto.hashing import sha256
from haca.crypto.keys import PrivateKey
from haca.crypto.state_proof import verify_proof
from haca.enclave.platforms.dev_gpu import dev_gpu_golden
from haca.proofs.tee.binding import gpu_report_nonce, key_binding, measurement_id
from haca.proofs.tee.claims import Claims
from haca.proofs.tee.dev import (
    PLATFORM_CERT_FILE,
    PLATFORM_KEY_FILE,
    issue_dev_platform,
    make_dev_evidence,
    make_dev_root,
)
from haca.proofs.tee.dev_gpu import DEV_GPU_DRIVER_VERSION, DEV_GPU_MEASUREMENTS, make_dev_gpu_report
from haca.proofs.tee.policy import TeePolicy
from haca.types.inference import MsgDeposit, SettlementItem
from haca.types.registry import MsgRegisterModel, MsgRegisterNode
from haca.types.tee import GpuEvidence, MsgAttestEnclave
from tests.unit.chain import apphelpers
from tests.unit.chain.apphelpers import CHAIN_ID, FEES, Node, block_hash_of, block_time

AUTHORITY, NODE, CLIENT, OWNER = (PrivateKey.from_seed(f"platform-{s}") for s in ("authority", "node", "client", "own"))
ENCLAVE = PrivateKey.from_seed("platform-enclave")
FUNDS = 10**12
FEE = 2_000
MEASUREMENT = sha256(b"the dev enclave of the client platform tests")
DEV_MID = measurement_id(Claims("dev", {"measurement": MEASUREMENT}, b"", False, "UpToDate"))
SCHEMA = {"x": {"dtype": "float32", "shape": [1, 4]}}
LLM = MsgRegisterModel("llm", "sha256:" + sha256(b"llm").hex(), SCHEMA, SCHEMA, ("tee", "vanilla"), 1_000)
OTHER = MsgRegisterModel("other", "sha256:" + sha256(b"other").hex(), SCHEMA, SCHEMA, ("tee", "vanilla"), 1_000)
DEV_GPU_SUMMARY = {
    "format": "dev-gpu",
    "chip": "HACA-DEV-GPU",
    "board": "",
    "driver_version": DEV_GPU_DRIVER_VERSION,
    "vbios_version": "",
    "dev": True,
}


class AppChain:
    """ChainClient's reads answered by the in-process app, every proof checked against its app hash."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def _response(self, path: str, data: bytes, prove: bool = True) -> Any:
        resp = self.node.query(path, data, prove=prove)
        if resp.code != 0:
            raise QueryFailed(f"{path}: {resp.log}")
        return resp

    def _proven(self, op: Any) -> bytes:
        return verify_proof(self.node.app.store.app_hash, bytes(op.key), bytes(op.data))

    def query(self, path: str, data: bytes = b"") -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(self._response(path, data, prove=False).value))

    def query_proven(self, path: str, data: bytes = b"") -> ProvenValue:
        resp = self._response(path, data)
        (op,) = resp.proof_ops.ops
        raw = self._proven(op)
        return ProvenValue(json.loads(resp.value), bytes(op.key), raw, resp.height, self.node.app.store.app_hash)

    def query_proven_value(self, path: str, data: bytes = b"") -> tuple[dict[str, Any], int]:
        proven = self.query_proven(path, data)
        if not proven.raw or json.loads(proven.raw) != proven.answer:
            raise ProofInvalid(f"{path}: the answer is not the value the proof shows")
        return proven.answer, proven.height

    def query_proven_keys(self, path: str, data: bytes = b"") -> tuple[dict[str, Any], dict[bytes, bytes], int]:
        resp = self._response(path, data)
        values = {bytes(op.key): self._proven(op) for op in resp.proof_ops.ops}
        return json.loads(resp.value), values, resp.height


def make_dev(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A DEV root and one platform (the dev enclave's hardware key, also its DEV GPU's)."""
    root_dir, platform_dir = tmp_path_factory.mktemp("dev-root"), tmp_path_factory.mktemp("dev-platform")
    root = make_dev_root(root_dir)
    issue_dev_platform(root_dir, platform_dir)
    return {
        "root": root,
        "key": (platform_dir / PLATFORM_KEY_FILE).read_bytes(),
        "chain": (platform_dir / PLATFORM_CERT_FILE).read_bytes(),
    }


def start_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dev: dict[str, bytes]) -> Node:
    """A chain whose DEV policy takes dev-gpu evidence; the node serves llm and other; the DEV
    measurement is approved for every model."""
    monkeypatch.setattr(apphelpers, "GENESIS_TIME", int(time.time()))
    policy = TeePolicy(
        formats=("dev",),
        roots={"dev": dev["root"].decode()},
        gpu_formats=("nvidia", "dev-gpu"),
        gpu_golden=TeePolicy.from_json({"gpu_golden": dev_gpu_golden()}).gpu_golden,
    )
    node = Node(tmp_path / "state.db")
    node.init(
        AppGenesis(
            fees=FEES,
            inference=InferenceParams(settlement_fee=100, settlement_fee_bps=500),
            accounts=tuple(GenesisAccount(k.address, FUNDS) for k in (AUTHORITY, NODE, CLIENT, OWNER)),
            authorities=(AUTHORITY.address,),
            tee=TeeGenesis(policy, (("*", DEV_MID),)),
        )
    )
    node.block()
    ok(node.deliver(OWNER, LLM))
    ok(node.deliver(OWNER, OTHER))
    ok(node.deliver(NODE, MsgRegisterNode("http://node:8000", ("tee", "vanilla"), ("llm", "other"), 0)))
    ok(node.deliver(CLIENT, MsgDeposit(NODE.address, 10**6)))
    return node


def ok(result: Any) -> None:
    assert result.code == 0, result.log


def attest(chain: Node, dev: dict[str, bytes], with_gpu: bool = True) -> MsgAttestEnclave:
    """The dev enclave's registration of ENCLAVE, with one DEV GPU report bound to it (or none)."""
    nonce_height = chain.height
    gpus: tuple[GpuEvidence, ...] = ()
    if with_gpu:
        nonce = gpu_report_nonce(CHAIN_ID, NODE.address, ENCLAVE.address, block_hash_of(nonce_height))
        gpus = (make_dev_gpu_report(dev["key"], dev["chain"], nonce, DEV_GPU_MEASUREMENTS, DEV_GPU_DRIVER_VERSION),)
    # the enclave's CPU evidence binds the GPU reports it sends
    report = key_binding(CHAIN_ID, NODE.address, ENCLAVE.address, block_hash_of(nonce_height), gpus)
    evidence = make_dev_evidence(dev["key"], dev["chain"], MEASUREMENT, report, block_time(chain.height + 1))
    return MsgAttestEnclave(ENCLAVE.address, "dev", evidence, b"", nonce_height, gpus)


def tee_item(chain: Node, model: MsgRegisterModel, n: int) -> SettlementItem:
    return apphelpers.tee_item(NODE, CLIENT, ENCLAVE, model.model_id, FEE, chain.height, f"platform-request-{n}")
