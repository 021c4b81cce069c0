"""AMD SEV-SNP attestation reports, verified against the chip's VCEK and AMD's pinned ASK/ARK chain.

A report is the firmware's 1184-byte `ATTESTATION_REPORT` (all integers little-endian), raw or as hex
text. What is checked, in order:

1. ``format``: the report's size and layout, signature algorithm 1 (ECDSA P-384 with SHA-384), a report
   signed by the VCEK (not a VLEK), and certificates that parse with the expected key types.
2. ``chain``: VCEK <- ASK <- ARK <- ARK (self-signed), each an RSASSA-PSS signature with SHA-384,
   MGF1-SHA-384 and a 48-byte salt, checked one by one. AMD's VCEKs have serial number 0 and no
   AuthorityKeyIdentifier, so a strict RFC 5280 path builder would refuse them; the issuer names and
   signatures are checked explicitly instead. The ARK must be the pinned one for the product line the
   VCEK's issuer names (``haca/proofs/tee/roots/amd_<line>_ask_ark.pem``, ASK then ARK), or the one in the
   ``chain_pem`` the caller supplies (tests, other product lines).
3. ``expired``: every certificate is valid at ``now`` (unix seconds, never the wall clock).
4. ``signature``: the report signature over bytes ``0x000..0x29F`` with the VCEK's P-384 key.

SEV-SNP has no TCB *status* (there is no signed TCB-info collateral as in Intel's DCAP): the VCEK is
issued for one reported TCB, so a report whose signature verifies with it is reported as
``tcb_status="UpToDate"``; the TCB values themselves are in ``extra`` for a policy that wants minimums.
The report carries no timestamp either, so ``Claims.time`` is 0.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from importlib import resources
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from haca.proofs.tee.claims import CERTIFICATE_ERRORS, AttestationError, Claims, check_validity, names_parse

REPORT_SIZE = 0x4A0  # 1184
SIGNED_END = 0x2A0  # the signature covers bytes 0x000..0x29F
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1
POLICY_DEBUG_BIT = 19
_PSS_SALT = 48

# (name, offset, size) of the byte fields; integers are read separately below.
_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("family_id", 0x10, 16),
    ("image_id", 0x20, 16),
    ("report_data", 0x50, 64),
    ("measurement", 0x90, 48),
    ("host_data", 0xC0, 32),
    ("id_key_digest", 0xE0, 48),
    ("author_key_digest", 0x110, 48),
    ("report_id", 0x140, 32),
    ("report_id_ma", 0x160, 32),
    ("chip_id", 0x1A0, 64),
)
_TCBS: tuple[tuple[str, int], ...] = (
    ("current_tcb", 0x38),
    ("reported_tcb", 0x180),
    ("committed_tcb", 0x1E0),
    ("launch_tcb", 0x1F0),
)


def _u32(b: bytes, off: int) -> int:
    return int.from_bytes(b[off : off + 4], "little")


def _u64(b: bytes, off: int) -> int:
    return int.from_bytes(b[off : off + 8], "little")


def decode_tcb(tcb: bytes) -> dict[str, int]:
    """A Milan/Genoa TCB_VERSION (8 bytes, little-endian): boot loader, TEE, (4 reserved), SNP, microcode."""
    if len(tcb) != 8:
        raise AttestationError("format", f"a TCB version is 8 bytes, not {len(tcb)}")
    return {"boot_loader": tcb[0], "tee": tcb[1], "snp": tcb[6], "microcode": tcb[7]}


def _report_bytes(report: bytes | str) -> bytes:
    if isinstance(report, bytes | bytearray | memoryview):
        raw = bytes(report)
        if len(raw) == REPORT_SIZE:
            return raw
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise AttestationError(
                "format", f"an SNP report is {REPORT_SIZE} bytes (or their hex), not {len(raw)} bytes"
            ) from None
    elif isinstance(report, str):
        text = report
    else:
        raise AttestationError("format", f"an SNP report is bytes or hex text, not {type(report).__name__}")
    text = "".join(text.split())
    if text[:2].lower() == "0x":
        text = text[2:]
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise AttestationError("format", "the SNP report is neither raw bytes nor hex text") from None
    if len(raw) != REPORT_SIZE:
        raise AttestationError("format", f"an SNP report is {REPORT_SIZE} bytes, not {len(raw)}")
    return raw


def _load_der(der: bytes, what: str) -> x509.Certificate:
    with warnings.catch_warnings():
        # Every AMD VCEK has serial number 0, which recent `cryptography` warns about.
        warnings.simplefilter("ignore")
        try:
            return names_parse(x509.load_der_x509_certificate(bytes(der)))
        except CERTIFICATE_ERRORS as e:
            raise AttestationError("format", f"the {what} certificate does not parse: {e}") from None


def _load_chain(pem: bytes, what: str) -> tuple[x509.Certificate, x509.Certificate]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            certs = [names_parse(c) for c in x509.load_pem_x509_certificates(bytes(pem))]
        except CERTIFICATE_ERRORS as e:
            raise AttestationError("format", f"the {what} does not parse: {e}") from None
    if len(certs) != 2:
        raise AttestationError("format", f"the {what} must hold two certificates (ASK then ARK), not {len(certs)}")
    return certs[0], certs[1]


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


@lru_cache(maxsize=1)
def pinned_chains() -> dict[str, tuple[x509.Certificate, x509.Certificate]]:
    """AMD's pinned ASK/ARK pairs shipped in the package, by product line (``"Milan"``, …)."""
    out: dict[str, tuple[x509.Certificate, x509.Certificate]] = {}
    roots = resources.files("haca.proofs.tee").joinpath("roots")
    for entry in sorted(roots.iterdir(), key=lambda e: e.name):
        if entry.name.startswith("amd_") and entry.name.endswith("_ask_ark.pem"):
            ask, ark = _load_chain(entry.read_bytes(), f"pinned chain {entry.name}")
            out[_product_line(ask, ark)] = (ask, ark)
    return out


