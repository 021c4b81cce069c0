"""AMD SEV-SNP: the real Milan fixture reports exactly the facts in the fixtures README; a flipped bit
in the report, an altered certificate, another ARK or a time outside validity fails at the named step;
a debug report is refused by the default policy."""

from __future__ import annotations

import base64
import datetime as dt
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from haca.proofs.receipt import EvidenceError
from haca.proofs.tee.claims import AttestationError, AttestationPolicy, Claims
from haca.proofs.tee.snp import decode_tcb, verify_snp

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "tee" / "snp"
REPORT_HEX = (FIX / "report_milan.hex").read_text()
REPORT = bytes.fromhex(REPORT_HEX.strip())
VCEK = (FIX / "vcek_milan.der").read_bytes()
CHAIN = (FIX / "cert_chain_milan").read_bytes()
NOW = 1751328000  # 2025-07-01, inside the VCEK's validity
VCEK_NOT_BEFORE = 1680549823  # 2023-04-03T19:23:43Z
VCEK_NOT_AFTER = 1901474623  # 2030-04-03T19:23:43Z

MEASUREMENT = "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
REPORT_DATA = (
    "d447b55d197491bfe15cf298f9de9986b7a7c4be2468b4f6e2d53b71d7c64581"
    "0b0f2cdfca0040433be063fc1a8293f0f3f8dae7b79fecb3d1cd82bd6a93ebfd"
)
REPORT_ID = "92b3b47d59f0a2a10a74c5678868a80238cf593c01a82f3cffb878e904c28d5b"
CHIP_ID = (
    "d49554ec717f4e5b0fe6b143bcf0405bd7ae304727edf46603f2a76aef6a3abc"
    "15d7af38db757039029f0efacfd08e244324884738c72b082e2f87a44d541eb6"
)
TCB = "0300000000000873"
TCB_DECODED = {"boot_loader": 3, "tee": 0, "snp": 8, "microcode": 115}
AMD = ",O=Advanced Micro Devices,ST=CA,L=Santa Clara,C=US,OU=Engineering"
# The tests load AMD's VCEK themselves (serial number 0, which `cryptography` warns about); the verifier
# silences that warning itself (test_the_verifier_emits_no_warning).
pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[offset] ^= 1 << bit
    return bytes(b)


def step_of(report: bytes | str, vcek: bytes = VCEK, now: int = NOW, chain: bytes | None = None) -> str:
    with pytest.raises(AttestationError) as e:
        verify_snp(report, vcek, now, chain)
    return e.value.step


# --- the real fixture -------------------------------------------------------------------------------


def test_fixture_reports_the_readme_facts() -> None:
    c = verify_snp(REPORT_HEX, VCEK, NOW)
    assert c.format == "snp"
    assert dict(c.measurements) == {
        "measurement": bytes.fromhex(MEASUREMENT),
        "host_data": bytes(32),
        "id_key_digest": bytes(48),
        "author_key_digest": bytes(48),
    }
    assert c.report_data == bytes.fromhex(REPORT_DATA)
    assert c.debug is False
    assert c.tcb_status == "UpToDate"
    assert c.advisory_ids == ()
    assert c.time == 0
    assert c.public_key == b""
    assert c.dev is False
    assert c.signer_chain == ("CN=SEV-VCEK" + AMD, "CN=SEV-Milan" + AMD, "CN=ARK-Milan" + AMD)
    x = c.extra
    assert (x["version"], x["guest_svn"], x["vmpl"], x["signature_algo"]) == (2, 0, 0, 1)
    assert x["policy"] == 0x30000
    assert x["platform_info"] == 0x1
    assert x["product"] == "Milan"
    assert x["report_id"] == bytes.fromhex(REPORT_ID)
    assert x["report_id_ma"] == b"\xff" * 32
    assert x["chip_id"] == bytes.fromhex(CHIP_ID)
    assert x["family_id"] == bytes(16)
    assert x["image_id"] == bytes(16)
    for name in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"):
        assert x[name] == TCB
        assert x[name + "_decoded"] == TCB_DECODED
    AttestationPolicy().check(c)  # not debug, "UpToDate": the default policy holds


