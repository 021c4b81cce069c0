"""Intel DCAP quotes (TDX, TEE type 0x81, and SGX, TEE type 0), verified with dcap-qvl against pinned
collateral.

A quote is the raw DCAP quote (raw bytes, or its hex as text); the collateral is the JSON object that
``dcap_qvl.QuoteCollateralV3.from_json`` loads (PCK CRL, root CA CRL, TCB info, QE identity, their
signatures and issuer chains). ``now`` is unix seconds and is the only clock: dcap-qvl checks every
certificate, CRL, TCB info and QE identity against it, never against the wall clock.

What dcap-qvl checks (``dcap_qvl.verify``, the authoritative call): the root CA against its CRL, the TCB
info and QE identity signatures and validity, the PCK chain embedded in the quote up to Intel's SGX
Root CA (which dcap-qvl ships), the QE report signature and its binding of the attestation key, the QE
identity policy, the quote (ISV / TD report) signature, the platform's TCB level, and the report
attributes: dcap-qvl 0.7.0 itself refuses debug enclaves and TDs ("Debug mode is enabled"), so a quote
that verifies here always has ``debug=False``; the flag is still read from the report.

Any dcap-qvl failure becomes an ``AttestationError`` whose step is read from dcap-qvl's message (kept
in the text): ``expired`` (an issue date in the future, an expired TCB info / QE identity /
certificate, ``CrlExpired``), ``format`` (a quote or collateral that does not parse, an unsupported
version or TEE type), ``debug``, ``chain`` (the certificate chain), ``signature`` (a report, quote or
collateral signature that does not verify, or a QE report that does not bind the attestation key),
``tcb_status`` (a revoked TCB), else ``dcap``.

The TCB level facts (its date and the TCB evaluation data number) come from dcap-qvl's claims API
(``QuoteVerifier().verify_with_policy`` with ``QuotePolicy.claims_only``), run only after the
authoritative call has accepted the quote; where it reports nothing they are left out of ``extra``.

DCAP quotes carry no timestamp, so ``Claims.time`` is 0.
"""

from __future__ import annotations

import contextlib
import json
import string
from typing import Any

import dcap_qvl
from cryptography import x509

from haca.proofs.tee.claims import AttestationError, Claims

TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081
SGX_QUOTE_BODY_OFFSET = 48  # a v3 SGX quote: 48-byte header, then the 384-byte enclave report
SGX_ATTRIBUTES_DEBUG = 0x02  # SGX ATTRIBUTES.FLAGS bit 1
TD_ATTRIBUTES_DEBUG = 0x01  # TDX TD_ATTRIBUTES byte 0 (TUD) bit 0

TDX_MEASUREMENTS: tuple[tuple[str, str], ...] = (
    ("mr_td", "mr_td"),
    ("rtmr0", "rt_mr0"),
    ("rtmr1", "rt_mr1"),
    ("rtmr2", "rt_mr2"),
    ("rtmr3", "rt_mr3"),
    ("mr_seam", "mr_seam"),
    ("mr_config_id", "mr_config_id"),
    ("mr_owner", "mr_owner"),
    ("mr_owner_config", "mr_owner_config"),
)
_TDX_EXTRA = ("td_attributes", "xfam", "tee_tcb_svn", "mr_signer_seam", "seam_attributes")
_TD15_EXTRA = ("tee_tcb_svn2", "mr_service_td")

_HEX_DIGITS = frozenset(string.hexdigits.encode() + string.whitespace.encode())

# (step, lower-case fragments of dcap-qvl's message), first match wins: an expired CRL is reported as
# "Failed to verify certificate chain … CrlExpired", so "expired" is tried before "chain".
_STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "expired",
        (
            "in the future",
            "expired",
            "notvalidyet",
            "not valid yet",
            "crlexpired",
            "certexpired",
        ),
    ),
    (
        "format",
        (
            "failed to decode",
            "failed to parse json",
            "not enough data",
            "unsupported dcap",
            "unsupported tee type",
            "unsupported quote version",
            "unsupported body type",
            "invalid body size",
            "must have version",
            "unknown qe vendor",
        ),
    ),
    ("debug", ("debug mode is enabled",)),
    ("chain", ("certificate chain", "unknownissuer", "certrevoked", "root ca")),
    ("signature", ("signature is invalid", "invalid signature", "signature", "qe report hash mismatch")),
    ("tcb_status", ("tcb status is invalid",)),
)


