"""`haca attestation verify`: exit 0 and the Claims when the evidence verifies and the default
policy holds; exit 1 naming the failed step otherwise."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from haca.cli.main import app

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "tee"
NITRO_AT = 1766668537  # the document's own timestamp
SNP_AT = 1751328000


def run(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(app, ["attestation", "verify", *args, "--json"])
    return result.exit_code, json.loads(result.stdout)


def test_nitro_fixture_verifies_and_prints_its_claims() -> None:
    code, doc = run(str(FIXTURES / "nitro" / "nitro_attestation.bin"), "--format", "nitro", "--at", str(NITRO_AT))
    assert code == 0, doc
    assert doc["format"] == "nitro" and doc["debug"] is False and doc["tcb_status"] == "UpToDate"
    assert doc["measurements"]["pcr0"].startswith("5cb702954321826d")


def test_nitro_outside_its_validity_exits_1_naming_the_step() -> None:
    code, doc = run(str(FIXTURES / "nitro" / "nitro_attestation.bin"), "--format", "nitro", "--at", "1800000000")
    assert code == 1 and doc["error"]["code"] == "attestation_refused"
    assert doc["error"]["message"].startswith("expired:")


def test_snp_fixture_verifies_with_its_vcek() -> None:
    snp = FIXTURES / "snp"
    code, doc = run(str(snp / "report_milan.hex"), "--format", "snp", "--at", str(SNP_AT), "--vcek",
                    str(snp / "vcek_milan.der"))  # fmt: skip
    assert code == 0, doc
    assert doc["measurements"]["measurement"].startswith("7a1e5c266c0108db") and doc["debug"] is False


def test_snp_without_a_vcek_is_a_usage_error() -> None:
    code, doc = run(str(FIXTURES / "snp" / "report_milan.hex"), "--format", "snp", "--at", str(SNP_AT))
    assert code == 1 and "--vcek" in doc["error"]["message"]


def test_tdx_fixture_verifies_with_its_collateral_and_a_late_time_names_the_step() -> None:
    tdx = FIXTURES / "tdx"
    args = [str(tdx / "tdx_quote"), "--format", "tdx", "--collateral", str(tdx / "tdx_quote_collateral.json")]
    code, doc = run(*args, "--at", "1751328000")
    assert code == 0, doc
    assert doc["format"] == "tdx" and doc["tcb_status"] == "UpToDate" and doc["debug"] is False
    code, doc = run(*args, "--at", "1756512000")
    assert code == 1 and doc["error"]["message"].startswith("expired:")
    code, doc = run(*args[:-2], "--format", "sgx", "--at", "1751328000")
    assert code == 1 and "needs --collateral" in doc["error"]["message"]
