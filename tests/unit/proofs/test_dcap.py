"""Intel TDX via dcap-qvl: the real quote and its pinned collateral report exactly the facts in the
fixtures README at the pinned time; a flipped bit, a tampered certificate or collateral signature, a
time outside the window and garbage fail at the named step with dcap-qvl's message; a debug TD is
refused by the default policy."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from haca.proofs.receipt import EvidenceError
from haca.proofs.tee.claims import AttestationError, AttestationPolicy, Claims
from haca.proofs.tee.dcap import _step, verify_dcap

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "tee" / "tdx"
QUOTE = (FIX / "tdx_quote").read_bytes()
COLLATERAL = (FIX / "tdx_quote_collateral.json").read_text()
NOW = 1751328000  # 2025-07-01T00:00:00Z, the README's pinned time
FIRST_OK = 1750329147  # the QE identity issueDate
LAST_OK = 1752919234  # 1 s before the PCK CRL nextUpdate

REPORT_DATA_OFFSET = 568  # 48-byte header + 520 into TDREPORT 1.0
TD_ATTRIBUTES_OFFSET = 168  # 48 + 120

MR_TD = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
RTMR0 = "44c0197b39157fdd7a4dcc44767f9d6b0bb3977c7a8e347b8492f827fe9d9e5c48aca29b220b80b6a540cf994b9bc9c0"
RTMR1 = "0084452c01668329d4bc06acdf58a7205c26743304509973949e5619bf81a6a7aea8c323c173019b3093d54e579e9378"
RTMR2 = "d833feef2cd945148aa38ead2c53e9b7f138190aaaebfc551dccd829fc207aa3ba80b70870d7330733642e01d48c3132"
MR_SEAM = "5b38e33a6487958b72c3c12a938eaa5e3fd4510c51aeeab58c7d5ecee41d7c436489d6c8e4f92f160b7cad34207b00c1"
REPORT_DATA = (
    "9a9d48e7f6799642d3d1b34e1e5e1742d4bb02dd6ddd551862c1211d35c304f9"
    "eca3efdbb481601c163cf52493d6e44aed55d51ec39b7e518fadb92c2b523f20"
)
ZERO48 = bytes(48)
INTEL = "C=US,ST=CA,L=Santa Clara,O=Intel Corporation,CN="


def _flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


def _fails(quote: bytes | str, collateral: str | bytes = COLLATERAL, now: int = NOW) -> AttestationError:
    with pytest.raises(AttestationError) as info:
        verify_dcap(quote, collateral, now)
    return info.value


@pytest.fixture(scope="module")
def claims() -> Claims:
    return verify_dcap(QUOTE, COLLATERAL, NOW)


def test_fixture_reports_the_readme_facts(claims: Claims) -> None:
    assert len(QUOTE) == 5006
    assert claims.format == "tdx"
    assert claims.tcb_status == "UpToDate"
    assert claims.advisory_ids == ()
    assert dict(claims.measurements) == {
        "mr_td": bytes.fromhex(MR_TD),
        "rtmr0": bytes.fromhex(RTMR0),
        "rtmr1": bytes.fromhex(RTMR1),
        "rtmr2": bytes.fromhex(RTMR2),
        "rtmr3": ZERO48,
        "mr_seam": bytes.fromhex(MR_SEAM),
        "mr_config_id": ZERO48,
        "mr_owner": ZERO48,
        "mr_owner_config": ZERO48,
    }
    assert claims.report_data == bytes.fromhex(REPORT_DATA)
    assert len(claims.report_data) == 64
    assert claims.report_data == QUOTE[REPORT_DATA_OFFSET : REPORT_DATA_OFFSET + 64]
    assert claims.debug is False
    assert claims.time == 0
    assert claims.public_key == b""
    assert claims.dev is False
    assert claims.signer_chain == (
        INTEL + "Intel SGX PCK Certificate",
        INTEL + "Intel SGX PCK Platform CA",
        INTEL + "Intel SGX Root CA",
    )
    assert dict(claims.extra) == {
        "fmspc": "B0C06F000000",
        "pck_ca": "platform",
        "quote_version": 4,
        "qe_svn": 0,
        "pce_svn": 0,
        "ppid": bytes.fromhex("811dca2a26b952e85bb6448b097ba4fd"),
        "qe_status": "UpToDate",
        "platform_status": "UpToDate",
        "tcb_date": "2024-03-13T00:00:00Z",
        "tcb_date_unix": 1710288000,
        "tcb_eval_data_number": 17,
        "qe_tcb_date": "2024-03-13T00:00:00Z",
        "td_attributes": bytes.fromhex("0000001000000000"),
        "xfam": bytes.fromhex("e702060000000000"),
        "tee_tcb_svn": bytes.fromhex("06010300000000000000000000000000"),
        "mr_signer_seam": ZERO48,
        "seam_attributes": bytes(8),
    }
    # SEPT_VE_DISABLE (bit 28) set, DEBUG (byte 0, bit 0) clear
    assert int.from_bytes(claims.extra["td_attributes"], "little") == 1 << 28
    AttestationPolicy().check(claims)


def test_claims_json_is_hex(claims: Claims) -> None:
    out = claims.to_json()
    assert out["format"] == "tdx"
    assert out["measurements"]["mr_td"] == MR_TD
    assert out["measurements"]["rtmr3"] == "00" * 48
    assert out["report_data"] == REPORT_DATA
    assert out["extra"]["xfam"] == "e702060000000000"
    assert out["extra"]["tee_tcb_svn"] == "06010300000000000000000000000000"
    assert out["extra"]["fmspc"] == "B0C06F000000"
    assert out["extra"]["tcb_eval_data_number"] == 17
    json.dumps(out)


def test_hex_text_verifies_the_same(claims: Claims) -> None:
    assert verify_dcap(QUOTE.hex(), COLLATERAL, NOW) == claims
    assert verify_dcap(QUOTE.hex().upper() + "\n", COLLATERAL, NOW) == claims
    assert verify_dcap("0x" + QUOTE.hex(), COLLATERAL, NOW) == claims
    assert verify_dcap(QUOTE.hex().encode() + b"\n", COLLATERAL, NOW) == claims
    assert verify_dcap(QUOTE, COLLATERAL.encode(), NOW) == claims


@pytest.mark.parametrize("now", [FIRST_OK, LAST_OK])
def test_window_edges_verify(now: int, claims: Claims) -> None:
    assert verify_dcap(QUOTE, COLLATERAL, now) == claims


def test_flipped_report_data_bit_fails_signature() -> None:
    err = _fails(_flip(QUOTE, REPORT_DATA_OFFSET))
    assert isinstance(err, EvidenceError)
    assert err.step == "signature"
    assert str(err) == "signature: Verification failed: ISV enclave report signature is invalid"


@pytest.mark.parametrize(
    ("now", "step", "message"),
    [
        (1747872000, "expired", "Verification failed: TCBInfo issue date is in the future"),
        (FIRST_OK - 1, "expired", "Verification failed: QE Identity issue date is in the future"),
        (
            LAST_OK + 1,
            "expired",
            "Verification failed: Failed to verify certificate chain Caused by: "
            "CrlExpired { time: UnixTime(1752919235), next_update: UnixTime(1752919235) }",
        ),
        (1756512000, "expired", "Verification failed: TCBInfo expired"),
        (
            1775215318,  # past the root CA CRL nextUpdate (2026-04-03T11:21:57Z), as is the wall clock
            "expired",
            "Verification failed: CrlExpired { time: UnixTime(1775215318), next_update: UnixTime(1775215317) }",
        ),
    ],
)
def test_times_outside_the_window_fail(now: int, step: str, message: str) -> None:
    err = _fails(QUOTE, now=now)
    assert err.step == step
    assert str(err) == f"{step}: {message}"


def test_debug_td_is_refused_by_the_default_policy(claims: Claims) -> None:
    debug = replace(claims, debug=True)
    with pytest.raises(AttestationError) as info:
        AttestationPolicy().check(debug)
    assert info.value.step == "debug"
    assert str(info.value) == "debug: tdx evidence is from a debug enclave"
    AttestationPolicy(allow_debug=True).check(debug)


def test_setting_the_td_debug_bit_breaks_the_signature() -> None:
    # The TD report is signed, so a quote cannot be turned into a debug TD's: the flipped DEBUG bit is
    # caught by the quote signature (dcap-qvl checks it before it would refuse a debug TD itself).
    assert QUOTE[TD_ATTRIBUTES_OFFSET] & 0x01 == 0
    err = _fails(_flip(QUOTE, TD_ATTRIBUTES_OFFSET))
    assert err.step == "signature"
    assert str(err) == "signature: Verification failed: ISV enclave report signature is invalid"


def test_tampered_pck_certificate_fails_chain() -> None:
    at = QUOTE.index(b"-----BEGIN CERTIFICATE-----") + 27 + 200  # inside the PCK leaf's base64
    quote = bytearray(QUOTE)
    quote[at] = ord("A") if quote[at] != ord("A") else ord("B")
    err = _fails(bytes(quote))
    assert err.step == "chain"
    assert str(err) == "chain: Verification failed: Failed to verify certificate chain Caused by: UnknownIssuer"


@pytest.mark.parametrize(
    ("field", "what"), [("tcb_info_signature", "tcb_info"), ("qe_identity_signature", "qe_identity")]
)
def test_tampered_collateral_signature_fails_signature(field: str, what: str) -> None:
    collateral = json.loads(COLLATERAL)
    sig = collateral[field]
    collateral[field] = ("0" if sig[0] != "0" else "1") + sig[1:]
    err = _fails(QUOTE, json.dumps(collateral))
    assert err.step == "signature"
    assert str(err) == f"signature: Verification failed: Signature is invalid for {what} in quote_collateral"


def test_tampered_qe_report_fails_signature() -> None:
    qe_report = 48 + 584 + 4 + 64 + 64 + 6  # body, signature length, signature, attestation key, cert header
    err = _fails(_flip(QUOTE, qe_report + 100))
    assert str(err) == "signature: Verification failed: Signature is invalid for qe_report in quote"
    err = _fails(_flip(QUOTE, 48 + 584 + 4 + 64 + 10))  # the attestation key the QE report binds
    assert str(err) == "signature: Verification failed: QE report hash mismatch"


@pytest.mark.parametrize(
    ("quote", "message"),
    [
        (
            b"garbage",
            "format: Verification failed: Failed to decode quote Caused by: Could not decode "
            "`Header::tee_type`: Not enough data to fill buffer",
        ),
        (
            b"",
            "format: Verification failed: Failed to decode quote Caused by: Could not decode "
            "`Header::version`: Not enough data to fill buffer",
        ),
        (QUOTE[:1000], "format: Verification failed: Failed to decode quote Caused by: Not enough data to fill buffer"),
        (
            bytes([9]) + QUOTE[1:],
            "format: Verification failed: Failed to decode quote Caused by: Unsupported quote version",
        ),
        (
            "zz" + QUOTE.hex(),
            "format: the quote is neither a raw DCAP quote nor hex text "
            "(non-hexadecimal number found in fromhex() arg at position 0)",
        ),
    ],
)
def test_garbage_quote_fails_format(quote: bytes | str, message: str) -> None:
    err = _fails(quote)
    assert err.step == "format"
    assert str(err) == message


@pytest.mark.parametrize(
    ("collateral", "message"),
    [
        (
            "{}",
            "format: the collateral does not load: Failed to parse JSON: missing field `pck_crl_issuer_chain` "
            "at line 1 column 2",
        ),
        ("not json", "format: the collateral does not load: Failed to parse JSON: expected ident at line 1 column 2"),
        (
            b"\xff",
            "format: the collateral is not UTF-8 JSON "
            "('utf-8' codec can't decode byte 0xff in position 0: invalid start byte)",
        ),
    ],
)
def test_garbage_collateral_fails_format(collateral: str | bytes, message: str) -> None:
    err = _fails(QUOTE, collateral)
    assert err.step == "format"
    assert str(err) == message


def test_now_must_be_unix_seconds() -> None:
    assert str(_fails(QUOTE, now=True)) == "format: now is unix seconds (an int), not bool"
    assert str(_fails(QUOTE, now=1751328000.0)) == "format: now is unix seconds (an int), not float"  # type: ignore[arg-type]
    assert str(_fails(QUOTE, now=-1)) == "expired: now (-1) is before the unix epoch"


@pytest.mark.parametrize(
    ("message", "step"),
    [
        ("Verification failed: ISV enclave report signature is invalid", "signature"),
        ("Verification failed: TCBInfo issue date is in the future", "expired"),
        ("Verification failed: TCBInfo expired", "expired"),
        ("Verification failed: Failed to verify certificate chain Caused by: CrlExpired { … }", "expired"),
        ("Verification failed: Failed to verify certificate chain Caused by: CertExpired { … }", "expired"),
        ("Verification failed: Failed to verify certificate chain Caused by: UnknownIssuer", "chain"),
        ("Verification failed: Failed to verify certificate chain Caused by: CertRevoked", "chain"),
        ("Verification failed: Failed to decode quote Caused by: Invalid TEE type", "format"),
        ("Verification failed: Unsupported DCAP attestation key type", "format"),
        ("Verification failed: Debug mode is enabled", "debug"),
        ("Verification failed: TCB status is invalid: Revoked", "tcb_status"),
        ("Verification failed: No matching TCB level found", "dcap"),
        ("Verification failed: Fmspc mismatch", "dcap"),
    ],
)
def test_step_from_dcap_qvl_message(message: str, step: str) -> None:
    assert _step(message) == step