def test_to_json_is_hex() -> None:
    j = verify_snp(REPORT, VCEK, NOW).to_json()
    assert j["measurements"]["measurement"] == MEASUREMENT
    assert j["report_data"] == REPORT_DATA
    assert j["extra"]["chip_id"] == CHIP_ID
    assert j["extra"]["report_id"] == REPORT_ID
    assert j["extra"]["current_tcb"] == TCB
    assert j["extra"]["policy"] == 0x30000


def test_raw_bytes_hex_text_and_hex_file_bytes_verify_the_same() -> None:
    from_hex = verify_snp(REPORT_HEX, VCEK, NOW)
    assert verify_snp(REPORT, VCEK, NOW) == from_hex
    assert verify_snp(REPORT_HEX.encode(), VCEK, NOW) == from_hex  # a hex file read as bytes (the CLI)
    assert verify_snp(REPORT.hex().upper(), VCEK, NOW) == from_hex
    assert verify_snp(bytes(bytearray(REPORT)), VCEK, NOW) == from_hex


def test_the_verifier_emits_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verify_snp(REPORT, VCEK, NOW)


def test_pinned_chain_and_the_supplied_one_agree() -> None:
    assert verify_snp(REPORT, VCEK, NOW, CHAIN) == verify_snp(REPORT, VCEK, NOW)


def test_decode_tcb() -> None:
    assert decode_tcb(bytes.fromhex(TCB)) == TCB_DECODED
    with pytest.raises(AttestationError) as e:
        decode_tcb(bytes(7))
    assert e.value.step == "format"


def test_attestation_error_is_an_evidence_error() -> None:
    with pytest.raises(EvidenceError, match=r"^signature: "):
        verify_snp(flip(REPORT, 0x90), VCEK, NOW)


# --- the report signature ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "offset", "bit"),
    [
        ("measurement", 0x90, 0),
        ("measurement_last_byte", 0x90 + 47, 7),
        ("report_data", 0x50, 0),
        ("report_data_last_byte", 0x50 + 63, 3),
        ("policy", 0x08, 0),
        ("signature_r", 0x2A0, 0),
        ("signature_s", 0x2A0 + 72, 0),
        ("signature_r_zero_padding", 0x2A0 + 60, 0),
        ("chip_id", 0x1A0, 0),
        ("reported_tcb", 0x180, 0),
    ],
)
def test_one_flipped_bit_fails_signature(field: str, offset: int, bit: int) -> None:
    assert step_of(flip(REPORT, offset, bit)) == "signature"
    assert step_of(flip(REPORT, offset, bit).hex()) == "signature"


def test_bytes_after_the_signature_are_not_signed() -> None:
    # 0x330..0x49F is reserved and outside both the signed range and (r, s): AMD does not sign it.
    assert verify_snp(flip(REPORT, 0x400), VCEK, NOW) == verify_snp(REPORT, VCEK, NOW)


@pytest.mark.parametrize(
    "report",
    [
        REPORT[:-1],
        REPORT + b"\x00",
        b"",
        "zz" * 1184,
        REPORT_HEX.strip()[:-2],
        b"\xff" * 2368,
    ],
    ids=["short", "long", "empty", "not-hex", "short-hex", "not-ascii"],
)
def test_malformed_report_fails_format(report: bytes | str) -> None:
    assert step_of(report) == "format"


def test_wrong_signature_algo_fails_format() -> None:
    assert step_of(REPORT[:0x34] + (2).to_bytes(4, "little") + REPORT[0x38:]) == "format"


def test_version_1_fails_format() -> None:
    assert step_of((1).to_bytes(4, "little") + REPORT[4:]) == "format"


def test_vlek_signed_report_fails_format() -> None:
    assert step_of(REPORT[:0x48] + (1 << 2).to_bytes(4, "little") + REPORT[0x4C:]) == "format"


