"""NVIDIA GPU evidence (issue 20, item 4: the verifier): the real H100 report from NVIDIA/nvtrust
verifies with its nonce against the pinned NVIDIA Device Identity root and reports its
measurements and driver; each must-fail case of the fixture's README fails at the named step."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from typer.testing import CliRunner

from haca.cli.main import app
from haca.proofs.tee.claims import AttestationError
from haca.proofs.tee.nvidia import REQUEST_BYTES, SIGNATURE_BYTES, parse_report_text, verify_nvidia_report

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "tee" / "nvidia"
REPORT = parse_report_text((FIXTURES / "hopperAttestationReport.txt").read_bytes())
CHAIN = (FIXTURES / "hopperCertChain.txt").read_bytes()
NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
AT = 1_800_000_000  # every certificate is valid until 9999


def flipped(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1 :]


def test_the_h100_fixture_verifies_with_its_nonce_and_reports_its_facts():
    report = verify_nvidia_report(REPORT, CHAIN, AT, NONCE)
    assert report.nonce == NONCE and len(report.measurements) == 64
    assert all(len(value) == 48 for value in report.measurements.values())
    assert report.driver_version == "550.90.07"
    assert (report.fields["project"], report.fields["chip_info"], report.fields["chip_sku"]) == ("882", "1010", "0200")
    assert len(report.signer_chain) == 5 and report.signer_chain[-1] == "O=NVIDIA,CN=NVIDIA Device Identity CA"
    assert verify_nvidia_report((FIXTURES / "hopperAttestationReport.txt").read_bytes(), CHAIN, AT, NONCE) == report


@pytest.mark.parametrize(
    "offset",
    [4, REQUEST_BYTES + 8 + 7 + 5, len(REPORT) - SIGNATURE_BYTES - 5],  # (header 8, block head 7)
    ids=["nonce", "measurement", "opaque-data"],
)
def test_a_changed_byte_of_nonce_measurement_or_opaque_data_fails_the_signature(offset):
    with pytest.raises(AttestationError) as refused:
        verify_nvidia_report(flipped(REPORT, offset), CHAIN, AT, None)
    assert refused.value.step == "signature"


def test_a_chain_not_ending_at_the_pinned_root_fails_the_chain():
    certs = x509.load_pem_x509_certificates(CHAIN)
    short = b"".join(c.public_bytes(Encoding.PEM) for c in certs[:-1])  # stops at NVIDIA GH100 Identity
    with pytest.raises(AttestationError, match="not the pinned root") as refused:
        verify_nvidia_report(REPORT, short, AT, NONCE)
    assert refused.value.step == "chain"


def test_an_altered_certificate_fails_the_chain():
    certs = x509.load_pem_x509_certificates(CHAIN)
    der = bytearray(certs[1].public_bytes(Encoding.DER))
    der[-10] ^= 1  # inside the issuer's signature over it
    altered = x509.load_der_x509_certificate(bytes(der))
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in (certs[0], altered, *certs[2:]))
    with pytest.raises(AttestationError, match="is not signed by") as refused:
        verify_nvidia_report(REPORT, pem, AT, NONCE)
    assert refused.value.step == "chain"


def test_a_leaf_whose_key_is_not_a_curve_point_fails_the_signature_step():
    """Found by fuzz/fuzz_nvidia.py: one digit of the leaf's public point changed (the certificate
    still parses) made `public_key()` raise a bare ValueError ("Invalid key") out of the verifier."""
    certs = x509.load_pem_x509_certificates(CHAIN)
    der = bytearray(certs[0].public_bytes(Encoding.DER))
    point = certs[0].public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    at = der.find(point) + 46  # the byte fuzz_nvidia changed: '3' -> '7'
    der[at] = 0x37 if der[at] != 0x37 else 0x33
    pem = x509.load_der_x509_certificate(bytes(der)).public_bytes(Encoding.PEM)
    with pytest.raises(AttestationError, match="key does not load") as refused:
        verify_nvidia_report(REPORT, pem + b"".join(c.public_bytes(Encoding.PEM) for c in certs[1:]), AT, NONCE)
    assert refused.value.step == "signature"


def test_a_leaf_whose_subject_does_not_parse_fails_the_chain_step():
    """Found by fuzz/fuzz_nvidia.py: six bytes of the leaf's subject shuffled. The certificate
    loads (cryptography parses names when first read), its signature check fails, and reading its
    subject for the refusal raised a bare ValueError out of the verifier."""
    certs = x509.load_pem_x509_certificates(CHAIN)
    der = bytearray(certs[0].public_bytes(Encoding.DER))
    der[193:199] = b"\x13C(35\x05"  # fuzz_nvidia's input: a shuffled attribute of the subject
    leaf = x509.load_der_x509_certificate(bytes(der))
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in (leaf, *certs[1:]))
    with pytest.raises(AttestationError, match="name that does not parse") as refused:
        verify_nvidia_report(REPORT, pem, AT, NONCE)
    assert refused.value.step == "chain"


def test_a_leaf_of_an_unknown_x509_version_fails_the_chain_step():
    """Found by fuzz/fuzz_nvidia.py: the leaf's version field set to 34 makes cryptography raise
    x509.InvalidVersion, which is not a ValueError, out of the chain's PEM loading."""
    certs = x509.load_pem_x509_certificates(CHAIN)
    der = bytearray(certs[0].public_bytes(Encoding.DER))
    assert der[8:13] == b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT INTEGER 2 (v3)
    der[12] = 34
    body = base64.encodebytes(bytes(der)).decode()
    leaf = f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n".encode()
    with pytest.raises(AttestationError, match="not PEM") as refused:
        verify_nvidia_report(REPORT, leaf + b"".join(c.public_bytes(Encoding.PEM) for c in certs[1:]), AT, NONCE)
    assert refused.value.step == "chain"