def _step(message: str) -> str:
    low = message.lower()
    for step, fragments in _STEPS:
        if any(f in low for f in fragments):
            return step
    return "dcap"


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _fail(exc: Exception, what: str = "") -> AttestationError:
    message = _one_line(str(exc)) or type(exc).__name__
    return AttestationError(_step(message), f"{what}{message}")


def _quote_bytes(quote: bytes | bytearray | memoryview | str) -> bytes:
    """The raw quote from raw bytes or from its hex text (a raw DCAP quote begins with its version as
    a little-endian u16, 3..5, so it is never mistaken for hex)."""
    if isinstance(quote, str):
        text = quote.strip()
        if text[:2].lower() == "0x":
            text = text[2:]
    else:
        raw = bytes(quote)
        digits = raw.strip()
        if digits[:2].lower() == b"0x":
            digits = digits[2:]
        if not digits or not set(digits) <= _HEX_DIGITS:
            return raw
        text = digits.decode("ascii")
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise AttestationError("format", f"the quote is neither a raw DCAP quote nor hex text ({exc})") from exc


def _collateral(collateral: str | bytes) -> Any:
    if isinstance(collateral, (bytes, bytearray, memoryview)):
        try:
            text = bytes(collateral).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AttestationError("format", f"the collateral is not UTF-8 JSON ({exc})") from exc
    elif isinstance(collateral, str):
        text = collateral
    else:
        raise AttestationError("format", f"the collateral is JSON text, not {type(collateral).__name__}")
    try:
        return dcap_qvl.QuoteCollateralV3.from_json(text)
    except Exception as exc:  # dcap-qvl raises ValueError; anything else is just as unusable
        raise AttestationError("format", f"the collateral does not load: {_one_line(str(exc))}") from exc


def _signer_chain(parsed: Any) -> tuple[str, ...]:
    """Subjects from the PCK leaf up to the root, as dcap-qvl verified them: the leaf and the PCK CA
    embedded in the quote, then the name the last of them was issued by (dcap-qvl anchors on the Intel
    SGX Root CA it ships; a root certificate embedded in the quote is not what it trusts, so its
    subject is not reported)."""
    try:
        pem = parsed.cert_chain_pem_bytes()
        if not pem:
            return ()
        certs = [c for c in x509.load_pem_x509_certificates(bytes(pem)) if c.subject != c.issuer]
    except Exception:  # the chain is informational here; dcap-qvl already decided on it
        return ()
    if not certs:
        return ()
    return (*(c.subject.rfc4514_string() for c in certs), certs[-1].issuer.rfc4514_string())


def _tcb_level(raw: bytes, collateral: Any, now: int) -> dict[str, Any]:
    """The matched TCB level's date and evaluation data number, from dcap-qvl's claims API."""
    try:
        claims = json.loads(
            dcap_qvl.QuoteVerifier()
            .verify_with_policy(raw, collateral, now, dcap_qvl.QuotePolicy.claims_only(now))
            .to_json()
        )
    except Exception:  # the authoritative verify() has accepted the quote; these facts are extra
        return {}
    out: dict[str, Any] = {}
    platform = claims.get("platform") or {}
    level = platform.get("tcb_level") or {}
    if isinstance(level.get("tcbDate"), str):
        out["tcb_date"] = level["tcbDate"]
    if isinstance(platform.get("tcb_date_tag"), int):
        out["tcb_date_unix"] = platform["tcb_date_tag"]
    tcb = claims.get("tcb") or {}
    if isinstance(tcb.get("eval_data_number"), int):
        out["tcb_eval_data_number"] = tcb["eval_data_number"]
    qe_level = (claims.get("qe") or {}).get("tcb_level") or {}
    if isinstance(qe_level.get("tcbDate"), str):
        out["qe_tcb_date"] = qe_level["tcbDate"]
    return out


