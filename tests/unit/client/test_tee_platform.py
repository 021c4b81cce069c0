"""What a client sees of where a tee receipt was computed, and what it checks of it: `haca verify`
(the SDK's verify_tee_receipt) shows the platform (the attestation format) and the GPU summary the
chain recorded, re-verifies the GPU reports stored with the attestation to that summary, and fails,
saying why, a receipt for a model the enclave's measurement is not approved for, or for a model the
policy's gpu_required names from an enclave attested without a GPU report.

The chain is the real app in-process (tests/unit/client/teechain.py); the client's proven reads are
answered by it with its state proofs, each checked against the app hash it committed."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from rich.console import Console

from haca.cli import inference as cli_inference
from haca.client.chain import ChainClient
from haca.client.tee import ReceiptVerification, describe_platform, verify_tee_receipt
from haca.proofs.tee.dev import DEV_LABEL
from haca.proofs.tee.dev_gpu import DEV_GPU_DRIVER_VERSION
from haca.types.inference import MsgSettle
from haca.types.receipt import SignedReceipt
from haca.types.tee import MsgApproveMeasurement, MsgRevokeMeasurement, MsgSetTeePolicy
from tests.unit.chain.apphelpers import Node
from tests.unit.client.teechain import (
    AUTHORITY,
    DEV_GPU_SUMMARY,
    DEV_MID,
    ENCLAVE,
    LLM,
    NODE,
    OTHER,
    AppChain,
    attest,
    make_dev,
    ok,
    start_chain,
    tee_item,
)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return make_dev(tmp_path_factory)


@pytest.fixture
def chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dev: dict[str, bytes]) -> Iterator[Node]:
    node = start_chain(tmp_path, monkeypatch, dev)
    yield node
    node.close()


def verify(chain: Node, signed: SignedReceipt) -> ReceiptVerification:
    return verify_tee_receipt(cast(ChainClient, AppChain(chain)), signed)


def rendered(result: ReceiptVerification, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`haca verify`'s human output for `result`, line by line."""
    out = io.StringIO()
    monkeypatch.setattr(cli_inference, "console", Console(file=out, width=200, color_system=None, soft_wrap=True))
    cli_inference.print_verification(result)
    return out.getvalue().splitlines()


def test_a_verified_receipt_shows_the_platform_and_the_gpu_summary_the_chain_recorded(chain, dev, monkeypatch):
    ok(chain.deliver(NODE, attest(chain, dev)))
    item = tee_item(chain, LLM, 1)
    ok(chain.deliver(NODE, MsgSettle((item,))))
    result = verify(chain, item.receipt)
    assert result.verified, result.reason
    assert (result.platform, result.attestation_format, result.model) == ("dev", "dev", "llm")
    assert result.gpus == [DEV_GPU_SUMMARY]
    assert result.dev and result.chain_status == "verified" and result.enclave_key == ENCLAVE.address
    doc = result.to_json()
    assert doc["platform"] == "dev" and doc["gpus"] == [DEV_GPU_SUMMARY] and doc["warning"] == DEV_LABEL
    assert describe_platform(result.platform, result.gpus) == (
        f"dev [DEV platform: {DEV_LABEL}], GPU HACA-DEV-GPU, driver {DEV_GPU_DRIVER_VERSION} [DEV GPU: {DEV_LABEL}]"
    )
    lines = rendered(result, monkeypatch)
    assert lines[0] == f"receipt {item.receipt.id}: verified (DEV platform: {DEV_LABEL})"
    assert lines[2] == "  computed and signed inside the enclave for model llm, platform dev"
    assert lines[3] == f"    !! platform dev: {DEV_LABEL} !!"
    assert lines[4] == f"  GPU 0 (dev-gpu): HACA-DEV-GPU, driver {DEV_GPU_DRIVER_VERSION} [DEV GPU: {DEV_LABEL}]"
    assert not any(line.startswith("  reason:") for line in lines)


def test_a_receipt_for_a_model_the_measurement_is_not_approved_for_fails_with_its_reason(chain, dev, monkeypatch):
    ok(chain.deliver(NODE, attest(chain, dev)))
    ok(chain.deliver(AUTHORITY, MsgApproveMeasurement(DEV_MID, "llm")))
    ok(chain.deliver(AUTHORITY, MsgRevokeMeasurement(DEV_MID, "*")))  # now approved for llm only
    assert verify(chain, tee_item(chain, LLM, 2).receipt).verified
    result = verify(chain, tee_item(chain, OTHER, 3).receipt)
    assert not result.verified and result.model == "other"
    assert result.reason == (
        f"measurement {DEV_MID} of enclave key {ENCLAVE.address} is not approved for model 'other' nor for every"
        ' model ("*") on chain: revoked, or never approved'
    )
    assert result.platform == "dev" and result.gpus == [DEV_GPU_SUMMARY]  # what was attested is still shown
    lines = rendered(result, monkeypatch)
    assert lines[0] == f"receipt {result.receipt_id}: NOT verified (DEV platform: {DEV_LABEL})"
    assert lines[2] == "  signed by the enclave key for model other, platform dev"
    assert lines[-1] == f"  reason: {result.reason}"


def test_a_gpu_required_model_from_an_enclave_without_gpu_evidence_fails_with_its_reason(chain, dev, monkeypatch):
    ok(chain.deliver(AUTHORITY, MsgSetTeePolicy({"gpu_required": ["llm"]})))
    ok(chain.deliver(NODE, attest(chain, dev, with_gpu=False)))
    result = verify(chain, tee_item(chain, LLM, 4).receipt)
    assert not result.verified and result.gpus == [] and result.platform == "dev"
    assert result.reason == (
        f"model 'llm' requires GPU evidence (TEE policy gpu_required) and enclave key {ENCLAVE.address}"
        " was attested without a GPU report"
    )
    assert "  GPUs: none attested" in rendered(result, monkeypatch)
    assert verify(chain, tee_item(chain, OTHER, 5).receipt).verified  # other is not gpu_required


def test_a_gpu_required_model_from_an_enclave_with_gpu_evidence_verifies(chain, dev):
    ok(chain.deliver(AUTHORITY, MsgSetTeePolicy({"gpu_required": ["*"]})))
    ok(chain.deliver(NODE, attest(chain, dev)))
    result = verify(chain, tee_item(chain, LLM, 6).receipt)
    assert result.verified, result.reason
    assert result.gpus == [DEV_GPU_SUMMARY]


def test_a_gpu_report_that_no_longer_re_verifies_under_the_proven_policy_fails_with_its_reason(chain, dev):
    ok(chain.deliver(NODE, attest(chain, dev)))
    ok(chain.deliver(AUTHORITY, MsgSetTeePolicy({"gpu_formats": ["nvidia"]})))
    result = verify(chain, tee_item(chain, LLM, 7).receipt)
    assert not result.verified
    assert result.reason.startswith(f"a GPU report of enclave key {ENCLAVE.address} does not re-verify: format:")
    assert "DEV GPU evidence is not allowed on this chain" in result.reason
