"""The dev attester's evidence: a software enclave for local networks, DEV-MODE, NOT FOR PRODUCTION.

Nothing here is hardware: the "platform key" is a P-256 key in a file, certified by a DEV root that
each devnet makes for itself. What it proves is only that the holder of a platform key issued by
*this* devnet's root vouched for a measurement and a report data; it keeps the TEE code path (key
binding, measurement approval, heartbeats) honest on machines without an enclave. Every document and
every claim says so: the payload carries `DEV_LABEL` and `Claims.dev` is true.

A document is CBOR ``[payload bstr, signature bstr]``; the payload is exactly one CBOR map::

    {"format": "haca-dev/1", "label": DEV_LABEL, "measurement": 32 bytes, "report_data": 64 bytes,
     "debug": bool, "time": unix seconds, "certificate": leaf DER, "cabundle": [DER, ...],
     "tcb_status": text (optional; absent: "UpToDate")}

The TCB status is what the DEV platform reports of itself (the file `TCB_STATUS_FILE` in its
directory, one of `TCB_STATUSES`), so a devnet can play a platform that falls behind the chain's
minimum TCB and is patched again. The signature is ECDSA P-256/SHA-256 (DER) over the payload
bytes by the leaf certificate's key.
`verify_dev` checks, in order: ``format`` (the CBOR shape, every field's type and size, the label),
``chain`` (leaf <- cabundle... <- the supplied root; a root copy in the cabundle is never an anchor),
``expired`` (every certificate, the supplied root included, valid at ``now``) and ``signature``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from haca.proofs.tee.claims import (
    CERTIFICATE_ERRORS,
    TCB_STATUSES,
    AttestationError,
    Claims,
    check_validity,
    names_parse,
)

DEV_LABEL = "DEV-MODE, NOT FOR PRODUCTION"
DEV_FORMAT = "haca-dev/1"
ROOT_COMMON_NAME = "HACA DEV ROOT - NOT FOR PRODUCTION"
PLATFORM_COMMON_NAME = "HACA DEV PLATFORM"
ROOT_KEY_FILE, ROOT_CERT_FILE = "dev_root.key", "dev_root.pem"
PLATFORM_KEY_FILE, PLATFORM_CERT_FILE = "platform.key", "platform.pem"
TCB_STATUS_FILE = "tcb_status"  # in the platform directory; absent: "UpToDate"
MEASUREMENT_SIZE = 32
REPORT_DATA_SIZE = 64
VALIDITY = dt.timedelta(days=3652)  # ~10 years: a devnet never has to renew
BACKDATE = dt.timedelta(hours=1)  # tolerate clocks a little behind the issuer's
MAX_CERT_SIZE = 4096
MAX_CABUNDLE = 16
MAX_DOCUMENT_SIZE = 64 * 1024


_PAYLOAD_FIELDS = frozenset(
    ("format", "label", "measurement", "report_data", "debug", "time", "certificate", "cabundle")
)
_OPTIONAL_FIELDS = frozenset(("tcb_status",))
_DECODE_ERRORS = (cbor2.CBORError, ValueError, TypeError, EOFError, OverflowError, RecursionError)


# -- root and platform files ---------------------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    """Create `path` readable by its owner only; the mode is set at creation, never widened afterwards."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fp:
        fp.write(data)


