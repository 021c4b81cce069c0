"""NVIDIA GPU confidential-computing evidence (Hopper and later): an SPDM 1.1 GET_MEASUREMENTS
request and the GPU's signed MEASUREMENTS response, with the GPU's certificate chain.

Layout (DMTF DSP0274 1.1, as NVIDIA's GPUs answer it):

- request, 37 bytes: version 0x11, code 0xE0 (GET_MEASUREMENTS), param1 (bit 0: signature asked),
  param2 (0xFF: every measurement), the requester's 32-byte nonce, the slot id;
- response: version 0x11, code 0x60 (MEASUREMENTS), param1, param2 (slot id), the number of blocks,
  a 3-byte little-endian record length, the record (measurement blocks: index, specification, a
  2-byte LE size, then the DMTF measurement: type, a 2-byte LE size, the value), the responder's
  32-byte nonce, a 2-byte LE opaque-data length, the opaque data (NVIDIA's fields: 2-byte LE type,
  2-byte LE length, value), then the signature: r and s of ECDSA P-384, big-endian, 96 bytes.

The signature is by the leaf certificate's key, SHA-384 over every byte of the request and the
response before the signature; each certificate is signed by the next one, and the chain must end
at the pinned NVIDIA Device Identity root (byte for byte). The requester's nonce is how the report
is bound to something: the caller passes the nonce it expects (e.g. derived from an enclave key's
binding), and a report for another nonce is refused as not bound.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from haca.proofs.reader import BoundedReader
from haca.proofs.tee.claims import CERTIFICATE_ERRORS, AttestationError, check_validity, names_parse

SPDM_VERSION = 0x11
GET_MEASUREMENTS, MEASUREMENTS = 0xE0, 0x60
REQUEST_BYTES = 37
NONCE_BYTES = 32
SIGNATURE_BYTES = 96  # P-384: r ‖ s
CHAIN_MAX_CERTS = 8
PINNED_ROOT = "nvidia_device_identity_ca.pem"  # NVIDIA Device Identity CA (from NVIDIA/nvtrust)
# NVIDIA's opaque-data field types worth naming (the rest are reported by number). Note: NVIDIA's
# own verifier (nvtrust) names 15 CHIP_SKU, 17 PROJECT and 18 PROJECT_SKU; these labels are kept
# as they were for compatibility, and `GpuReport.board` spells the nvtrust order out.
OPAQUE_NAMES = {3: "driver_version", 15: "project", 17: "chip_info", 18: "chip_sku"}
OPAQUE_VBIOS_VERSION = 6
_CHIP = re.compile(r"^[A-Z]{2}[0-9]{3}$")  # an NVIDIA chip name: GH100, GB100, …


@dataclass(frozen=True)
class GpuReport:
    """What a verified GPU report says (NVIDIA's, or the DEV GPU evidence of haca.proofs.tee.dev_gpu:
    the policy treats both alike)."""

    nonce: bytes  # the requester's nonce the GPU signed
    measurements: dict[int, bytes]  # measurement index (SPDM block index) -> its value (48 bytes on Hopper)
    opaque: dict[int, bytes]  # NVIDIA opaque-data fields: type -> value
    signer_chain: tuple[str, ...]  # certificate subjects, leaf to the pinned root
    slot: int = 0
    fields: dict[str, str] = field(default_factory=dict)  # opaque fields with a name, as text
    chip: str = ""  # the GPU's chip (nvidia: from the leaf certificate, e.g. "GH100"), "" if unknown
    vbios_version: str = ""  # nvidia: lower-case "96.00.9f.00.01", as NVIDIA's RIMs spell it
    format: str = "nvidia"  # one of haca.types.tee.GPU_EVIDENCE_FORMATS
    dev: bool = False  # DEV GPU evidence: DEV-MODE, NOT FOR PRODUCTION

    @property
    def driver_version(self) -> str:
        return self.fields.get("driver_version", "")

    @property
    def board(self) -> str:
        """nvidia: PROJECT_PROJECTSKU_CHIPSKU as NVIDIA names VBIOS RIMs (e.g. "1010_0200_882"), or ""."""
        parts = [_text(self.opaque.get(kind, b"")).strip().upper() for kind in (17, 18, 15)]
        return "_".join(parts) if all(parts) else ""

    def golden_keys(self) -> tuple[str, ...]:
        """The golden-value entries (TeePolicy.gpu_golden) this report is compared with: its driver's
        ("<chip>/driver/<driver version>") and, when it reports one, its VBIOS's
        ("<chip>/vbios/<vbios version>"); see `haca.proofs.tee.rim` for how NVIDIA's RIMs map to them."""
        keys = [golden_key(self.chip or "unknown", "driver", self.driver_version or "unknown")]
        if self.vbios_version:
            keys.append(golden_key(self.chip or "unknown", "vbios", self.vbios_version))
        return tuple(keys)

    def summary(self) -> dict[str, object]:
        """What the chain's enclave record keeps of this GPU (canonical JSON, no measurement values)."""
        return {
            "format": self.format,
            "chip": self.chip,
            "board": self.board,
            "driver_version": self.driver_version,
            "vbios_version": self.vbios_version,
            "dev": self.dev,
        }

    def to_json(self) -> dict[str, object]:
        return {
            "format": self.format,
            "nonce": self.nonce.hex(),
            "measurements": {str(i): v.hex() for i, v in sorted(self.measurements.items())},
            "driver_version": self.driver_version,
            "fields": dict(sorted(self.fields.items())),
            "chip": self.chip,
            "vbios_version": self.vbios_version,
            "golden_keys": list(self.golden_keys()),
            "dev": self.dev,
            "signer_chain": list(self.signer_chain),
            "root": self.signer_chain[-1] if self.signer_chain else "",
        }


