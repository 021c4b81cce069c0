"""DEV GPU evidence (format "dev-gpu") for local networks: DEV-MODE, NOT FOR PRODUCTION.

Nothing here is a GPU: a "DEV GPU report" is signed by the devnet's DEV platform key (the one the
DEV CPU attester of haca.proofs.tee.dev uses, certified by the network's DEV root), so it proves
only that the holder of that key vouched for a nonce, some measurements and a driver version. It
keeps the GPU code path (the nonce bound to the enclave key, golden values, `gpu_required`) honest
on machines without a confidential GPU. The chain accepts it only when its TEE policy lists
"dev-gpu" in `gpu_formats`, and it chains to the policy's roots["dev"].

The report is CBOR ``[payload bstr, signature bstr]``; the payload is exactly one CBOR map::

    {"format": "haca-dev-gpu/1", "label": DEV_LABEL, "chip": DEV_GPU_CHIP, "nonce": 32 bytes,
     "driver_version": text, "measurements": {index (0..255): 1..64 bytes, ...}}

signed with ECDSA P-256/SHA-256 (DER) by the leaf of `GpuEvidence.chain` (the platform's PEM
chain, leaf first). `verify_dev_gpu` checks, in order: ``format``, ``chain``, ``expired``,
``signature``, ``binding`` (the nonce expected), and reports a `GpuReport` with ``dev`` set.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from haca.proofs.tee.claims import CERTIFICATE_ERRORS, AttestationError, check_validity, names_parse
from haca.proofs.tee.dev import DEV_LABEL, _decode_one, _verify_chain, load_platform
from haca.proofs.tee.nvidia import GpuReport, golden_key
from haca.types.tee import GpuEvidence

DEV_GPU_FORMAT = "haca-dev-gpu/1"
DEV_GPU_CHIP = "HACA-DEV-GPU"
DEV_GPU_DRIVER_VERSION = "haca-dev-1.0"
NONCE_BYTES = 32
MAX_MEASUREMENTS = 64
MAX_MEASUREMENT_BYTES = 64
MAX_REPORT_BYTES = 16 * 1024
MAX_CHAIN_CERTS = 8
_VERSION = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,63}$")
_FIELDS = frozenset(("format", "label", "chip", "nonce", "driver_version", "measurements"))
# The DEV GPU's measurements: fixed, so a devnet's genesis policy can hold their golden values.
# Index 1 stands for the GPU firmware, 2 for the driver (SHA-384 of a label, 48 bytes like Hopper's).
DEV_GPU_MEASUREMENTS: dict[int, bytes] = {
    1: hashlib.sha384(b"HACA-DEV-GPU/v1 firmware - DEV-MODE, NOT FOR PRODUCTION").digest(),
    2: hashlib.sha384(b"HACA-DEV-GPU/v1 driver " + DEV_GPU_DRIVER_VERSION.encode()).digest(),
}


def dev_gpu_golden(
    measurements: Mapping[int, bytes] | None = None, driver_version: str = DEV_GPU_DRIVER_VERSION
) -> dict[str, dict[str, list[str]]]:
    """The `gpu_golden` entry of a DEV GPU (default: the fixed DEV measurements and driver version),
    for a devnet's genesis TEE policy."""
    values = DEV_GPU_MEASUREMENTS if measurements is None else measurements
    entry = {str(i): [v.hex()] for i, v in sorted(values.items())}
    return {golden_key(DEV_GPU_CHIP, "driver", driver_version): entry}