def test_a_leaf_whose_key_is_on_an_unknown_curve_fails_the_signature_step():
    """Found by fuzz/fuzz_nvidia.py: a leaf whose key names a curve cryptography does not know makes
    `public_key()` raise UnsupportedAlgorithm (not a ValueError) out of the verifier."""
    certs = x509.load_pem_x509_certificates(CHAIN)
    p384 = b"\x06\x05\x2b\x81\x04\x00\x22"  # OID 1.3.132.0.34 (secp384r1), first in the leaf's key
    der = certs[0].public_bytes(Encoding.DER).replace(p384, p384[:-1] + b"\x7f", 1)  # 1.3.132.0.127
    leaf = x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)
    with pytest.raises(AttestationError, match="key does not load") as refused:
        verify_nvidia_report(REPORT, leaf + b"".join(c.public_bytes(Encoding.PEM) for c in certs[1:]), AT, NONCE)
    assert refused.value.step == "signature"


def test_a_nonce_other_than_the_expected_one_is_refused_as_not_bound():
    with pytest.raises(AttestationError, match="not the expected") as refused:
        verify_nvidia_report(REPORT, CHAIN, AT, bytes(32))
    assert refused.value.step == "binding"


@pytest.mark.parametrize(
    ("data", "message"),
    [(REPORT[:30], "ends inside its GET_MEASUREMENTS request"), (REPORT + b"\x00", "follow the signature")],
    ids=["truncated", "trailing"],
)
def test_a_malformed_report_fails_its_format(data, message):
    with pytest.raises(AttestationError, match=message) as refused:
        verify_nvidia_report(data, CHAIN, AT, None)
    assert refused.value.step == "format"


def run(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(app, ["attestation", "verify", *args, "--json"])
    return result.exit_code, json.loads(result.stdout)


def test_the_cli_prints_the_driver_the_measurement_count_and_the_root():
    args = (str(FIXTURES / "hopperAttestationReport.txt"), "--format", "nvidia", "--at", str(AT))
    code, doc = run(*args, "--chain", str(FIXTURES / "hopperCertChain.txt"), "--nonce", NONCE.hex())
    assert code == 0, doc
    assert (doc["driver_version"], len(doc["measurements"]), doc["root"]) == (
        "550.90.07",
        64,
        "O=NVIDIA,CN=NVIDIA Device Identity CA",
    )
    code, doc = run(*args, "--chain", str(FIXTURES / "hopperCertChain.txt"), "--nonce", "00" * 32)
    assert code == 1 and doc["error"]["code"] == "attestation_refused"
    assert doc["error"]["message"].startswith("binding:")


def test_a_gpu_report_is_bound_to_an_enclave_key_through_its_nonce():
    """The nonce a GPU report must carry for an enclave key is derived from the chain, node, key and
    block it registers with: the fixture's nonce binds none of ours, so it is refused at the binding."""
    from haca.proofs.tee.binding import gpu_report_nonce

    node, key, block = "0x" + "5e" * 20, "0x" + "ee" * 20, bytes(32)
    expected = gpu_report_nonce("haca-devnet", node, key, block)
    assert len(expected) == 32 and expected != gpu_report_nonce("haca-devnet", "0x" + "5f" * 20, key, block)
    assert expected != gpu_report_nonce("haca-devnet", node, "0x" + "ef" * 20, block)
    assert expected != gpu_report_nonce("haca-devnet", node, key, b"\x01" * 32)
    with pytest.raises(AttestationError) as refused:
        verify_nvidia_report(REPORT, CHAIN, AT, expected)
    assert refused.value.step == "binding"
