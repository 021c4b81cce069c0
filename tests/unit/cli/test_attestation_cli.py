"""`haca attestation verify`: exit 0 and the Claims when the evidence verifies and the default
policy holds; exit 1 naming the failed step otherwise."""

from __future__ import annotations

import json
import time
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


def dev_evidence(tmp_path: Path, debug: bool) -> tuple[Path, Path, int]:
    from haca.proofs.tee.dev import issue_dev_platform, make_dev_evidence, make_dev_root

    make_dev_root(tmp_path / "root")
    issue_dev_platform(tmp_path / "root", tmp_path / "platform")
    now = int(time.time())
    evidence = make_dev_evidence(
        (tmp_path / "platform" / "platform.key").read_bytes(),
        (tmp_path / "platform" / "platform.pem").read_bytes(),
        bytes(range(32)),
        bytes(64),
        now,
        debug,
    )
    (tmp_path / "evidence.cbor").write_bytes(evidence)
    return tmp_path / "evidence.cbor", tmp_path / "root" / "dev_root.pem", now


def test_dev_evidence_verifies_with_its_root_and_says_dev_mode_loudly(tmp_path: Path) -> None:
    evidence, root, now = dev_evidence(tmp_path, debug=False)
    args = ["attestation", "verify", str(evidence), "--format", "dev", "--at", str(now), "--root", str(root)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "DEV-MODE, NOT FOR PRODUCTION" in result.stdout and "measurement_id" in result.stdout
    code, doc = run(*args[2:])
    assert code == 0, doc
    assert doc["dev"] is True and doc["warning"] == "DEV-MODE, NOT FOR PRODUCTION"
    assert doc["measurement_id"].startswith("dev:") and doc["measurements"]["measurement"] == bytes(range(32)).hex()
    code, doc = run(*args[2:-2])
    assert code == 1 and "--root" in doc["error"]["message"]


def test_debug_dev_evidence_exits_1_naming_debug(tmp_path: Path) -> None:
    evidence, root, now = dev_evidence(tmp_path, debug=True)
    code, doc = run(str(evidence), "--format", "dev", "--at", str(now), "--root", str(root))
    assert code == 1 and doc["error"]["message"].startswith("debug:")
    code, doc = run(str(evidence), "--format", "dev", "--at", str(now), "--root", str(root), "--allow-debug")
    assert code == 0 and doc["debug"] is True


def test_every_format_prints_its_measurement_id() -> None:
    code, doc = run(str(FIXTURES / "nitro" / "nitro_attestation.bin"), "--format", "nitro", "--at", str(NITRO_AT))
    assert code == 0 and doc["measurement_id"].startswith("nitro:") and "warning" not in doc