def _product_line(ask: x509.Certificate, ark: x509.Certificate) -> str:
    ask_cn, ark_cn = _cn(ask.subject), _cn(ark.subject)
    if not ask_cn.startswith("SEV-") or ark_cn != "ARK-" + ask_cn[4:] or len(ask_cn) <= 4:
        raise AttestationError("chain", f"not an AMD ASK/ARK pair: ASK CN={ask_cn!r}, ARK CN={ark_cn!r}")
    return ask_cn[4:]


def _public_key(cert: x509.Certificate, what: str) -> CertificatePublicKeyTypes:
    try:
        return cert.public_key()
    except CERTIFICATE_ERRORS as e:  # e.g. a point off its curve, an unknown curve
        raise AttestationError("format", f"the {what} certificate's public key does not load: {e}") from None


def _check_pss(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    if cert.issuer != issuer.subject:
        raise AttestationError(
            "chain", f"the {what} is issued by {cert.issuer.rfc4514_string()}, not {issuer.subject.rfc4514_string()}"
        )
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS:
        raise AttestationError("chain", f"the {what} is not signed with RSASSA-PSS")
    key = _public_key(issuer, what + "'s issuer")
    if not isinstance(key, rsa.RSAPublicKey):
        raise AttestationError("chain", f"the {what}'s issuer key is not RSA")
    try:
        key.verify(
            cert.signature,
            cert.tbs_certificate_bytes,
            padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=_PSS_SALT),
            hashes.SHA384(),
        )
    except InvalidSignature:
        raise AttestationError("chain", f"the {what}'s signature does not verify") from None


