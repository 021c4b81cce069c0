"""One entry point for every attestation format: the chain, the client and the CLI all call this.

An `Attestation` is the evidence an enclave produced plus its endorsements (what the verifier
needs besides the pinned roots and cannot fetch: DCAP collateral for tdx/sgx, the chip's VCEK
for snp). Roots are per format (PEM); a format with no root given uses the one pinned in the
package (nitro: AWS, snp: AMD Milan; tdx/sgx: Intel's, inside dcap-qvl). The dev format has no
pinned root: its DEV root is made per devnet and must be given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from haca.proofs.tee.claims import FORMATS, AttestationError, Claims


@dataclass(frozen=True)
class Attestation:
    format: str  # one of FORMATS
    evidence: bytes
    endorsements: bytes = b""  # tdx/sgx: DCAP collateral JSON; snp: VCEK certificate (DER)


def verify_attestation(att: Attestation, now: int, roots: Mapping[str, bytes] | None = None) -> Claims:
    """The claims of `att` verified at `now` (unix seconds); AttestationError naming the failed step."""
    root = (roots or {}).get(att.format)
    if att.format == "nitro":
        from haca.proofs.tee.nitro import verify_nitro

        return verify_nitro(att.evidence, now, root)
    if att.format in ("tdx", "sgx"):
        try:
            from haca.proofs.tee.dcap import verify_dcap
        except ImportError as exc:  # dcap-qvl is a compiled wheel
            raise AttestationError("dcap", f"DCAP verification is not in this build ({exc})") from exc
        if not att.endorsements:
            raise AttestationError("format", f"{att.format} evidence needs its DCAP collateral (JSON)")
        claims = verify_dcap(att.evidence, att.endorsements, now)
        if claims.format != att.format:
            raise AttestationError("format", f"the quote is {claims.format}, not {att.format}")
        return claims
    if att.format == "snp":
        from haca.proofs.tee.snp import verify_snp

        if not att.endorsements:
            raise AttestationError("format", "snp evidence needs the chip's VCEK certificate (DER)")
        return verify_snp(att.evidence, att.endorsements, now, root)
    if att.format == "dev":
        from haca.proofs.tee.dev import verify_dev

        if root is None:
            raise AttestationError("chain", "dev evidence needs the DEV root of this network (none is pinned)")
        return verify_dev(att.evidence, now, root)
    raise AttestationError("format", f"unknown attestation format {att.format!r}; known: {list(FORMATS)}")
