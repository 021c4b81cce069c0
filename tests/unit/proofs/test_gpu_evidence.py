"""GPU evidence off chain: DEV GPU reports (made and verified, each must-fail case at its step),
the policy's golden-value checks on DEV and real NVIDIA reports, the GPU fields of
MsgAttestEnclave, and NVIDIA RIMs imported into golden values (real nvtrust samples; a tampered
one refused at the signature). Each test asserts one named outcome."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from haca.enclave.platforms.dev_gpu import DevGpus, dev_gpu_golden
from haca.proofs.tee.claims import AttestationError
from haca.proofs.tee.dev import PLATFORM_CERT_FILE, PLATFORM_KEY_FILE, issue_dev_platform, make_dev_root
from haca.proofs.tee.dev_gpu import DEV_GPU_DRIVER_VERSION, DEV_GPU_MEASUREMENTS, make_dev_gpu_report, verify_dev_gpu
from haca.proofs.tee.gpu import verify_gpu
from haca.proofs.tee.nvidia import parse_report_text, verify_nvidia_report
from haca.proofs.tee.policy import TeePolicy
from haca.proofs.tee.rim import import_rim
from haca.types.tee import GpuEvidence, MsgAttestEnclave
from haca.types.tx import MSG_TYPES

NVIDIA = Path(__file__).resolve().parents[2] / "fixtures" / "tee" / "nvidia"
H100_NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
VBIOS_RIM = NVIDIA / "1010_0200_882_96005E0001_PROD.swidtag"
DRIVER_RIM = NVIDIA / "Driver_RIM_test_no_gpu.swidtag"
RIM_AT = 1_717_200_000  # 2024-06-01: the RIM signers' certificates are valid then
NONCE = hashlib.sha256(b"a gpu nonce").digest()
ENCLAVE = "0x" + "11" * 20


@pytest.fixture(scope="module")
def dev(tmp_path_factory) -> dict:
    root_dir, platform_dir = tmp_path_factory.mktemp("root"), tmp_path_factory.mktemp("platform")
    other_dir, other_platform = tmp_path_factory.mktemp("other-root"), tmp_path_factory.mktemp("other-platform")
    make_dev_root(other_dir)
    issue_dev_platform(other_dir, other_platform)
    root = make_dev_root(root_dir)
    issue_dev_platform(root_dir, platform_dir)
    return {
        "root": root,
        "dir": platform_dir,
        "key": (platform_dir / PLATFORM_KEY_FILE).read_bytes(),
        "chain": (platform_dir / PLATFORM_CERT_FILE).read_bytes(),
        "other_root": (other_dir / "dev_root.pem").read_bytes(),
        "now": int(__import__("time").time()),
    }


def dev_report(dev: dict, measurements: dict[int, bytes] | None = None) -> GpuEvidence:
    return make_dev_gpu_report(
        dev["key"], dev["chain"], NONCE, measurements or DEV_GPU_MEASUREMENTS, DEV_GPU_DRIVER_VERSION
    )


def dev_policy(**fields) -> TeePolicy:
    return TeePolicy.from_json({"gpu_formats": ["dev-gpu"], "gpu_golden": dev_gpu_golden(), **fields})


def step_of(call) -> str:
    with pytest.raises(AttestationError) as refused:
        call()
    return refused.value.step


def h100():
    report = parse_report_text((NVIDIA / "hopperAttestationReport.txt").read_bytes())
    return verify_nvidia_report(report, (NVIDIA / "hopperCertChain.txt").read_bytes(), 1_800_000_000, H100_NONCE)


# --- DEV GPU evidence -----------------------------------------------------------------------------


def test_the_dev_gpu_producer_report_verifies_with_its_nonce_dev_measurements_and_label(dev):
    (evidence,) = DevGpus(dev["dir"]).reports(NONCE)
    report = verify_dev_gpu(evidence, dev["now"], dev["root"], NONCE)
    assert (report.format, report.dev, report.measurements, report.driver_version) == (
        "dev-gpu",
        True,
        DEV_GPU_MEASUREMENTS,
        DEV_GPU_DRIVER_VERSION,
    )


def test_a_dev_gpu_report_for_another_nonce_is_refused_at_binding(dev):
    assert step_of(lambda: verify_dev_gpu(dev_report(dev), dev["now"], dev["root"], bytes(32))) == "binding"


def test_a_dev_gpu_report_under_another_dev_root_is_refused_at_the_chain(dev):
    assert step_of(lambda: verify_dev_gpu(dev_report(dev), dev["now"], dev["other_root"], NONCE)) == "chain"


def test_a_dev_gpu_report_with_a_changed_payload_byte_is_refused_at_the_signature(dev):
    evidence = dev_report(dev)
    i = evidence.report.index(DEV_GPU_MEASUREMENTS[1])
    tampered = evidence.report[:i] + bytes([evidence.report[i] ^ 1]) + evidence.report[i + 1 :]
    forged = GpuEvidence("dev-gpu", tampered, evidence.chain)
    assert step_of(lambda: verify_dev_gpu(forged, dev["now"], dev["root"], NONCE)) == "signature"


def test_a_dev_gpu_report_past_its_certificates_is_refused_as_expired(dev):
    assert step_of(lambda: verify_dev_gpu(dev_report(dev), 4_000_000_000, dev["root"], NONCE)) == "expired"


def test_a_dev_gpu_report_that_is_not_cbor_is_refused_at_the_format(dev):
    junk = GpuEvidence("dev-gpu", b"not cbor at all", dev["chain"])
    assert step_of(lambda: verify_dev_gpu(junk, dev["now"], dev["root"], NONCE)) == "format"


def test_dev_gpu_evidence_without_a_dev_root_is_refused_at_the_chain(dev):
    assert step_of(lambda: verify_gpu(dev_report(dev), dev["now"], {}, NONCE)) == "chain"


# --- golden values --------------------------------------------------------------------------------


def test_a_dev_gpu_report_with_the_dev_golden_values_passes_the_policy(dev):
    report = verify_dev_gpu(dev_report(dev), dev["now"], dev["root"], NONCE)
    dev_policy().check_gpu(report)  # no AttestationError


def test_a_measurement_off_its_golden_values_is_refused_at_golden(dev):
    report = verify_dev_gpu(dev_report(dev, {**DEV_GPU_MEASUREMENTS, 1: bytes(48)}), dev["now"], dev["root"], NONCE)
    assert step_of(lambda: dev_policy().check_gpu(report)) == "golden"


def test_a_report_whose_driver_has_no_golden_entry_is_refused_at_golden(dev):
    report = verify_dev_gpu(dev_report(dev), dev["now"], dev["root"], NONCE)
    assert step_of(lambda: dev_policy(gpu_golden={}).check_gpu(report)) == "golden"


def test_dev_gpu_evidence_is_refused_by_a_policy_that_does_not_list_it(dev):
    report = verify_dev_gpu(dev_report(dev), dev["now"], dev["root"], NONCE)
    assert step_of(lambda: TeePolicy(gpu_golden=dev_policy().gpu_golden).check_gpu(report)) == "format"


def test_the_h100_report_with_golden_values_of_its_own_driver_and_vbios_passes():
    report = h100()
    driver, vbios = report.golden_keys()
    golden = {driver: {"2": [report.measurements[2].hex()]}, vbios: {"4": [report.measurements[4].hex()]}}
    TeePolicy.from_json({"gpu_golden": golden}).check_gpu(report)  # no AttestationError


def test_an_index_listed_by_both_driver_and_vbios_entries_is_refused_at_golden():
    report = h100()
    driver, vbios = report.golden_keys()
    value = [report.measurements[2].hex()]
    policy = TeePolicy.from_json({"gpu_golden": {driver: {"2": value}, vbios: {"2": value}}})
    assert step_of(lambda: policy.check_gpu(report)) == "golden"


@pytest.mark.parametrize(
    "golden",
    [
        {"GH100/firmware/1.0": {"1": ["00"]}},
        {"GH100/driver/1.0": {"01": ["00"]}},
        {"GH100/driver/1.0": {"1": ["ABCD"]}},
        {"GH100/driver/1.0": {"1": []}},
        {"GH100/driver/1.0": {"1": ["00", "00"]}},
    ],
    ids=["component", "index-spelling", "upper-hex", "no-values", "repeated-value"],
)
def test_a_malformed_golden_entry_is_refused_by_the_policy(golden):
    with pytest.raises(ValueError, match="gpu_golden"):
        TeePolicy.from_json({"gpu_golden": golden})


def test_gpu_required_must_name_models_or_star():
    with pytest.raises(ValueError, match="gpu_required"):
        TeePolicy.from_json({"gpu_required": ["Not A Model"]})


# --- the message ----------------------------------------------------------------------------------


def test_an_attestation_with_gpus_round_trips_through_json_and_one_without_omits_the_field(dev):
    msg = MsgAttestEnclave(ENCLAVE, "dev", b"\x01", b"", 5, (dev_report(dev),))
    bare = MsgAttestEnclave(ENCLAVE, "dev", b"\x01", b"", 5)
    decoded = MSG_TYPES["tee/attest_enclave"].from_json(json.loads(json.dumps(msg.to_json())))
    assert (decoded, "gpus" in bare.to_json(), bare.to_eip712()["gpus"]) == (msg, False, b"")


@pytest.mark.parametrize(
    ("gpus", "error"),
    [
        ([], "omit the field"),
        ([{"format": "amd", "report": "0x01", "chain": "-----BEGIN CERTIFICATE-----"}], "format"),
        ([{"format": "nvidia", "report": "0x", "chain": "-----BEGIN CERTIFICATE-----"}], "must not be empty"),
        ([{"format": "nvidia", "report": "0x01", "chain": "0x3082"}], "PEM"),
        ([{"format": "nvidia", "report": "0x01", "chain": "-----BEGIN CERTIFICATE-----"}] * 2, "same report"),
        ([{"format": "nvidia", "report": f"0x{i:02x}", "chain": "-----BEGIN CERTIFICATE-----"} for i in range(9)], "8"),
    ],
    ids=["empty", "format", "empty-report", "chain-not-pem", "duplicate", "too-many"],
)
def test_a_malformed_gpus_field_is_refused_on_decode(gpus, error):
    doc = MsgAttestEnclave(ENCLAVE, "dev", b"\x01", b"", 5).to_json() | {"gpus": gpus}
    with pytest.raises(ValueError, match=error):
        MsgAttestEnclave.from_json(doc)


# --- RIM import -----------------------------------------------------------------------------------

# signxml (with lxml) is the RIM importer's dependency, an operator tool's: without it these skip.
needs_signxml = pytest.mark.skipif(importlib.util.find_spec("signxml") is None, reason="signxml is not installed")


@needs_signxml
def test_the_real_vbios_rim_imports_as_a_gh100_vbios_entry_of_its_active_measurements():
    entry = import_rim(VBIOS_RIM.read_bytes(), None, RIM_AT)
    assert (entry.key, sorted(entry.measurements)) == (
        "GH100/vbios/96.00.5e.00.01",
        [1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13],  # RIM indices 0..6, 8..12 (active), one up
    )


@needs_signxml
def test_the_real_driver_rim_imports_as_a_policy_entry_the_policy_accepts():
    entry = import_rim(DRIVER_RIM.read_bytes(), None, RIM_AT)
    policy = TeePolicy.from_json({"gpu_golden": entry.policy_entry()})
    assert policy.gpu_golden["GH100/driver/545.00"] == entry.measurements


@needs_signxml
def test_rim_indices_map_to_the_gpus_measurement_blocks_one_up():
    """The VBIOS RIM's FSP values at RIM indices 3..6 are the H100 report's measurements 4..7."""
    entry, report = import_rim(VBIOS_RIM.read_bytes(), None, RIM_AT), h100()
    assert all(report.measurements[i].hex() in entry.measurements[i] for i in (4, 5, 6, 7))


@needs_signxml
def test_a_tampered_rim_is_refused_at_the_signature():
    data = VBIOS_RIM.read_bytes()
    i = data.index(b"c3f65ef7")  # a golden value inside the signed payload
    assert step_of(lambda: import_rim(data[:i] + b"d" + data[i + 1 :], None, RIM_AT)) == "signature"


@needs_signxml
def test_a_rim_under_another_root_is_refused_at_the_chain():
    other = (NVIDIA / "verifier_device_root.pem").read_bytes()
    assert step_of(lambda: import_rim(VBIOS_RIM.read_bytes(), other, RIM_AT)) == "chain"


@needs_signxml
def test_a_rim_past_its_signers_certificate_is_refused_as_expired():
    assert step_of(lambda: import_rim(VBIOS_RIM.read_bytes(), None, 1_760_000_000)) == "expired"


@needs_signxml
def test_the_rim_import_command_prints_the_gpu_golden_fragment():
    from haca.cli.main import app

    result = CliRunner().invoke(
        app, ["attestation", "rim-import", str(VBIOS_RIM), str(DRIVER_RIM), "--at", str(RIM_AT), "--json"]
    )
    assert sorted(json.loads(result.stdout)["gpu_golden"]) == ["GH100/driver/545.00", "GH100/vbios/96.00.5e.00.01"]
