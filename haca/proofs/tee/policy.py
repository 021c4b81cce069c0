"""The chain's TEE policy, and the checks it makes on verified claims: one definition, run by
validators at registration and by clients re-verifying a receipt.

A policy names the attestation formats it accepts (the dev format only if listed: genesis must
allow it explicitly), the roots to anchor them on (a format without one uses the root pinned in
the package; dev has none pinned), whether debug enclaves pass, the worst TCB status accepted,
how old evidence may be, how often a key must re-attest and how recent its nonce must be.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from haca.proofs.tee.binding import key_binding
from haca.proofs.tee.claims import FORMATS, TCB_STATUSES, AttestationError, Claims

MAX_INTERVAL = 1 << 32
MAX_NONCE_WINDOW = 1000  # the chain retains this many recent block hashes


@dataclass(frozen=True)
class TeePolicy:
    formats: tuple[str, ...] = ("nitro", "tdx", "sgx", "snp")
    roots: Mapping[str, str] = field(default_factory=dict)  # format -> PEM of the trusted root(s)
    allow_debug: bool = False
    min_tcb_status: str = "UpToDate"  # the worst TCB status accepted (TCB_STATUSES order)
    max_attestation_age: int = 600  # seconds between the evidence's own time and the block's
    heartbeat_interval: int = 100  # blocks an attestation covers; re-attest within it
    nonce_window: int = 20  # blocks: the nonce must be the hash of one of the last this many

    def to_json(self) -> dict[str, Any]:
        return {
            "formats": list(self.formats),
            "roots": dict(sorted(self.roots.items())),
            "allow_debug": self.allow_debug,
            "min_tcb_status": self.min_tcb_status,
            "max_attestation_age": self.max_attestation_age,
            "heartbeat_interval": self.heartbeat_interval,
            "nonce_window": self.nonce_window,
        }

    @classmethod
    def from_json(cls, doc: Any, base: TeePolicy | None = None) -> TeePolicy:
        """`doc` over `base` (default: the defaults); ValueError naming the bad field."""
        if not isinstance(doc, dict):
            raise ValueError("TEE policy: expected an object")
        current = (base or cls()).to_json()
        unknown = sorted(set(doc) - set(current))
        if unknown:
            raise ValueError(f"TEE policy: unknown fields {unknown}; known: {sorted(current)}")
        merged = {**current, **doc}
        formats = merged["formats"]
        if not isinstance(formats, list) or not formats or not set(formats) <= set(FORMATS):
            raise ValueError(f"formats: expected a non-empty list of {list(FORMATS)}")
        if len(set(formats)) != len(formats):
            raise ValueError("formats: a format is listed twice")
        roots = merged["roots"]
        if not isinstance(roots, dict) or not set(roots) <= set(FORMATS):
            raise ValueError(f"roots: expected an object keyed by format ({list(FORMATS)})")
        for fmt, pem in roots.items():
            _check_pem(fmt, pem)
        if not isinstance(merged["allow_debug"], bool):
            raise ValueError("allow_debug: expected true or false")
        if merged["min_tcb_status"] not in TCB_STATUSES[:-1]:
            raise ValueError(f"min_tcb_status: expected one of {list(TCB_STATUSES[:-1])}")
        limits = {
            "max_attestation_age": MAX_INTERVAL,
            "heartbeat_interval": MAX_INTERVAL,
            "nonce_window": MAX_NONCE_WINDOW,
        }
        for name, limit in limits.items():
            value = merged[name]
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
                raise ValueError(f"{name}: expected an integer from 1 to {limit}")
        return cls(
            tuple(formats),
            {k: roots[k] for k in sorted(roots)},
            merged["allow_debug"],
            merged["min_tcb_status"],
            merged["max_attestation_age"],
            merged["heartbeat_interval"],
            merged["nonce_window"],
        )

    def root_pems(self) -> dict[str, bytes]:
        return {fmt: pem.encode() for fmt, pem in self.roots.items()}

    def check_format(self, fmt: str) -> None:
        if fmt not in self.formats:
            label = " (the DEV attester is not allowed on this chain)" if fmt == "dev" else ""
            raise AttestationError("format", f"format {fmt!r} is not allowed{label}; allowed: {list(self.formats)}")

    def check_claims(self, claims: Claims, now: int) -> None:
        """Debug, TCB status and age of verified claims against this policy, at block time `now`."""
        self.check_format(claims.format)
        if claims.debug and not self.allow_debug:
            raise AttestationError(
                "debug", f"{claims.format} evidence is from a debug enclave; the policy forbids debug"
            )
        rank = TCB_STATUSES.index(claims.tcb_status) if claims.tcb_status in TCB_STATUSES else len(TCB_STATUSES)
        if rank >= len(TCB_STATUSES) - 1 or rank > TCB_STATUSES.index(self.min_tcb_status):
            raise AttestationError(
                "tcb_status", f"TCB status {claims.tcb_status!r} is worse than the policy's {self.min_tcb_status!r}"
            )
        if claims.time and abs(now - claims.time) > self.max_attestation_age:
            raise AttestationError(
                "age",
                f"the evidence was made at {claims.time}, {now - claims.time} s from block time {now};"
                f" the policy allows {self.max_attestation_age} s",
            )


def check_binding(claims: Claims, chain_id: str, node: str, key: str, nonce: bytes) -> None:
    """The evidence's report data must be key_binding(chain id, node, key, nonce), exactly."""
    if claims.report_data != key_binding(chain_id, node, key, nonce):
        raise AttestationError(
            "binding",
            f"the report data does not bind key {key} to node {node} on chain {chain_id!r} and the nonce given",
        )


def _check_pem(fmt: str, pem: Any) -> None:
    if not isinstance(pem, str) or "BEGIN CERTIFICATE" not in pem or len(pem) > 16_384:
        raise ValueError(f"roots.{fmt}: expected PEM certificate text")
    try:
        x509.load_pem_x509_certificates(pem.encode())
    except ValueError as exc:
        raise ValueError(f"roots.{fmt}: {exc}") from exc
