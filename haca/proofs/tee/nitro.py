"""AWS Nitro Enclaves attestation documents, verified against the pinned AWS Nitro root at ``now``.

A document is a COSE_Sign1 (RFC 9052) whose payload is a CBOR map (module_id, digest, timestamp, pcrs,
certificate, cabundle, public_key, user_data, nonce). It is accepted as the raw COSE bytes (CBOR tag 18
or untagged), as base64 text of them, or inside a framed file (as in the fixtures): there the untagged
``84 44`` array start is found and exactly one CBOR item is decoded from it; bytes around it are not
covered by the signature and are never read. What is checked, in order:

1. ``format``: a COSE_Sign1 array (protected bstr, unprotected map, payload bstr, signature bstr) whose
   protected header names ES384 (``{1: -35}``).
2. ``payload``: the payload is exactly one CBOR map with the fields and sizes AWS documents
   (digest ``SHA384``, 1..32 PCRs of 32/48/64 bytes, a leaf certificate and a non-empty cabundle, …).
3. ``expired``: the leaf and every intermediate are valid at ``now`` (unix seconds, never the wall clock).
4. ``chain``: leaf <- cabundle[n-1] <- … <- cabundle[1] <- the trusted root. ``cabundle[0]`` is the root
   as the enclave sent it and is dropped: the only anchor is the root the caller supplies, or the pinned
   ``roots/aws_nitro_root_g1.pem``. The path is built by cryptography's RFC 5280 verifier with WebPKI's CA
   policy; the Nitro leaf has no AuthorityKeyIdentifier, SubjectAltName or EKU, so those two extensions
   are allowed (not required) on the end entity.
5. ``signature``: ES384 (raw r||s, 96 bytes) over ``["Signature1", protected, b"", payload]`` with the
   leaf certificate's P-384 key.

Nitro has no TCB status, so ``tcb_status`` is ``"UpToDate"``. An enclave started in debug mode reports
all-zero PCRs, so ``debug`` is true when PCR0, PCR1 and PCR2 are all zero (or absent).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import io
import re
import warnings
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError

from haca.proofs.tee.claims import AttestationError, Claims, check_validity

COSE_SIGN1_TAG = 18
COSE_HEADER_ALG = 1
COSE_ALG_ES384 = -35
ES384_SIGNATURE_SIZE = 96
PINNED_ROOT = "aws_nitro_root_g1.pem"
_ARRAY_START = b"\x84\x44"  # an untagged CBOR array of 4 whose first item is a 4-byte bstr (the protected header)
_MAX_SCAN = 64  # `84 44` occurrences tried in a framed file
_MAX_INTERMEDIATES = 16
_PCR_SIZES = (32, 48, 64)
_URLSAFE_CHARS = re.compile(r"[-_]")
_DECODE_ERRORS = (cbor2.CBORError, ValueError, TypeError, EOFError, OverflowError, RecursionError)


# -- input -------------------------------------------------------------------------------------------------


def _decode_one(data: bytes, what: str, step: str = "format") -> tuple[Any, int]:
    """Exactly one CBOR item from the start of ``data``, and how many bytes it took."""
    fp = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(fp).decode()
    except _DECODE_ERRORS as e:
        raise AttestationError(step, f"{what} is not valid CBOR: {e}") from None
    return item, fp.tell()


def _as_cose_sign1(item: Any) -> list[Any] | None:
    if isinstance(item, cbor2.CBORTag):
        if item.tag != COSE_SIGN1_TAG:
            return None
        item = item.value
    if (
        isinstance(item, list)
        and len(item) == 4
        and isinstance(item[0], bytes)
        and isinstance(item[1], Mapping)
        and isinstance(item[2], bytes)
        and isinstance(item[3], bytes)
    ):
        return item
    return None


def _from_bytes(raw: bytes) -> list[Any] | None:
    """The COSE_Sign1 in ``raw``: at its start (tagged or untagged) or, in a framed file, at an ``84 44``."""
    if raw[:1] in (b"\xd2", b"\x84"):
        try:
            item, _ = _decode_one(raw, "the document")
        except AttestationError:
            item = None
        cose = _as_cose_sign1(item)
        if cose is not None:
            return cose
    start = 0
    for _ in range(_MAX_SCAN):
        at = raw.find(_ARRAY_START, start)
        if at < 0:
            break
        start = at + 1
        try:
            item, _ = _decode_one(raw[at:], "the framed document")
        except AttestationError:
            continue
        cose = _as_cose_sign1(item)
        if cose is not None:
            return cose
    return None


def _from_base64(text: str) -> bytes | None:
    """Standard or URL-safe base64 (whitespace and missing padding tolerated); None when it is neither."""
    compact = "".join(text.split())
    if not compact:
        return None
    padded = compact + "=" * (-len(compact) % 4)
    try:
        if _URLSAFE_CHARS.search(padded):
            padded = padded.replace("-", "+").replace("_", "/")
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None


def _parse_document(document: bytes | str) -> list[Any]:
    if isinstance(document, bytes | bytearray | memoryview):
        raw = bytes(document)
        cose = _from_bytes(raw)
        if cose is not None:
            return cose
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            text = ""
    elif isinstance(document, str):
        text = document
    else:
        raise AttestationError("format", f"a Nitro document is bytes or base64 text, not {type(document).__name__}")
    decoded = _from_base64(text) if text else None
    if decoded is not None:
        cose = _from_bytes(decoded)
        if cose is not None:
            return cose
    raise AttestationError(
        "format", "not a COSE_Sign1 (raw CBOR, tagged or untagged, base64 text of it, or a framed file)"
    )


# -- payload -----------------------------------------------------------------------------------------------


def _opt_bytes(payload: Mapping[Any, Any], name: str, low: int, high: int) -> bytes | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, bytes):
        raise AttestationError("payload", f"{name} is {type(value).__name__}, not bytes or null")
    if not low <= len(value) <= high:
        raise AttestationError("payload", f"{name} is {len(value)} bytes (allowed {low}..{high})")
    return value


def _check_payload(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, Mapping):
        raise AttestationError("payload", f"the payload is a CBOR {type(payload).__name__}, not a map")
    module_id = payload.get("module_id")
    if not isinstance(module_id, str) or not module_id:
        raise AttestationError("payload", "module_id is missing or not a non-empty text string")
    digest = payload.get("digest")
    if digest != "SHA384":
        raise AttestationError("payload", f"digest is {digest!r}, not 'SHA384'")
    timestamp = payload.get("timestamp")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or timestamp <= 0:
        raise AttestationError("payload", f"timestamp {timestamp!r} is not a positive integer (milliseconds)")
    pcrs = payload.get("pcrs")
    if not isinstance(pcrs, Mapping) or not 1 <= len(pcrs) <= 32:
        raise AttestationError("payload", "pcrs is missing or not a map of 1..32 entries")
    for index, value in pcrs.items():
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 32:
            raise AttestationError("payload", f"PCR index {index!r} is not an integer in 0..31")
        if not isinstance(value, bytes) or len(value) not in _PCR_SIZES:
            raise AttestationError("payload", f"PCR{index} is not a byte string of {'/'.join(map(str, _PCR_SIZES))}")
    certificate = payload.get("certificate")
    if not isinstance(certificate, bytes) or not 1 <= len(certificate) <= 1024:
        raise AttestationError("payload", "certificate is missing or not a DER byte string of 1..1024 bytes")
    cabundle = payload.get("cabundle")
    if (
        not isinstance(cabundle, list)
        or not cabundle
        or not all(isinstance(c, bytes) and 1 <= len(c) <= 1024 for c in cabundle)
    ):
        raise AttestationError("payload", "cabundle is missing or not a non-empty array of DER byte strings")
    if len(cabundle) - 1 > _MAX_INTERMEDIATES:
        raise AttestationError(
            "payload", f"cabundle holds {len(cabundle)} certificates (at most {_MAX_INTERMEDIATES + 1})"
        )
    return {
        "module_id": module_id,
        "digest": digest,
        "timestamp": timestamp,
        "pcrs": {int(i): bytes(v) for i, v in sorted(pcrs.items())},
        "certificate": certificate,
        "cabundle": list(cabundle),
        "public_key": _opt_bytes(payload, "public_key", 1, 1024),
        "user_data": _opt_bytes(payload, "user_data", 0, 512),
        "nonce": _opt_bytes(payload, "nonce", 0, 512),
    }


# -- chain -------------------------------------------------------------------------------------------------


def _load_roots(pem: bytes, what: str) -> list[x509.Certificate]:
    try:
        roots = x509.load_pem_x509_certificates(bytes(pem))
    except (ValueError, TypeError) as e:
        raise AttestationError("chain", f"the {what} does not parse: {e}") from None
    if not roots:
        raise AttestationError("chain", f"the {what} holds no certificate")
    return roots


@lru_cache(maxsize=1)
def pinned_root() -> tuple[x509.Certificate, ...]:
    """The AWS Nitro Enclaves root (CN=aws.nitro-enclaves, G1) shipped in the package."""
    pem = resources.files("haca.proofs.tee").joinpath("roots", PINNED_ROOT).read_bytes()
    return tuple(_load_roots(pem, f"pinned root {PINNED_ROOT}"))


def _load_der(der: bytes, what: str) -> x509.Certificate:
    try:
        with warnings.catch_warnings():
            # A serial number that is not positive only warns in cryptography 50 (it will raise ValueError later).
            warnings.simplefilter("ignore")
            return x509.load_der_x509_certificate(der)
    except (ValueError, TypeError, x509.InvalidVersion) as e:
        raise AttestationError("chain", f"the {what} certificate does not parse: {e}") from None


def _verify_chain(
    leaf: x509.Certificate, intermediates: list[x509.Certificate], roots: list[x509.Certificate], now: int
) -> list[x509.Certificate]:
    """The chain leaf..root that cryptography's path builder finds at ``now``."""
    ee_policy = (
        ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.AuthorityKeyIdentifier, Criticality.AGNOSTIC, None)
        .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    )
    verifier = (
        PolicyBuilder()
        .store(Store(roots))
        .time(dt.datetime.fromtimestamp(now, tz=dt.UTC))
        .max_chain_depth(max(len(intermediates), 1))
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy)
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(leaf, intermediates)
    except VerificationError as e:
        if "not valid at validation time" in str(e):
            raise AttestationError("expired", f"a certificate of the chain is not valid at {now}: {e}") from None
        raise AttestationError("chain", f"the certificate chain does not verify to the trusted root: {e}") from None
    except (ValueError, TypeError) as e:  # e.g. a certificate whose key does not load
        raise AttestationError("chain", f"the certificate chain does not verify: {e}") from None
    return list(verified.chain)