def verify_dcap(quote: bytes | str, collateral: str | bytes, now: int) -> Claims:
    """Verify an Intel DCAP quote (TDX or SGX; raw bytes or hex text) against pinned collateral at
    `now` (unix seconds) with dcap-qvl, and report what it attests."""
    if isinstance(now, bool) or not isinstance(now, int):
        raise AttestationError("format", f"now is unix seconds (an int), not {type(now).__name__}")
    if now < 0:
        raise AttestationError("expired", f"now ({now}) is before the unix epoch")
    raw = _quote_bytes(quote)
    col = _collateral(collateral)
    try:
        report = dcap_qvl.verify(raw, col, now)
    except Exception as exc:  # dcap-qvl raises ValueError with its reason
        raise _fail(exc) from exc
    try:
        parsed = dcap_qvl.parse_quote(raw)
        header = parsed.header
        body = parsed.report
        tee_type = int(header.tee_type)
        fmspc = str(parsed.fmspc())
    except Exception as exc:  # verify() decoded it already; this would be a dcap-qvl inconsistency
        raise _fail(exc, "the verified quote does not parse: ") from exc

    extra: dict[str, Any] = {
        "fmspc": fmspc,
        "quote_version": int(header.version),
        "qe_svn": int(header.qe_svn),
        "pce_svn": int(header.pce_svn),
        "ppid": bytes(report.ppid),
    }
    with contextlib.suppress(Exception):  # informational: the PCK CA's name
        extra["pck_ca"] = str(parsed.ca())
    with contextlib.suppress(Exception):  # informational: status and advisories come from `report`
        verified = json.loads(report.to_json())
        extra["qe_status"] = str(verified["qe_status"]["status"])
        extra["platform_status"] = str(verified["platform_status"]["status"])
    extra.update(_tcb_level(raw, col, now))

    measurements: dict[str, bytes]
    if tee_type == TEE_TYPE_TDX:
        fmt = "tdx"
        measurements = {name: bytes(getattr(body, attr)) for name, attr in TDX_MEASUREMENTS}
        for name in _TDX_EXTRA:
            extra[name] = bytes(getattr(body, name))
        for name in _TD15_EXTRA:
            if hasattr(body, name):
                extra[name] = bytes(getattr(body, name))
        td_attributes = bytes(body.td_attributes)
        debug = bool(td_attributes[0] & TD_ATTRIBUTES_DEBUG)
    elif tee_type == TEE_TYPE_SGX:
        fmt = "sgx"
        measurements = {"mr_enclave": bytes(body.mr_enclave), "mr_signer": bytes(body.mr_signer)}
        attributes = bytes(body.attributes)
        enclave = raw[SGX_QUOTE_BODY_OFFSET : SGX_QUOTE_BODY_OFFSET + 384]
        if len(enclave) != 384 or enclave[64:96] != measurements["mr_enclave"]:
            raise AttestationError("format", "the SGX enclave report is not where a v3 quote has it")
        extra["isv_prod_id"] = int.from_bytes(enclave[256:258], "little")
        extra["isv_svn"] = int.from_bytes(enclave[258:260], "little")
        extra["attributes"] = attributes
        extra["cpu_svn"] = bytes(body.cpu_svn)
        extra["misc_select"] = int.from_bytes(enclave[16:20], "little")
        debug = bool(attributes[0] & SGX_ATTRIBUTES_DEBUG)
    else:  # verify() accepts only these two; kept for a future dcap-qvl
        raise AttestationError("format", f"unsupported TEE type 0x{tee_type:x} (TDX is 0x81, SGX 0)")

    report_data = bytes(body.report_data)
    if len(report_data) != 64:
        raise AttestationError("format", f"report data is 64 bytes, not {len(report_data)}")
    return Claims(
        format=fmt,
        measurements=measurements,
        report_data=report_data,
        debug=debug,
        tcb_status=str(report.status),
        advisory_ids=tuple(str(a) for a in report.advisory_ids),
        signer_chain=_signer_chain(parsed),
        time=0,
        extra=extra,
    )
