"""`haca enclave`: the measurement it prints is the one the enclave reports, and `serve --platform
auto` on a machine without a TEE refuses to start instead of falling back to the dev platform."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from haca.cli.main import app
from haca.enclave.measure import enclave_measurement, measured_files


def test_measure_prints_the_enclave_measurement_and_what_it_covers() -> None:
    result = CliRunner().invoke(app, ["enclave", "measure", "--files", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc == {"measurement": enclave_measurement().hex(), "files": sorted(measured_files())}


def test_serve_with_auto_on_a_machine_without_a_tee_is_an_error_not_a_dev_enclave(tmp_path) -> None:
    result = CliRunner().invoke(app, ["enclave", "serve", "--socket", str(tmp_path / "e.sock"), "--platform", "auto"])
    assert result.exit_code == 1
    assert "--platform auto found no TEE here" in result.output
    assert not (tmp_path / "e.sock").exists()


def test_a_hardware_enclave_refuses_an_environment_that_loads_unmeasured_code(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LD_PRELOAD", "/tmp/evil.so")
    result = CliRunner().invoke(app, ["enclave", "serve", "--socket", str(tmp_path / "e.sock"), "--platform", "tdx"])
    assert result.exit_code == 1
    assert "refusing to run as an enclave with LD_PRELOAD set" in result.output
