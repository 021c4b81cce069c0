"""What every attestation verifier reports, whatever the format, and the policy checked on it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from haca.proofs.receipt import EvidenceError

FORMATS = ("nitro", "tdx", "sgx", "snp", "dev")
# Intel's TCB statuses from best to worst; formats without a TCB notion report "UpToDate".
TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)


class AttestationError(EvidenceError):
    """Evidence that does not verify; `step` names what failed (signature, chain, expired, debug, …)."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step


# What cryptography raises for a certificate that does not parse, when loaded or when a part it parses
# lazily (names, extensions, the key) is first read: InvalidVersion is not a ValueError, a name
# attribute of the wrong string type is a TypeError, a key of an unknown type or curve (read to
# check a signature, too) is UnsupportedAlgorithm, an extension listed twice is DuplicateExtension.
CERTIFICATE_ERRORS = (
    ValueError,
    TypeError,
    x509.InvalidVersion,
    UnsupportedAlgorithm,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


def names_parse(cert: x509.Certificate) -> x509.Certificate:
    """`cert`, once its subject and issuer parse (cryptography parses names when first read, so a
    malformed one would otherwise raise wherever a verifier first reads it, e.g. in its refusal)."""
    _ = cert.subject, cert.issuer  # each read parses the name: ValueError or TypeError when it does not
    return cert


def check_validity(cert: x509.Certificate, what: str, now: int) -> None:
    """`cert` must be valid at `now` (unix seconds, bounds included); step "expired" otherwise."""
    not_before, not_after = int(cert.not_valid_before_utc.timestamp()), int(cert.not_valid_after_utc.timestamp())
    if now < not_before:
        raise AttestationError("expired", f"the {what} is not valid before {not_before} (now {now})")
    if now > not_after:
        raise AttestationError("expired", f"the {what} expired at {not_after} (now {now})")


@dataclass(frozen=True)
class Claims:
    format: str  # one of FORMATS
    measurements: Mapping[str, bytes]  # e.g. {"pcr0": …} / {"mr_td": …, "rtmr0": …} / {"measurement": …}
    report_data: bytes  # what the enclave bound into the evidence (user_data for Nitro)
    debug: bool
    tcb_status: str  # "UpToDate", "OutOfDate", … ("UpToDate" where the format has no TCB notion)
    advisory_ids: tuple[str, ...] = ()
    signer_chain: tuple[str, ...] = ()  # subjects (or names) from the leaf up to the trusted root
    time: int = 0  # unix seconds the evidence was made at (0 when the format does not say)
    public_key: bytes = b""  # Nitro's public_key field, when present
    extra: Mapping[str, Any] = field(default_factory=dict)  # format-specific facts worth showing
    dev: bool = False  # made by the labelled dev attester: DEV-MODE, NOT FOR PRODUCTION

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "measurements": {k: v.hex() for k, v in sorted(self.measurements.items())},
            "report_data": self.report_data.hex(),
            "debug": self.debug,
            "tcb_status": self.tcb_status,
            "advisory_ids": list(self.advisory_ids),
            "signer_chain": list(self.signer_chain),
            "time": self.time,
            "public_key": self.public_key.hex(),
            "extra": {k: v.hex() if isinstance(v, bytes) else v for k, v in sorted(self.extra.items())},
            "dev": self.dev,
        }


@dataclass(frozen=True)
class AttestationPolicy:
    """The default refuses debug enclaves and anything but an up-to-date TCB."""

    allow_debug: bool = False
    allowed_statuses: tuple[str, ...] = ("UpToDate",)

    def check(self, claims: Claims) -> None:
        if claims.debug and not self.allow_debug:
            raise AttestationError("debug", f"{claims.format} evidence is from a debug enclave")
        if claims.tcb_status not in self.allowed_statuses:
            raise AttestationError(
                "tcb_status",
                f"TCB status {claims.tcb_status!r} is not allowed (allowed: {list(self.allowed_statuses)})",
            )