# --- the certificate chain --------------------------------------------------------------------------


def test_vcek_with_one_byte_changed_in_its_tbs_fails_chain() -> None:
    cert = x509.load_der_x509_certificate(VCEK)
    tbs = cert.tbs_certificate_bytes
    i = VCEK.index(b"SEV-VCEK")
    assert VCEK.index(tbs) < i < VCEK.index(tbs) + len(tbs)  # the changed byte lies inside the TBS
    altered = VCEK[: i + 7] + b"L" + VCEK[i + 8 :]  # CN=SEV-VCEK -> CN=SEV-VCEL: still parses
    assert x509.load_der_x509_certificate(altered).subject.rfc4514_string() == "CN=SEV-VCEL" + AMD
    assert step_of(REPORT, altered) == "chain"


def test_vcek_with_one_byte_changed_in_its_signature_fails_chain() -> None:
    sig = x509.load_der_x509_certificate(VCEK).signature
    i = VCEK.index(sig)
    assert step_of(REPORT, flip(VCEK, i + 100)) == "chain"


def test_vcek_with_its_public_key_changed_fails_format() -> None:
    key = x509.load_der_x509_certificate(VCEK).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    point = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    i = VCEK.index(point)
    assert step_of(REPORT, flip(VCEK, i + 40)) == "format"  # the point is no longer on the curve


def test_vcek_that_does_not_parse_fails_format() -> None:
    assert step_of(REPORT, VCEK[:-10]) == "format"
    assert step_of(REPORT, b"") == "format"


def _pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _real_chain() -> tuple[x509.Certificate, x509.Certificate]:
    ask, ark = x509.load_pem_x509_certificates(CHAIN)
    return ask, ark


def _modulus_flipped(cert: x509.Certificate) -> x509.Certificate:
    der = cert.public_bytes(serialization.Encoding.DER)
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    n = key.public_numbers().n
    i = der.index(n.to_bytes((n.bit_length() + 7) // 8, "big"))
    return x509.load_der_x509_certificate(flip(der, i + 200))


def test_ask_with_one_byte_changed_fails_chain() -> None:
    ask, ark = _real_chain()
    assert step_of(REPORT, chain=_pem([_modulus_flipped(ask), ark])) == "chain"


def test_ark_with_one_byte_changed_fails_chain() -> None:
    ask, ark = _real_chain()
    assert step_of(REPORT, chain=_pem([ask, _modulus_flipped(ark)])) == "chain"


def test_ask_and_ark_swapped_fails_chain() -> None:
    ask, ark = _real_chain()
    assert step_of(REPORT, chain=_pem([ark, ask])) == "chain"


def _der_patched(cert: x509.Certificate, at: int, patch: bytes) -> x509.Certificate:
    der = bytearray(cert.public_bytes(serialization.Encoding.DER))
    der[at : at + len(patch)] = patch
    return x509.load_der_x509_certificate(bytes(der))


def test_ask_whose_subject_does_not_parse_fails_format() -> None:
    """Found by fuzz/fuzz_snp.py: two bytes of the ASK's subject (inside "Advanced Micro Devices", a
    UTF8String) made invalid UTF-8. The certificate loads (names are parsed when first read) and
    reading its subject raised a bare ValueError out of verify_snp."""
    ask, ark = _real_chain()
    broken = _der_patched(ask, 332, b"\x8d\x9e")
    assert step_of(REPORT, chain=_pem([broken, ark])) == "format"
    with pytest.raises(AttestationError, match="does not parse"):
        verify_snp(REPORT, VCEK, NOW, _pem([broken, ark]))


def test_certificates_of_an_unknown_x509_version_fail_format() -> None:
    """x509.InvalidVersion is not a ValueError: a VCEK or chain certificate whose version field
    says 34 must still be refused as not parsing (the same input crashed the NVIDIA verifier)."""
    ask, ark = _real_chain()
    ask_der = bytearray(ask.public_bytes(serialization.Encoding.DER))
    assert ask_der[8:13] == b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT INTEGER 2 (v3)
    ask_der[12] = 34
    ask_pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(ask_der)) + b"-----END CERTIFICATE-----\n"
    assert step_of(REPORT, chain=ask_pem + _pem([ark])) == "format"
    vcek = bytearray(VCEK)
    vcek[vcek.index(b"\xa0\x03\x02\x01\x02") + 4] = 34
    assert step_of(REPORT, vcek=bytes(vcek)) == "format"


def test_vcek_whose_key_is_on_an_unknown_curve_fails_format() -> None:
    """Found by fuzz/fuzz_snp.py: a VCEK whose key names a curve cryptography does not know makes
    `public_key()` raise UnsupportedAlgorithm (not a ValueError) out of verify_snp."""
    p384 = b"\x06\x05\x2b\x81\x04\x00\x22"  # OID 1.3.132.0.34 (secp384r1)
    vcek = VCEK.replace(p384, p384[:-1] + b"\x7f", 1)  # 1.3.132.0.127
    assert step_of(REPORT, vcek=vcek) == "format"
    with pytest.raises(AttestationError, match="public key does not load"):
        verify_snp(REPORT, vcek, NOW, CHAIN)


def test_chain_of_one_certificate_fails_format() -> None:
    ask, _ = _real_chain()
    assert step_of(REPORT, chain=_pem([ask])) == "format"
    assert step_of(REPORT, chain=b"not a pem") == "format"


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
        ]
    )