def make_dev_gpu_report(
    platform_key_pem: bytes,
    platform_chain_pem: bytes,
    nonce: bytes,
    measurements: Mapping[int, bytes],
    driver_version: str,
) -> GpuEvidence:
    """DEV GPU evidence over `nonce`, signed by the DEV platform key (see the module doc)."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a GPU nonce is {NONCE_BYTES} bytes, not {len(nonce)}")
    if not _VERSION.fullmatch(driver_version):
        raise ValueError("driver_version: lower-case letters, digits and . _ + -, at most 64")
    if not 1 <= len(measurements) <= MAX_MEASUREMENTS or not all(
        0 <= i <= 255 and 1 <= len(v) <= MAX_MEASUREMENT_BYTES for i, v in measurements.items()
    ):
        raise ValueError(f"measurements: 1 to {MAX_MEASUREMENTS}, index 0..255, 1..{MAX_MEASUREMENT_BYTES} bytes")
    key, _ = load_platform(platform_key_pem, platform_chain_pem)
    payload = cbor2.dumps(
        {
            "format": DEV_GPU_FORMAT,
            "label": DEV_LABEL,
            "chip": DEV_GPU_CHIP,
            "nonce": bytes(nonce),
            "driver_version": driver_version,
            "measurements": {int(i): bytes(v) for i, v in sorted(measurements.items())},
        },
        canonical=True,
    )
    signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    return GpuEvidence("dev-gpu", cbor2.dumps([payload, signature]), platform_chain_pem)


def _payload(raw: bytes) -> tuple[bytes, bytes, dict[str, Any]]:
    if len(raw) > MAX_REPORT_BYTES:
        raise AttestationError("format", f"the report is {len(raw)} bytes (at most {MAX_REPORT_BYTES})")
    outer = _decode_one(raw, "the DEV GPU report")
    if not (isinstance(outer, list) and len(outer) == 2 and all(isinstance(x, bytes) for x in outer)):
        raise AttestationError("format", "a DEV GPU report is a CBOR array [payload bstr, signature bstr]")
    payload_raw, signature = outer
    payload = _decode_one(payload_raw, "the payload")
    if not isinstance(payload, Mapping) or set(payload) != _FIELDS:
        raise AttestationError("format", f"the payload is not a map of exactly {sorted(_FIELDS)}")
    if payload["format"] != DEV_GPU_FORMAT or payload["label"] != DEV_LABEL or payload["chip"] != DEV_GPU_CHIP:
        raise AttestationError("format", f"not a {DEV_GPU_FORMAT} report labelled {DEV_LABEL!r}")
    nonce, version, measurements = payload["nonce"], payload["driver_version"], payload["measurements"]
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise AttestationError("format", f"nonce is not {NONCE_BYTES} bytes")
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise AttestationError("format", "driver_version is not a version string")
    if (
        not isinstance(measurements, Mapping)
        or not 1 <= len(measurements) <= MAX_MEASUREMENTS
        or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= 255 and isinstance(v, bytes)
            for i, v in measurements.items()
        )
        or not all(1 <= len(v) <= MAX_MEASUREMENT_BYTES for v in measurements.values())
    ):
        raise AttestationError("format", "measurements is not a map of index (0..255) to 1..64 bytes")
    return payload_raw, signature, {"nonce": nonce, "driver_version": version, "measurements": dict(measurements)}


def verify_dev_gpu(evidence: GpuEvidence, now: int, root_pem: bytes, expected_nonce: bytes | None) -> GpuReport:
    """The verified DEV GPU report at `now` against this devnet's DEV root; AttestationError naming
    the step (format, chain, expired, signature, binding) otherwise."""
    if evidence.format != "dev-gpu":
        raise AttestationError("format", f"GPU evidence of format {evidence.format!r} is not dev-gpu")
    payload_raw, signature, fields = _payload(evidence.report)
    try:
        certs = [names_parse(c) for c in x509.load_pem_x509_certificates(evidence.chain)]
        roots = x509.load_pem_x509_certificates(root_pem)
    except CERTIFICATE_ERRORS as exc:
        raise AttestationError("chain", f"a certificate does not parse: {exc}") from None
    if not 1 <= len(certs) <= MAX_CHAIN_CERTS or len(roots) != 1:
        raise AttestationError("chain", f"expected 1 to {MAX_CHAIN_CERTS} chain certificates and one DEV root")
    chain = _verify_chain(certs[0], certs[1:], roots[0])
    for cert in chain:
        check_validity(cert, f"certificate {cert.subject.rfc4514_string()}", now)
    key = certs[0].public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise AttestationError("signature", "the leaf certificate's key is not ECDSA P-256")
    try:
        key.verify(signature, payload_raw, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise AttestationError(
            "signature", "the DEV GPU report's signature does not verify with the leaf key"
        ) from None
    if expected_nonce is not None and fields["nonce"] != expected_nonce:
        raise AttestationError(
            "binding", f"the report is for nonce {fields['nonce'].hex()}, not the expected {expected_nonce.hex()}"
        )
    return GpuReport(
        nonce=fields["nonce"],
        measurements=fields["measurements"],
        opaque={},
        signer_chain=tuple(c.subject.rfc4514_string() for c in chain),
        fields={"driver_version": fields["driver_version"], "label": DEV_LABEL},
        chip=DEV_GPU_CHIP,
        format="dev-gpu",
        dev=True,
    )
