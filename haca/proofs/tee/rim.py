"""NVIDIA reference integrity manifests (RIMs): the golden measurements of a GPU driver or VBIOS, as
NVIDIA publishes them, turned into a `TeePolicy.gpu_golden` entry.

A RIM is a SWID tag (ISO/IEC 19770-2 XML) with an enveloped XML-DSig signature (ECDSA P-384,
SHA-384, C14N 1.1) whose KeyInfo carries the signer's certificate chain, leaf first, up to NVIDIA's
RIM root ("NVIDIA CoRIM signing Root CA", pinned as roots/nvidia_rim_root.pem). `import_rim` checks,
in order: ``format`` (size, XML, one Signature), ``chain`` (each certificate signed by the next, the
chain ending at the given root, byte for byte), ``expired`` (every certificate valid at `now`),
``signature`` (the XML signature, by the chain's leaf, verified with signxml over lxml), then reads
the identity and golden values from the signed XML only:

- identity: the chip (``Meta/@product``, e.g. "GH100") and version (``Meta/@colloquialVersion``,
  lower case): a VBIOS RIM's version has five two-hex-digit groups ("96.00.5e.00.01"), anything
  else is a driver's ("550.90.07"); the entry is named `golden_key(chip, component, version)`;
- golden values: each *active* ``Payload/Resource`` (type Measurement): its ``index`` and its
  ``alternatives`` allowed values (attributes ``Hash0``.. in the SHA-384 namespace). RIM indices
  count from 0 and the GPU's SPDM measurement blocks from 1, so the entry lists index + 1
  (RIM index 3 is the report's measurement 4). Inactive resources are left out (not compared).

signxml and lxml are imported when a RIM is imported: the chain never needs them.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from haca.proofs.tee.claims import AttestationError
from haca.proofs.tee.nvidia import _check_chain, golden_key

PINNED_RIM_ROOT = "nvidia_rim_root.pem"  # NVIDIA CoRIM signing Root CA (from NVIDIA/nvtrust)
MAX_RIM_BYTES = 1 << 20
MAX_CHAIN = 8
DSIG = "http://www.w3.org/2000/09/xmldsig#"
SWID = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
SHA384 = "http://www.w3.org/2001/04/xmlenc#sha384"
_VBIOS = re.compile(r"^[0-9a-f]{2}(\.[0-9a-f]{2}){4}$")
_CHIP = re.compile(r"^[A-Z]{2}[0-9]{3}$")
_HEX = re.compile(r"^([0-9a-f]{2}){1,64}$")
_VERSION = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,63}$")


@dataclass(frozen=True)
class GoldenEntry:
    """What one verified RIM says, as a golden-value entry of the TEE policy."""

    key: str  # "<chip>/<component>/<version>", the gpu_golden entry name
    chip: str  # e.g. "GH100"
    component: str  # "driver" or "vbios"
    version: str  # lower case, e.g. "550.90.07" or "96.00.5e.00.01"
    measurements: dict[int, tuple[str, ...]]  # SPDM measurement index -> allowed values (hex)
    signer_chain: tuple[str, ...]  # certificate subjects, leaf to the root
    tag_id: str = ""

    def policy_entry(self) -> dict[str, dict[str, list[str]]]:
        """`{key: {index: [values]}}`, as `gpu_golden` holds it."""
        return {self.key: {str(i): list(v) for i, v in sorted(self.measurements.items())}}

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "chip": self.chip,
            "component": self.component,
            "version": self.version,
            "tag_id": self.tag_id,
            "signer_chain": list(self.signer_chain),
            "measurements": self.policy_entry()[self.key],
        }


def pinned_rim_root() -> bytes:
    return resources.files("haca.proofs.tee").joinpath("roots", PINNED_RIM_ROOT).read_bytes()


def _xml_libraries() -> tuple[Any, Any, Any]:
    try:
        from lxml import etree
        from signxml import SignatureConfiguration, XMLVerifier
    except ImportError as exc:  # optional: only operators importing RIMs need them
        raise AttestationError(
            "format", f"importing NVIDIA RIMs needs the signxml and lxml packages (pip install signxml): {exc}"
        ) from exc
    return etree, XMLVerifier, SignatureConfiguration


def _chain(root_el: Any) -> list[x509.Certificate]:
    texts = root_el.findall(f".//{{{DSIG}}}Signature/{{{DSIG}}}KeyInfo/{{{DSIG}}}X509Data/{{{DSIG}}}X509Certificate")
    if not 1 <= len(texts) <= MAX_CHAIN:
        raise AttestationError("chain", f"the signature's KeyInfo holds {len(texts)} certificates (1 to {MAX_CHAIN})")
    try:
        return [x509.load_der_x509_certificate(base64.b64decode("".join((t.text or "").split()))) for t in texts]
    except (ValueError, binascii.Error) as exc:
        raise AttestationError("chain", f"a KeyInfo certificate does not parse: {exc}") from None


def import_rim(xml_bytes: bytes, root_pem: bytes | None, now: int) -> GoldenEntry:
    """The golden entry of a RIM whose signature verifies under `root_pem` (default: the pinned
    NVIDIA RIM root) at `now` (unix seconds); AttestationError naming the step otherwise."""
    etree, verifier_cls, config_cls = _xml_libraries()
    if len(xml_bytes) > MAX_RIM_BYTES:
        raise AttestationError("format", f"the RIM is {len(xml_bytes)} bytes (at most {MAX_RIM_BYTES})")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, remove_comments=False)
    try:
        document = etree.fromstring(xml_bytes, parser=parser)
    except etree.XMLSyntaxError as exc:
        raise AttestationError("format", f"the RIM is not XML: {exc}") from None
    if len(document.findall(f".//{{{DSIG}}}Signature")) != 1:
        raise AttestationError("format", "a RIM carries exactly one XML signature")
    root = root_pem if root_pem is not None else pinned_rim_root()
    certs = _chain(document)
    try:
        anchor = x509.load_pem_x509_certificate(root)
    except ValueError as exc:
        raise AttestationError("chain", f"the RIM root is not a PEM certificate: {exc}") from None
    if certs[-1].public_bytes(Encoding.DER) != anchor.public_bytes(Encoding.DER):
        certs.append(anchor)  # a KeyInfo without the root's copy: anchor on the given root
    signer_chain = _check_chain(certs, root, now)

    import signxml.exceptions

    try:
        verified = verifier_cls().verify(
            xml_bytes,
            x509_cert=certs[0],
            expect_config=config_cls(verification_time=datetime.fromtimestamp(now, UTC)),
        )
    except (signxml.exceptions.InvalidInput, signxml.exceptions.InvalidSignature) as exc:
        raise AttestationError("signature", f"the RIM's XML signature does not verify: {exc}") from None
    signed = verified.signed_xml
    if signed is None or signed.tag != f"{{{SWID}}}SoftwareIdentity":
        raise AttestationError("format", "the signed content is not a SWID SoftwareIdentity")
    return _entry(signed, signer_chain)


def _entry(signed: Any, signer_chain: tuple[str, ...]) -> GoldenEntry:
    meta = signed.find(f"{{{SWID}}}Meta")
    payload = signed.find(f"{{{SWID}}}Payload")
    if meta is None or payload is None:
        raise AttestationError("format", "the RIM has no Meta or no Payload")
    chip, version = meta.get("product", ""), meta.get("colloquialVersion", "").lower()
    if not _CHIP.fullmatch(chip) or not _VERSION.fullmatch(version):
        raise AttestationError("format", f"the RIM names chip {chip!r} and version {version!r}: not an NVIDIA GPU RIM")
    component = "vbios" if _VBIOS.fullmatch(version) else "driver"
    measurements: dict[int, tuple[str, ...]] = {}
    for resource in payload.findall(f"{{{SWID}}}Resource"):
        if resource.get("type") != "Measurement":
            continue
        try:
            index, alternatives = int(resource.get("index", "")), int(resource.get("alternatives", ""))
        except ValueError:
            raise AttestationError("format", "a Resource's index or alternatives is not a number") from None
        if not 0 <= index < 255 or not 1 <= alternatives <= 16:
            raise AttestationError("format", f"Resource {index}: index or alternatives out of range")
        if index + 1 in measurements:
            raise AttestationError("format", f"measurement index {index} appears twice")
        if resource.get("active") != "True":
            continue  # an inactive measurement is not compared
        values = tuple(resource.get(f"{{{SHA384}}}Hash{i}", "").lower() for i in range(alternatives))
        if not all(_HEX.fullmatch(v) for v in values) or len(set(values)) != len(values):
            raise AttestationError("format", f"Resource {index}: its Hash values are not distinct hex")
        measurements[index + 1] = values
    if not measurements:
        raise AttestationError("format", "the RIM has no active measurement")
    return GoldenEntry(
        golden_key(chip, component, version),
        chip,
        component,
        version,
        measurements,
        signer_chain,
        signed.get("tagId", ""),
    )