def _cert(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    signer: rsa.RSAPrivateKey,
    not_before: int = 1600000000,
    not_after: int = 2400000000,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(1)
        .not_valid_before(dt.datetime.fromtimestamp(not_before, dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(not_after, dt.UTC))
        .sign(signer, hashes.SHA384(), rsa_padding=PSS)
    )


@pytest.fixture(scope="module")
def other_ark_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_another_ark_fails_chain(other_ark_key: rsa.RSAPrivateKey) -> None:
    ask, ark = _real_chain()
    fake_ark = _cert(ark.subject, ark.subject, other_ark_key.public_key(), other_ark_key)
    assert fake_ark.subject == ark.subject  # same name, another key: only the signature tells them apart
    assert step_of(REPORT, chain=_pem([ask, fake_ark])) == "chain"


# --- validity at `now` ------------------------------------------------------------------------------


def test_vcek_validity_bounds() -> None:
    cert = x509.load_der_x509_certificate(VCEK)
    assert int(cert.not_valid_before_utc.timestamp()) == VCEK_NOT_BEFORE
    assert int(cert.not_valid_after_utc.timestamp()) == VCEK_NOT_AFTER
    assert verify_snp(REPORT, VCEK, VCEK_NOT_BEFORE).report_data == bytes.fromhex(REPORT_DATA)
    assert verify_snp(REPORT, VCEK, VCEK_NOT_AFTER).report_data == bytes.fromhex(REPORT_DATA)


@pytest.mark.parametrize("now", [VCEK_NOT_BEFORE - 1, 0, VCEK_NOT_AFTER + 1, 2500000000])
def test_time_outside_the_vcek_validity_fails_expired(now: int) -> None:
    assert step_of(REPORT, now=now) == "expired"


def test_check_order_chain_then_time_then_report_signature() -> None:
    assert step_of(flip(REPORT, 0x90), now=VCEK_NOT_AFTER + 1) == "expired"
    ask, ark = _real_chain()
    assert step_of(REPORT, now=VCEK_NOT_AFTER + 1, chain=_pem([_modulus_flipped(ask), ark])) == "chain"


# --- debug, and documents that are not in the fixtures ----------------------------------------------


def test_flipping_the_debug_bit_breaks_the_signature() -> None:
    assert (int.from_bytes(REPORT[0x08:0x10], "little") >> 19) & 1 == 0
    assert step_of(flip(REPORT, 0x08 + 2, 3)) == "signature"  # bit 19 = byte 2, bit 3 of the policy


def test_debug_claims_are_refused_by_the_default_policy() -> None:
    claims = replace(verify_snp(REPORT, VCEK, NOW), debug=True)
    with pytest.raises(AttestationError) as e:
        AttestationPolicy().check(claims)
    assert e.value.step == "debug"
    AttestationPolicy(allow_debug=True).check(claims)


@dataclass(frozen=True)
class Synthetic:
    """A made-up AMD-shaped chain (ARK -> ASK -> VCEK) that can sign reports of our own."""

    chain_pem: bytes
    vcek_der: bytes
    vcek_key: ec.EllipticCurvePrivateKey

    def sign(self, body: bytes) -> bytes:
        assert len(body) == 0x2A0
        r, s = decode_dss_signature(self.vcek_key.sign(body, ec.ECDSA(hashes.SHA384())))
        sig = r.to_bytes(72, "little") + s.to_bytes(72, "little")
        return body + sig + bytes(1184 - 0x2A0 - 144)


@pytest.fixture(scope="module")
def synthetic() -> Synthetic:
    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ask_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    ark = _cert(_name("ARK-Milan"), _name("ARK-Milan"), ark_key.public_key(), ark_key)
    ask = _cert(_name("SEV-Milan"), _name("ARK-Milan"), ask_key.public_key(), ark_key)
    vcek = _cert(_name("SEV-VCEK"), _name("SEV-Milan"), vcek_key.public_key(), ask_key, 1700000000, 1900000000)
    return Synthetic(_pem([ask, ark]), vcek.public_bytes(serialization.Encoding.DER), vcek_key)


def _body(policy: int) -> bytes:
    b = bytearray(0x2A0)
    b[0x00:0x04] = (3).to_bytes(4, "little")  # a newer report version keeps these offsets
    b[0x08:0x10] = policy.to_bytes(8, "little")
    b[0x34:0x38] = (1).to_bytes(4, "little")
    b[0x50:0x90] = bytes(range(64))
    b[0x90:0xC0] = b"\x42" * 48
    return bytes(b)


def test_a_report_not_in_the_fixtures_verifies_with_its_chain(synthetic: Synthetic) -> None:
    report = synthetic.sign(_body(0x30000))
    c = verify_snp(report.hex(), synthetic.vcek_der, NOW, synthetic.chain_pem)
    assert c.measurements["measurement"] == b"\x42" * 48
    assert c.report_data == bytes(range(64))
    assert c.debug is False
    assert c.extra["version"] == 3
    assert c.signer_chain == (
        "O=Advanced Micro Devices,CN=SEV-VCEK",
        "O=Advanced Micro Devices,CN=SEV-Milan",
        "O=Advanced Micro Devices,CN=ARK-Milan",
    )
    AttestationPolicy().check(c)


def test_a_made_up_chain_is_not_amds(synthetic: Synthetic) -> None:
    report = synthetic.sign(_body(0x30000))
    assert step_of(report, synthetic.vcek_der) == "chain"  # without chain_pem: the pinned Milan ARK
    assert step_of(report, synthetic.vcek_der, chain=CHAIN) == "chain"
    assert step_of(REPORT, VCEK, chain=synthetic.chain_pem) == "chain"


def test_a_signed_debug_report_is_refused_by_the_default_policy(synthetic: Synthetic) -> None:
    report = synthetic.sign(_body(0x30000 | 1 << 19))
    c = verify_snp(report, synthetic.vcek_der, NOW, synthetic.chain_pem)
    assert c.debug is True
    assert c.extra["policy"] == 0xB0000
    with pytest.raises(AttestationError) as e:
        AttestationPolicy().check(c)
    assert e.value.step == "debug"
    AttestationPolicy(allow_debug=True).check(c)


def test_claims_type() -> None:
    assert isinstance(verify_snp(REPORT, VCEK, NOW), Claims)
