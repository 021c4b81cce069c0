"""The explorer's check of a tee receipt's enclave (explorer/src/tee.js, run here with Node) reaches
the SDK's verdict (haca.client.tee.verify_tee_receipt) from the same proven state: the platform and
GPU summary it shows, and the reason it refuses a receipt for a model the measurement is not
approved for, or for a gpu_required model from an enclave attested without a GPU report. The state
values are the real app's answers with their proofs checked (tests/unit/client/teechain.py)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from haca.client.chain import ChainClient
from haca.client.tee import describe_platform, verify_tee_receipt
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

EXPLORER = Path(__file__).resolve().parents[3] / "explorer"


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return make_dev(tmp_path_factory)


@pytest.fixture
def chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dev: dict[str, bytes]) -> Iterator[Node]:
    node = start_chain(tmp_path, monkeypatch, dev)
    yield node
    node.close()


def case(chain: Node, name: str, signed: SignedReceipt, model: str) -> dict[str, Any]:
    """What the page gets from its proven reads of the receipt's enclave and the TEE policy."""
    app = AppChain(chain)
    receipt = signed.receipt
    _, values, _ = app.query_proven_keys("/tee/enclave", f"{ENCLAVE.address}@{receipt.height_hint}/{model}".encode())
    policy = app.query_proven_value("/tee/policy")[0]
    return {
        "name": name,
        "key": ENCLAVE.address,
        "model": model,
        "values": {k.hex(): v.hex() for k, v in values.items()},
        "policy": policy,
    }


def run_js(cases: list[dict[str, Any]], tmp_path: Path) -> dict[str, dict[str, Any]]:
    path = tmp_path / "tee_cases.json"
    path.write_text(json.dumps(cases))
    done = subprocess.run(
        ["node", str(EXPLORER / "test" / "tee_cases.mjs"), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=EXPLORER,
    )
    assert done.returncode == 0, done.stderr
    return {doc["name"]: doc for doc in map(json.loads, done.stdout.splitlines())}


def sdk(chain: Node, signed: SignedReceipt) -> Any:
    return verify_tee_receipt(cast(ChainClient, AppChain(chain)), signed)


def test_the_page_shows_the_platform_and_gpus_and_refuses_an_unapproved_model_as_the_sdk_does(chain, dev, tmp_path):
    ok(chain.deliver(NODE, attest(chain, dev)))
    ok(chain.deliver(AUTHORITY, MsgApproveMeasurement(DEV_MID, "llm")))
    ok(chain.deliver(AUTHORITY, MsgRevokeMeasurement(DEV_MID, "*")))  # approved for llm only
    approved, unapproved = tee_item(chain, LLM, 1).receipt, tee_item(chain, OTHER, 2).receipt
    seen = run_js([case(chain, "approved", approved, "llm"), case(chain, "unapproved", unapproved, "other")], tmp_path)

    good, expected = seen["approved"], sdk(chain, approved)
    assert good["ok"] is True and good["scope"] == "llm" and expected.verified
    assert good["platform"] == expected.platform == "dev"
    assert good["gpus"] == expected.gpus == [DEV_GPU_SUMMARY] and good["dev"] is True
    assert good["describe"] == describe_platform(expected.platform, expected.gpus)

    bad, refused = seen["unapproved"], sdk(chain, unapproved)
    assert bad["ok"] is False and bad["step"] == "approval" and not refused.verified
    assert bad["reason"] == refused.reason
    assert "is not approved for model 'other'" in bad["reason"]
    assert bad["platform"] == "dev" and bad["gpus"] == [DEV_GPU_SUMMARY]  # what was attested is still shown


def test_the_page_refuses_a_gpu_required_model_from_an_enclave_without_gpu_evidence_as_the_sdk_does(
    chain, dev, tmp_path
):
    ok(chain.deliver(AUTHORITY, MsgSetTeePolicy({"gpu_required": ["llm"]})))
    ok(chain.deliver(NODE, attest(chain, dev, with_gpu=False)))
    needs_gpu, no_rule = tee_item(chain, LLM, 3).receipt, tee_item(chain, OTHER, 4).receipt
    seen = run_js([case(chain, "llm", needs_gpu, "llm"), case(chain, "other", no_rule, "other")], tmp_path)
    refused = sdk(chain, needs_gpu)
    assert seen["llm"]["ok"] is False and seen["llm"]["step"] == "gpu required" and not refused.verified
    assert seen["llm"]["reason"] == refused.reason
    assert "requires GPU evidence (TEE policy gpu_required)" in seen["llm"]["reason"]
    assert seen["llm"]["gpus"] == [] and seen["llm"]["describe"].startswith("dev [DEV platform:")
    assert seen["other"]["ok"] is True and sdk(chain, no_rule).verified


def test_a_value_the_answer_does_not_prove_is_refused_at_proof(chain, dev, tmp_path):
    ok(chain.deliver(NODE, attest(chain, dev)))
    whole = case(chain, "whole", tee_item(chain, LLM, 5).receipt, "llm")
    approvals = {k: v for k, v in whole["values"].items() if bytes.fromhex(k).startswith(b"tee/approval/")}
    cut = {**whole, "name": "cut", "values": {k: v for k, v in whole["values"].items() if k not in approvals}}
    seen = run_js([whole, cut], tmp_path)
    assert seen["whole"]["ok"] is True
    assert seen["cut"]["step"] == "proof" and "does not prove the measurement's approvals" in seen["cut"]["error"]