def golden_key(chip: str, component: str, version: str) -> str:
    """The name of a golden-value entry: "<chip>/<component>/<version>" (component: driver or vbios)."""
    return f"{chip}/{component}/{version.lower()}"


def vbios_version(raw: bytes) -> str:
    """NVIDIA's opaque VBIOS version field (8 bytes, little-endian) as "xx.xx.xx.xx.xx", lower case
    (nvtrust's format_vbios_version: the high half's four bytes, then the low half's top byte)."""
    if len(raw) != 8:
        return ""
    value = raw[::-1].hex()  # big-endian hex of the little-endian field
    digits = value[8:] + value[6:8]
    return ".".join(digits[i : i + 2] for i in range(0, len(digits), 2))


def chip_of(subject: x509.Name) -> str:
    """The chip named by an NVIDIA device certificate ("GH100 A01 GSP FMC LF" -> "GH100"), or ""."""
    names = subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    first = str(names[0].value).split(" ")[0] if names else ""
    return first if _CHIP.fullmatch(first) else ""


def _reader(data: bytes) -> BoundedReader:
    return BoundedReader(
        data, lambda what, _needed, _left: AttestationError("format", f"the report ends inside its {what}")
    )


def parse_report_text(text: bytes) -> bytes:
    """The report's bytes from its hex text form (as NVIDIA's tools write it), or the bytes as given."""
    stripped = text.strip()
    try:
        return bytes.fromhex(stripped.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return text


def _measurements(record: bytes, count: int) -> dict[int, bytes]:
    reader, out = _reader(record), {}
    for _ in range(count):
        index = reader.uint(1, "measurement index", "little")
        reader.take(1, "measurement specification")
        size = reader.uint(2, "measurement size", "little")
        block = _reader(reader.take(size, f"measurement {index}"))
        block.take(1, f"measurement {index} type")
        value_size = block.uint(2, f"measurement {index} value size", "little")
        value = block.take(value_size, f"measurement {index} value")
        if block.offset != size:
            raise AttestationError("format", f"measurement {index} has bytes after its value")
        if index in out:
            raise AttestationError("format", f"measurement {index} appears twice")
        out[index] = value
    if reader.offset != len(record):
        raise AttestationError("format", "the measurement record has bytes after its last block")
    return out


def _opaque(data: bytes) -> dict[int, bytes]:
    reader, out = _reader(data), {}
    while reader.offset < len(data):
        kind = reader.uint(2, "opaque field type", "little")
        size = reader.uint(2, f"opaque field {kind} length", "little")
        out[kind] = reader.take(size, f"opaque field {kind}")
    return out


def _text(value: bytes) -> str:
    return value.rstrip(b"\x00").decode("ascii", errors="replace")


def load_chain(pem: bytes) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except CERTIFICATE_ERRORS as exc:
        raise AttestationError("chain", f"the certificate chain is not PEM: {exc}") from exc
    if not 2 <= len(certs) <= CHAIN_MAX_CERTS:
        raise AttestationError("chain", f"expected 2 to {CHAIN_MAX_CERTS} certificates, leaf first; got {len(certs)}")
    return certs


def _check_chain(certs: list[x509.Certificate], root_pem: bytes, now: int) -> tuple[str, ...]:
    try:
        root = x509.load_pem_x509_certificate(root_pem)
    except ValueError as exc:
        raise AttestationError("chain", f"the pinned root is not a PEM certificate: {exc}") from exc
    for i, cert in enumerate(certs):
        try:
            names_parse(cert)
        except CERTIFICATE_ERRORS as exc:
            raise AttestationError(
                "chain", f"certificate {i} of the chain has a name that does not parse: {exc}"
            ) from None
    if certs[-1].public_bytes(Encoding.DER) != root.public_bytes(Encoding.DER):
        raise AttestationError("chain", f"the chain ends at {certs[-1].subject.rfc4514_string()}, not the pinned root")
    for cert, issuer in itertools.pairwise(certs):
        try:
            cert.verify_directly_issued_by(issuer)
        except (*CERTIFICATE_ERRORS, InvalidSignature) as exc:
            raise AttestationError(
                "chain", f"{cert.subject.rfc4514_string()} is not signed by {issuer.subject.rfc4514_string()}"
            ) from exc
    for cert in certs:
        check_validity(cert, f"certificate {cert.subject.rfc4514_string()}", now)
    return tuple(cert.subject.rfc4514_string() for cert in certs)


def pinned_root() -> bytes:
    return resources.files("haca.proofs.tee").joinpath("roots", PINNED_ROOT).read_bytes()


def verify_nvidia_report(
    report: bytes, chain_pem: bytes, now: int, expected_nonce: bytes | None, root_pem: bytes | None = None
) -> GpuReport:
    """The verified GPU report: its signature by the chain's leaf over request and response, the
    chain to the pinned root, and (when `expected_nonce` is given) the nonce it binds.
    AttestationError naming the step (format, signature, chain, expired, binding) otherwise."""
    data = parse_report_text(report)
    reader = _reader(data)
    request = reader.take(REQUEST_BYTES, "GET_MEASUREMENTS request")
    if request[0] != SPDM_VERSION or request[1] != GET_MEASUREMENTS:
        raise AttestationError("format", "the report does not start with an SPDM 1.1 GET_MEASUREMENTS request")
    if not request[2] & 1:
        raise AttestationError("format", "the request did not ask for a signed response")
    nonce, slot = request[4 : 4 + NONCE_BYTES], request[4 + NONCE_BYTES]
    header = reader.take(4, "MEASUREMENTS header")
    if header[0] != SPDM_VERSION or header[1] != MEASUREMENTS:
        raise AttestationError("format", "the response is not an SPDM 1.1 MEASUREMENTS response")
    count = reader.uint(1, "number of measurement blocks", "little")
    record = reader.take(reader.uint(3, "measurement record length", "little"), "measurement record")
    reader.take(NONCE_BYTES, "responder nonce")
    opaque_data = reader.take(reader.uint(2, "opaque data length", "little"), "opaque data")
    signed = data[: reader.offset]
    signature = reader.take(SIGNATURE_BYTES, "signature")
    if reader.offset != len(data):
        raise AttestationError("format", f"{len(data) - reader.offset} bytes follow the signature")
    measurements, opaque = _measurements(record, count), _opaque(opaque_data)

    certs = load_chain(chain_pem)
    try:
        leaf_key = certs[0].public_key()
    except CERTIFICATE_ERRORS as exc:  # e.g. a point off its curve, an unknown curve
        raise AttestationError("signature", f"the leaf certificate's key does not load: {exc}") from None
    if not isinstance(leaf_key, ec.EllipticCurvePublicKey) or leaf_key.curve.name != "secp384r1":
        raise AttestationError("signature", "the leaf certificate's key is not ECDSA P-384")
    r, s = int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")
    try:
        leaf_key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise AttestationError(
            "signature", "the GPU's signature over the request and response does not verify"
        ) from None
    chain = _check_chain(certs, root_pem if root_pem is not None else pinned_root(), now)
    if expected_nonce is not None and nonce != expected_nonce:
        raise AttestationError(
            "binding", f"the report is for nonce {nonce.hex()}, not the expected {expected_nonce.hex()}"
        )
    fields = {name: _text(opaque[kind]) for kind, name in OPAQUE_NAMES.items() if kind in opaque}
    vbios = vbios_version(opaque.get(OPAQUE_VBIOS_VERSION, b""))
    return GpuReport(nonce, measurements, opaque, chain, slot, fields, chip_of(certs[0].subject), vbios)