def _load_or_make_key(path: Path) -> ec.EllipticCurvePrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"{path} is not a P-256 private key")
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write_private(path, pem)
    return key


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "HACA devnet"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_dev_root(directory: Path) -> bytes:
    """This devnet's DEV root: ``dev_root.key`` (P-256, 0600) and the self-signed ``dev_root.pem``.

    Returns the root certificate PEM; files already there are reused (the key must match the cert).
    """
    directory.mkdir(parents=True, exist_ok=True)
    key = _load_or_make_key(directory / ROOT_KEY_FILE)
    cert_path = directory / ROOT_CERT_FILE
    if cert_path.exists():
        pem = cert_path.read_bytes()
        cert = x509.load_pem_x509_certificate(pem)
        if cert.public_key() != key.public_key():
            raise ValueError(f"{cert_path} does not certify the key in {directory / ROOT_KEY_FILE}")
        return pem
    now = dt.datetime.now(dt.UTC)
    name = _name(ROOT_COMMON_NAME)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = _pem(cert)
    cert_path.write_bytes(pem)
    return pem


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _signing_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def issue_dev_platform(root_directory: Path, directory: Path) -> None:
    """One dev enclave's "hardware key": ``platform.key`` (P-256, 0600) and ``platform.pem`` (its
    certificate signed by the DEV root in `root_directory`, then the root). Files already there are
    reused when the root did issue them; a platform of another root is an error, not silently replaced.
    """
    root_key_path, root_cert_path = root_directory / ROOT_KEY_FILE, root_directory / ROOT_CERT_FILE
    if not (root_key_path.exists() and root_cert_path.exists()):
        raise FileNotFoundError(f"no DEV root in {root_directory} (make it first: make_dev_root / init-root)")
    root_pem = root_cert_path.read_bytes()
    root_cert = x509.load_pem_x509_certificate(root_pem)
    directory.mkdir(parents=True, exist_ok=True)
    key = _load_or_make_key(directory / PLATFORM_KEY_FILE)
    cert_path = directory / PLATFORM_CERT_FILE
    if cert_path.exists():
        leaf = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        try:
            leaf.verify_directly_issued_by(root_cert)
        except (ValueError, TypeError, InvalidSignature):
            raise ValueError(f"{cert_path} was not issued by the DEV root in {root_directory}") from None
        if leaf.public_key() != key.public_key():
            raise ValueError(f"{cert_path} does not certify the key in {directory / PLATFORM_KEY_FILE}")
        return
    loaded_root_key = serialization.load_pem_private_key(root_key_path.read_bytes(), password=None)
    if not isinstance(loaded_root_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{root_key_path} is not an EC private key")
    root_key: ec.EllipticCurvePrivateKey = loaded_root_key
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(PLATFORM_COMMON_NAME))
        .issuer_name(root_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - BACKDATE, root_cert.not_valid_before_utc))
        .not_valid_after(min(now + VALIDITY, root_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_signing_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    cert_path.write_bytes(_pem(leaf) + root_pem)


# -- measurement and evidence --------------------------------------------------------------------------------


def measure_sources(sources: Mapping[str, bytes]) -> bytes:
    """SHA-256 over (name, bytes) pairs sorted by name, each length-framed so no two sets collide."""
    h = hashlib.sha256(b"HACA-DEV-MEASUREMENT/v1")
    for name in sorted(sources):
        for part in (name.encode(), sources[name]):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
    return h.digest()


def load_platform(
    platform_key_pem: bytes, platform_chain_pem: bytes
) -> tuple[ec.EllipticCurvePrivateKey, list[x509.Certificate]]:
    """A dev platform's P-256 key and its certificate chain (leaf first), checked to belong together:
    what signs DEV evidence, the CPU document and the DEV GPU report alike."""
    key = serialization.load_pem_private_key(platform_key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("the platform key is not a P-256 private key")
    chain = x509.load_pem_x509_certificates(platform_chain_pem)
    if chain[0].public_key() != key.public_key():
        raise ValueError("the platform chain's first certificate does not certify the platform key")
    return key, chain


def make_dev_evidence(
    platform_key_pem: bytes,
    platform_chain_pem: bytes,
    measurement: bytes,
    report_data: bytes,
    time: int,
    debug: bool = False,
    tcb_status: str = "UpToDate",
) -> bytes:
    """A dev attestation document (see the module doc) signed by the platform key."""
    if tcb_status not in TCB_STATUSES:
        raise ValueError(f"a dev TCB status is one of {list(TCB_STATUSES)}, not {tcb_status!r}")
    if len(measurement) != MEASUREMENT_SIZE:
        raise ValueError(f"a dev measurement is {MEASUREMENT_SIZE} bytes, not {len(measurement)}")
    if len(report_data) != REPORT_DATA_SIZE:
        raise ValueError(f"dev report data is {REPORT_DATA_SIZE} bytes, not {len(report_data)}")
    key, chain = load_platform(platform_key_pem, platform_chain_pem)
    fields: dict[str, Any] = {"tcb_status": tcb_status} if tcb_status != "UpToDate" else {}
    payload = cbor2.dumps(
        {
            **fields,
            "format": DEV_FORMAT,
            "label": DEV_LABEL,
            "measurement": bytes(measurement),
            "report_data": bytes(report_data),
            "debug": bool(debug),
            "time": int(time),
            "certificate": chain[0].public_bytes(serialization.Encoding.DER),
            "cabundle": [c.public_bytes(serialization.Encoding.DER) for c in chain[1:]],
        }
    )
    signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    return cbor2.dumps([payload, signature])


# -- the verifier --------------------------------------------------------------------------------------------


def _decode_one(data: bytes, what: str) -> Any:
    """Exactly one CBOR item that is all of `data`."""
    fp = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(fp).decode()
    except _DECODE_ERRORS as e:
        raise AttestationError("format", f"{what} is not valid CBOR: {e}") from None
    if fp.tell() != len(data):
        raise AttestationError("format", f"{what} has {len(data) - fp.tell()} bytes after its CBOR item")
    return item


def _document_bytes(document: bytes | str) -> bytes:
    """The raw document: CBOR bytes as given, or decoded from base64 text (bytes or str)."""
    if isinstance(document, bytes | bytearray | memoryview):
        raw = bytes(document)
        if raw[:1] == b"\x82":  # a CBOR array of two: the raw form
            return raw
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            return raw
    elif isinstance(document, str):
        text = document
    else:
        raise AttestationError("format", f"a dev document is bytes or base64 text, not {type(document).__name__}")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise AttestationError("format", "a dev document is CBOR bytes or base64 text of them") from None


def _bytes_field(payload: Mapping[Any, Any], name: str, size: int) -> bytes:
    value = payload[name]
    if not isinstance(value, bytes) or len(value) != size:
        raise AttestationError("format", f"{name} is not a byte string of {size} bytes")
    return value


def _check_payload(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, Mapping):
        raise AttestationError("format", f"the payload is a CBOR {type(payload).__name__}, not a map")
    keys = set(payload)
    if not _PAYLOAD_FIELDS <= keys <= _PAYLOAD_FIELDS | _OPTIONAL_FIELDS:
        known = _PAYLOAD_FIELDS | _OPTIONAL_FIELDS
        missing, unknown = sorted(_PAYLOAD_FIELDS - keys), sorted(map(repr, keys - known))
        raise AttestationError("format", f"the payload's fields differ (missing {missing}, unknown {unknown})")
    if payload["format"] != DEV_FORMAT:
        raise AttestationError("format", f"format is {payload['format']!r}, not {DEV_FORMAT!r}")
    if payload["label"] != DEV_LABEL:
        raise AttestationError("format", f"label is {payload['label']!r}, not {DEV_LABEL!r}")
    debug, time = payload["debug"], payload["time"]
    if not isinstance(debug, bool):
        raise AttestationError("format", f"debug is {type(debug).__name__}, not a boolean")
    if not isinstance(time, int) or isinstance(time, bool) or time < 0:
        raise AttestationError("format", f"time {time!r} is not a non-negative integer (unix seconds)")
    certificate, cabundle = payload["certificate"], payload["cabundle"]
    if not isinstance(certificate, bytes) or not 1 <= len(certificate) <= MAX_CERT_SIZE:
        raise AttestationError("format", f"certificate is not a DER byte string of 1..{MAX_CERT_SIZE} bytes")
    if (
        not isinstance(cabundle, list)
        or len(cabundle) > MAX_CABUNDLE
        or not all(isinstance(c, bytes) and 1 <= len(c) <= MAX_CERT_SIZE for c in cabundle)
    ):
        raise AttestationError("format", f"cabundle is not an array of at most {MAX_CABUNDLE} DER byte strings")
    tcb_status = payload.get("tcb_status", "UpToDate")
    if tcb_status not in TCB_STATUSES:  # a known status only: a policy ranks it
        raise AttestationError("format", f"tcb_status is {tcb_status!r}, not one of {list(TCB_STATUSES)}")
    return {
        "tcb_status": tcb_status,
        "measurement": _bytes_field(payload, "measurement", MEASUREMENT_SIZE),
        "report_data": _bytes_field(payload, "report_data", REPORT_DATA_SIZE),
        "debug": debug,
        "time": time,
        "certificate": certificate,
        "cabundle": list(cabundle),
    }


def _load_der(der: bytes, what: str) -> x509.Certificate:
    try:
        return names_parse(x509.load_der_x509_certificate(der))
    except CERTIFICATE_ERRORS as e:
        raise AttestationError("chain", f"the {what} certificate does not parse: {e}") from None


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """`issuer` names and signed `cert` (name match and signature, nothing else)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (*CERTIFICATE_ERRORS, InvalidSignature):  # (an issuer key of an unknown type: UnsupportedAlgorithm)
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, *CERTIFICATE_ERRORS):  # (extensions are parsed when first read)
        return False


def _verify_chain(
    leaf: x509.Certificate, cabundle: list[x509.Certificate], root: x509.Certificate
) -> list[x509.Certificate]:
    """leaf <- cabundle[0] <- … <- root, where the walk stops at the first certificate the supplied root
    signed: a cabundle entry is only ever an intermediate, so a copy of the root there is ignored and a
    look-alike root (same name, other key) is an intermediate that never reaches the anchor."""
    chain, current = [leaf], leaf
    for i, candidate in enumerate([*cabundle, None]):
        if _issued_by(current, root):
            return [*chain, root]
        if candidate is None:
            break
        if not _is_ca(candidate) or not _issued_by(current, candidate):
            raise AttestationError("chain", f"cabundle[{i}] did not issue {current.subject.rfc4514_string()}")
        chain.append(candidate)
        current = candidate
    raise AttestationError("chain", "the certificate chain does not reach the supplied DEV root")


def verify_dev(document: bytes | str, now: int, root_pem: bytes) -> Claims:
    """Verify a dev attestation document at `now` (unix seconds) against this devnet's DEV root.

    Raises `AttestationError` with step ``format``, ``chain``, ``expired`` or ``signature``.
    """
    if not isinstance(now, int) or isinstance(now, bool):
        raise TypeError(f"now is unix seconds (int), not {type(now).__name__}")
    raw = _document_bytes(document)
    if len(raw) > MAX_DOCUMENT_SIZE:
        raise AttestationError("format", f"the document is {len(raw)} bytes (at most {MAX_DOCUMENT_SIZE})")
    outer = _decode_one(raw, "the document")
    if not (isinstance(outer, list) and len(outer) == 2 and all(isinstance(x, bytes) for x in outer)):
        raise AttestationError("format", "a dev document is a CBOR array [payload bstr, signature bstr]")
    payload_raw, signature = outer
    fields = _check_payload(_decode_one(payload_raw, "the payload"))

    try:
        roots = x509.load_pem_x509_certificates(bytes(root_pem))
    except (ValueError, TypeError) as e:
        raise AttestationError("chain", f"the supplied DEV root does not parse: {e}") from None
    if len(roots) != 1:
        raise AttestationError("chain", f"the supplied DEV root holds {len(roots)} certificates, not one")
    root = roots[0]
    leaf = _load_der(fields["certificate"], "leaf")
    cabundle = [_load_der(der, f"cabundle[{i}]") for i, der in enumerate(fields["cabundle"])]
    chain = _verify_chain(leaf, cabundle, root)

    check_validity(leaf, "leaf certificate", now)
    for i, cert in enumerate(chain[1:-1]):
        check_validity(cert, f"cabundle[{i}] certificate", now)
    check_validity(root, "DEV root certificate", now)

    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise AttestationError("signature", "the leaf certificate's key is not ECDSA P-256")
    try:
        key.verify(signature, payload_raw, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise AttestationError("signature", "the ECDSA P-256 signature does not verify with the leaf key") from None

    return Claims(
        format="dev",
        measurements={"measurement": fields["measurement"]},
        report_data=fields["report_data"],
        debug=fields["debug"],
        tcb_status=fields["tcb_status"],
        signer_chain=tuple(c.subject.rfc4514_string() for c in chain),
        time=fields["time"],
        extra={"label": DEV_LABEL},
        dev=True,
    )