def verify_snp(report: bytes | str, vcek_der: bytes, now: int, chain_pem: bytes | None = None) -> Claims:
    """Verify an SEV-SNP report (raw 1184 bytes or hex) with its VCEK (DER) at ``now`` (unix seconds).

    ``chain_pem`` (ASK then ARK) replaces the pinned AMD chain; without it the product line named by the
    VCEK's issuer (``SEV-Milan`` → Milan) selects the pinned one. Raises `AttestationError` with step
    ``format``, ``chain``, ``expired`` or ``signature``. ``tcb_status`` is always ``"UpToDate"``: SNP has
    no TCB status, only the TCB values (in ``extra``), which the VCEK is issued for.
    """
    raw = _report_bytes(report)
    version, guest_svn = _u32(raw, 0x00), _u32(raw, 0x04)
    policy, vmpl, sig_algo = _u64(raw, 0x08), _u32(raw, 0x30), _u32(raw, 0x34)
    platform_info, key_info = _u64(raw, 0x40), _u32(raw, 0x48)
    if version < 2:
        raise AttestationError("format", f"SNP report version {version} is not supported (2 or later)")
    if sig_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise AttestationError("format", f"signature_algo {sig_algo} is not 1 (ECDSA P-384 with SHA-384)")
    signing_key = (key_info >> 2) & 0b111
    if signing_key != 0:
        raise AttestationError("format", f"the report is signed by signing key {signing_key}, not the VCEK (0)")

    vcek = _load_der(vcek_der, "VCEK")
    if chain_pem is not None:
        ask, ark = _load_chain(chain_pem, "ASK/ARK chain")
        product = _product_line(ask, ark)
    else:
        product = _cn(vcek.issuer).removeprefix("SEV-")
        pinned = pinned_chains().get(product)
        if pinned is None:
            raise AttestationError(
                "chain", f"no pinned AMD chain for {vcek.issuer.rfc4514_string()} (pinned: {sorted(pinned_chains())})"
            )
        ask, ark = pinned
    vcek_key = _public_key(vcek, "VCEK")
    if not isinstance(vcek_key, ec.EllipticCurvePublicKey) or not isinstance(vcek_key.curve, ec.SECP384R1):
        raise AttestationError("format", "the VCEK's key is not ECDSA P-384")

    _check_pss(vcek, ask, "VCEK")
    _check_pss(ask, ark, "ASK")
    _check_pss(ark, ark, "ARK")
    for cert, what in ((vcek, "VCEK"), (ask, "ASK"), (ark, "ARK")):
        check_validity(cert, what, now)

    sig = raw[SIGNED_END : SIGNED_END + 144]
    r, s = int.from_bytes(sig[:72], "little"), int.from_bytes(sig[72:], "little")
    try:
        vcek_key.verify(encode_dss_signature(r, s), raw[:SIGNED_END], ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        raise AttestationError("signature", "the report's signature does not verify with the VCEK") from None

    fields = {name: raw[off : off + size] for name, off, size in _FIELDS}
    extra: dict[str, Any] = {
        "version": version,
        "guest_svn": guest_svn,
        "policy": policy,
        "vmpl": vmpl,
        "signature_algo": sig_algo,
        "platform_info": platform_info,
        "product": product,
        "family_id": fields["family_id"],
        "image_id": fields["image_id"],
        "report_id": fields["report_id"],
        "report_id_ma": fields["report_id_ma"],
        "chip_id": fields["chip_id"],
    }
    for name, off in _TCBS:
        tcb = raw[off : off + 8]
        extra[name] = tcb.hex()
        extra[name + "_decoded"] = decode_tcb(tcb)
    return Claims(
        format="snp",
        measurements={k: fields[k] for k in ("measurement", "host_data", "id_key_digest", "author_key_digest")},
        report_data=fields["report_data"],
        debug=bool((policy >> POLICY_DEBUG_BIT) & 1),
        tcb_status="UpToDate",
        signer_chain=(vcek.subject.rfc4514_string(), ask.subject.rfc4514_string(), ark.subject.rfc4514_string()),
        time=0,
        extra=extra,
    )
