"""Composite TEE evidence on chain: a DEV CPU attestation plus GPU reports (DEV GPU evidence, and
the real NVIDIA H100 fixture) bound to the same enclave key, held to the policy's GPU formats and
golden values, and the policy's gpu_required rule at settlement. Each test asserts one outcome."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from haca.chain import errors
from haca.chain.genesis import AppGenesis, GenesisAccount, TeeGenesis
from haca.chain.modules.inference.keeper import InferenceParams
from haca.crypto.hashing import sha256
from haca.crypto.keys import PrivateKey
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
from haca.proofs.tee.gpu import reverify_gpus
from haca.proofs.tee.nvidia import parse_report_text
from haca.proofs.tee.policy import TeePolicy
from haca.types.inference import MsgDeposit, MsgSettle, SettlementItem
from haca.types.registry import MsgRegisterModel, MsgRegisterNode
from haca.types.tee import GpuEvidence, MsgAttestEnclave, MsgSetTeePolicy
from tests.unit.chain import apphelpers
from tests.unit.chain.apphelpers import CHAIN_ID, FEES, Node, block_hash_of, block_time

AUTHORITY, NODE, NODE_B, CLIENT, OWNER = (
    PrivateKey.from_seed(s) for s in ("gpu-authority", "gpu-node", "gpu-node-b", "gpu-client", "gpu-owner")
)
ENCLAVE = PrivateKey.from_seed("gpu-enclave")
FUNDS = 10**12
PARAMS = InferenceParams(withdraw_delay=5, revoke_delay=4, settlement_fee=100, settlement_fee_bps=500)
HEARTBEAT, NONCE_WINDOW = 6, 5
PRICE, FEE = 1_000, 2_000
MEASUREMENT = sha256(b"the dev enclave of the GPU tests")  # approved in genesis
DEV_MID = measurement_id(Claims("dev", {"measurement": MEASUREMENT}, b"", False, "UpToDate"))
SCHEMA = {"x": {"dtype": "float32", "shape": [1, 4]}}
LLM = MsgRegisterModel("llm", "sha256:" + sha256(b"llm").hex(), SCHEMA, SCHEMA, ("tee", "vanilla"), PRICE)
NODE_MSG = MsgRegisterNode("http://node:8000", ("tee", "vanilla"), ("llm",), 0)

NVIDIA = Path(__file__).resolve().parents[2] / "fixtures" / "tee" / "nvidia"


@pytest.fixture(scope="module")
def dev(tmp_path_factory) -> dict[str, bytes]:
    """A DEV root and one platform (the dev enclave's hardware key, also its DEV GPU's) issued by it."""
    root_dir, platform_dir = tmp_path_factory.mktemp("dev-root"), tmp_path_factory.mktemp("dev-platform")
    root = make_dev_root(root_dir)
    issue_dev_platform(root_dir, platform_dir)
    return {
        "root": root,
        "key": (platform_dir / PLATFORM_KEY_FILE).read_bytes(),
        "chain": (platform_dir / PLATFORM_CERT_FILE).read_bytes(),
    }


def genesis(dev: dict[str, bytes], **policy: object) -> AppGenesis:
    tee_policy = TeePolicy(
        formats=("dev",),
        roots={"dev": dev["root"].decode()},
        heartbeat_interval=HEARTBEAT,
        nonce_window=NONCE_WINDOW,
        gpu_formats=("nvidia", "dev-gpu"),
        gpu_golden=TeePolicy.from_json({"gpu_golden": dev_gpu_golden()}).gpu_golden,
        **policy,  # type: ignore[arg-type]
    )
    return AppGenesis(
        fees=FEES,
        inference=PARAMS,
        accounts=tuple(GenesisAccount(k.address, FUNDS) for k in (AUTHORITY, NODE, NODE_B, CLIENT, OWNER)),
        authorities=(AUTHORITY.address,),
        tee=TeeGenesis(tee_policy, (("*", DEV_MID),)),
    )


def start(tmp_path: Path, monkeypatch, dev: dict[str, bytes], **policy: object) -> Node:
    monkeypatch.setattr(apphelpers, "GENESIS_TIME", int(time.time()))
    chain = Node(tmp_path / "state.db")
    chain.init(genesis(dev, **policy))
    chain.block()
    ok(chain.deliver(OWNER, LLM))
    ok(chain.deliver(NODE, NODE_MSG))
    ok(chain.deliver(CLIENT, MsgDeposit(NODE.address, 10**6)))
    return chain


@pytest.fixture
def chain(tmp_path, monkeypatch, dev):
    node = start(tmp_path, monkeypatch, dev)
    yield node
    node.close()


def ok(result) -> None:
    assert result.code == 0, result.log


def rejected(chain: Node, key: PrivateKey, msg, code: int, log_part: str) -> None:
    apphelpers.assert_rejected_without_state_change(chain, key, chain.tx(key, msg), code, log_part, 5 * FUNDS)


def tee_item(chain: Node, n: int) -> SettlementItem:
    return apphelpers.tee_item(NODE, CLIENT, ENCLAVE, LLM.model_id, FEE, chain.height, f"gpu-request-{n}")


def attest(
    chain: Node,
    dev: dict[str, bytes],
    gpus: tuple[GpuEvidence, ...] | None = None,
    *,
    gpu_key: str | None = None,
    gpu_nonce_height: int | None = None,
    measurements: dict[int, bytes] | None = None,
    bound: tuple[GpuEvidence, ...] | None = None,
) -> MsgAttestEnclave:
    """A dev enclave's registration of ENCLAVE with one DEV GPU report (by default bound to the
    same key and nonce as the CPU evidence)."""
    nonce_height = chain.height
    if gpus is None:
        nonce = gpu_report_nonce(
            CHAIN_ID,
            NODE.address,
            gpu_key or ENCLAVE.address,
            block_hash_of(nonce_height if gpu_nonce_height is None else gpu_nonce_height),
        )
        gpus = (
            make_dev_gpu_report(
                dev["key"], dev["chain"], nonce, measurements or DEV_GPU_MEASUREMENTS, DEV_GPU_DRIVER_VERSION
            ),
        )
    # the enclave binds the GPU reports it sends into its CPU evidence (unless `bound` says otherwise)
    report = key_binding(
        CHAIN_ID, NODE.address, ENCLAVE.address, block_hash_of(nonce_height), gpus if bound is None else bound
    )
    evidence = make_dev_evidence(dev["key"], dev["chain"], MEASUREMENT, report, block_time(chain.height + 1))
    return MsgAttestEnclave(ENCLAVE.address, "dev", evidence, b"", nonce_height, gpus)


def test_a_dev_cpu_attestation_with_a_bound_dev_gpu_report_registers_the_key_with_its_gpu_summary(chain, dev):
    ok(chain.deliver(NODE, attest(chain, dev)))
    gpus = chain.answer("/tee/enclave", ENCLAVE.address.encode())["enclave"]["gpus"]
    assert gpus == [
        {
            "format": "dev-gpu",
            "chip": "HACA-DEV-GPU",
            "board": "",
            "driver_version": DEV_GPU_DRIVER_VERSION,
            "vbios_version": "",
            "dev": True,
        }
    ]


def test_a_gpu_report_bound_to_another_key_is_refused_at_binding(chain, dev):
    msg = attest(chain, dev, gpu_key=NODE_B.address)
    rejected(chain, NODE, msg, errors.InvalidAttestation.code, "GPU 0 (dev-gpu) evidence refused: binding")


def test_a_gpu_report_bound_to_another_nonce_is_refused_at_binding(chain, dev):
    msg = attest(chain, dev, gpu_nonce_height=chain.height - 1)
    rejected(chain, NODE, msg, errors.InvalidAttestation.code, "GPU 0 (dev-gpu) evidence refused: binding")


def test_a_gpu_measurement_off_the_golden_values_is_refused(chain, dev):
    msg = attest(chain, dev, measurements={**DEV_GPU_MEASUREMENTS, 2: bytes(48)})
    rejected(chain, NODE, msg, errors.InvalidAttestation.code, "refused: golden: measurement 2")


def test_dev_gpu_evidence_is_refused_where_the_policy_does_not_list_it(chain, dev):
    ok(chain.deliver(AUTHORITY, MsgSetTeePolicy({"gpu_formats": ["nvidia"]})))
    rejected(chain, NODE, attest(chain, dev), errors.InvalidAttestation.code, "DEV GPU evidence is not allowed")


def test_a_receipt_for_a_gpu_required_model_from_an_enclave_without_gpu_evidence_does_not_settle(chain, dev):
    ok(chain.deliver(AUTHORITY, MsgSetTeePolicy({"gpu_required": ["llm"]})))
    ok(chain.deliver(NODE, attest(chain, dev, gpus=())))
    item = tee_item(chain, 1)
    rejected(chain, NODE, MsgSettle((item,)), errors.MeasurementNotApproved.code, "requires GPU evidence")


def test_a_receipt_for_a_gpu_required_model_from_an_enclave_with_gpu_evidence_settles_verified(chain, dev):
    ok(chain.deliver(AUTHORITY, MsgSetTeePolicy({"gpu_required": ["*"]})))
    ok(chain.deliver(NODE, attest(chain, dev)))
    item = tee_item(chain, 2)
    ok(chain.deliver(NODE, MsgSettle((item,))))
    assert chain.answer("/inference/receipt", item.receipt.id.encode())["status"] == "verified"


def test_the_real_nvidia_report_through_the_chain_is_refused_only_at_binding(chain, dev):
    """The H100 fixture passes format, signature and chain (to the pinned NVIDIA root) at block
    time; its nonce is NVIDIA's sample nonce, not this key's binding."""
    report = parse_report_text((NVIDIA / "hopperAttestationReport.txt").read_bytes())
    gpu = GpuEvidence("nvidia", report, (NVIDIA / "hopperCertChain.txt").read_bytes())
    msg = attest(chain, dev, gpus=(gpu,))
    rejected(chain, NODE, msg, errors.InvalidAttestation.code, "GPU 0 (nvidia) evidence refused: binding")


def test_a_client_re_verifies_the_stored_gpu_reports_to_the_records_gpu_summary(chain, dev):
    ok(chain.deliver(NODE, attest(chain, dev)))
    answer = chain.answer("/tee/enclave", f"{ENCLAVE.address}@{chain.height}/llm".encode())
    policy = TeePolicy.from_json(chain.answer("/tee/policy"))
    summaries = reverify_gpus(answer["attestation"], policy, CHAIN_ID, NODE.address, ENCLAVE.address)
    assert summaries == answer["enclave"]["gpus"]


def test_a_gpu_report_the_cpu_evidence_does_not_bind_is_refused_at_the_cpu_binding(chain, dev):
    """A host stapling a (valid, correctly nonced) GPU report to an enclave's GPU-less evidence: the
    CPU report data commits to the GPU reports the enclave itself sent, so it does not verify."""
    msg = attest(chain, dev, bound=())
    rejected(chain, NODE, msg, errors.InvalidAttestation.code, "does not bind key")
    assert chain.answer("/tee/node_enclaves", NODE.address.encode())["enclaves"] == []


def test_a_heartbeat_cannot_change_the_gpus_a_key_registered_with(chain, dev):
    ok(chain.deliver(AUTHORITY, MsgSetTeePolicy({"gpu_required": ["*"]})))
    ok(chain.deliver(NODE, attest(chain, dev, gpus=())))  # registered without a GPU
    rejected(chain, NODE, attest(chain, dev), errors.InvalidAttestation.code, "a key's GPUs are fixed at registration")
    item = tee_item(chain, 3)  # so its receipts never become gpu-verified after the fact
    rejected(chain, NODE, MsgSettle((item,)), errors.MeasurementNotApproved.code, "requires GPU evidence")