# -- signature ---------------------------------------------------------------------------------------------


def _check_signature(cose: list[Any], leaf: x509.Certificate) -> None:
    protected, _, payload, signature = cose
    if len(signature) != ES384_SIGNATURE_SIZE:
        raise AttestationError("signature", f"an ES384 signature is {ES384_SIGNATURE_SIZE} bytes, not {len(signature)}")
    try:
        key = leaf.public_key()
    except (ValueError, TypeError) as e:
        raise AttestationError("signature", f"the leaf certificate's key does not load: {e}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise AttestationError("signature", "the leaf certificate's key is not ECDSA P-384")
    half = ES384_SIGNATURE_SIZE // 2
    r, s = int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
    try:
        key.verify(encode_dss_signature(r, s), to_be_signed, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        raise AttestationError(
            "signature", "the COSE_Sign1 ES384 signature does not verify with the leaf key"
        ) from None


# -- the verifier ------------------------------------------------------------------------------------------


def verify_nitro(document: bytes | str, now: int, root_pem: bytes | None = None) -> Claims:
    """Verify a Nitro attestation document at ``now`` (unix seconds) against ``root_pem`` or the pinned root.

    Raises `AttestationError` with step ``format``, ``payload``, ``expired``, ``chain`` or ``signature``.
    """
    if not isinstance(now, int) or isinstance(now, bool):
        raise TypeError(f"now is unix seconds (int), not {type(now).__name__}")
    cose = _parse_document(document)
    protected_raw, unprotected, payload_raw, _ = cose
    protected, used = _decode_one(protected_raw, "the protected header") if protected_raw else ({}, 0)
    if not isinstance(protected, Mapping) or used != len(protected_raw):
        raise AttestationError("format", "the protected header is not exactly one CBOR map")
    alg = protected.get(COSE_HEADER_ALG)
    if alg != COSE_ALG_ES384:
        raise AttestationError("format", f"the protected header's alg is {alg!r}, not ES384 ({COSE_ALG_ES384})")
    if unprotected.get(COSE_HEADER_ALG, alg) != alg:
        raise AttestationError("format", "the unprotected header names another alg")

    payload_item, used = _decode_one(payload_raw, "the payload", "payload")
    if used != len(payload_raw):
        raise AttestationError("payload", f"the payload has {len(payload_raw) - used} bytes after its CBOR map")
    fields = _check_payload(payload_item)

    roots = list(pinned_root()) if root_pem is None else _load_roots(root_pem, "supplied root")
    leaf = _load_der(fields["certificate"], "leaf")
    intermediates = [_load_der(der, f"cabundle[{i}]") for i, der in enumerate(fields["cabundle"]) if i > 0]
    check_validity(leaf, "leaf certificate", now)
    for i, cert in enumerate(intermediates, start=1):
        check_validity(cert, f"cabundle[{i}] certificate", now)
    chain = _verify_chain(leaf, intermediates, roots, now)

    _check_signature(cose, leaf)

    pcrs: dict[int, bytes] = fields["pcrs"]
    debug = not any(any(pcrs.get(i, b"")) for i in range(3))
    user_data: bytes | None = fields["user_data"]
    public_key: bytes | None = fields["public_key"]
    return Claims(
        format="nitro",
        measurements={f"pcr{i}": v for i, v in pcrs.items()},
        report_data=user_data or b"",
        debug=debug,
        tcb_status="UpToDate",
        signer_chain=tuple(c.subject.rfc4514_string() for c in chain),
        time=fields["timestamp"] // 1000,
        public_key=public_key or b"",
        extra={
            "module_id": fields["module_id"],
            "digest": fields["digest"],
            "timestamp_ms": fields["timestamp"],
            "nonce": fields["nonce"],
            "user_data_present": user_data is not None,
            "public_key_present": public_key is not None,
        },
    )
