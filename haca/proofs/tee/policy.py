"""The chain's TEE policy, and the checks it makes on verified claims: one definition, run by
validators at registration and by clients re-verifying a receipt.

A policy names the attestation formats it accepts (the dev format only if listed: genesis must
allow it explicitly), the roots to anchor them on (a format without one uses the root pinned in
the package; dev has none pinned), whether debug enclaves pass, the worst TCB status accepted,
how old evidence may be, how often a key must re-attest and how recent its nonce must be.

GPUs (the NVIDIA reports, or DEV GPU evidence, that ride along an attestation): `gpu_formats`
names the GPU evidence formats accepted ("dev-gpu" only if listed, and it chains to roots["dev"];
nvidia chains to roots["nvidia"] if set, else the pinned NVIDIA Device Identity CA). `gpu_golden`
holds golden values, one entry per GPU software identity, named "<chip>/driver/<version>" or
"<chip>/vbios/<version>" (`haca.proofs.tee.nvidia.golden_key`; `haca attestation rim-import` makes
them from NVIDIA's signed RIMs): measurement index (the SPDM block index the GPU reports) -> the
allowed values (lower-case hex). A GPU report is refused unless every entry it names (its driver's,
and its VBIOS's when it reports a VBIOS version) is in `gpu_golden`; then each index listed in those
entries must be present in the report with one of the allowed values, and no index may be listed by
both (a conflict is refused). What is NOT compared: indices no entry lists (NVIDIA's RIMs leave
inactive ones out), the opaque data beyond driver and VBIOS versions (board ids, feature flags,
PCIe/NVDEC status, …), and certificate revocation (no OCSP on chain). `gpu_required` names the
models ("*": every model) whose receipts settle as verified only from an enclave key whose latest
attestation carried at least one verified GPU report.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography import x509

from haca.proofs.tee.binding import key_binding
from haca.proofs.tee.claims import FORMATS, TCB_STATUSES, AttestationError, Claims
from haca.types.tee import GLOBAL_SCOPE, GPU_EVIDENCE_FORMATS, GpuEvidence

if TYPE_CHECKING:
    from haca.proofs.tee.nvidia import GpuReport

MAX_INTERVAL = 1 << 32
MAX_NONCE_WINDOW = 1000  # the chain retains this many recent block hashes
ROOT_NAMES = (*FORMATS, "nvidia")  # roots: a CPU format's, or the NVIDIA Device Identity root
MAX_GOLDEN_ENTRIES = 64
MAX_GOLDEN_INDICES = 256
MAX_GOLDEN_ALTERNATIVES = 16
MAX_GOLDEN_VALUE_BYTES = 64
MAX_GPU_REQUIRED = 64
GOLDEN_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}/(driver|vbios)/[a-z0-9][a-z0-9._+-]{0,63}$")
_INDEX = re.compile(r"^(0|[1-9][0-9]{0,2})$")
_HEX = re.compile(r"^([0-9a-f]{2})+$")
_MODEL = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")

Golden = Mapping[str, Mapping[int, tuple[str, ...]]]  # entry name -> measurement index -> allowed hex values


@dataclass(frozen=True)
class TeePolicy:
    formats: tuple[str, ...] = ("nitro", "tdx", "sgx", "snp")
    roots: Mapping[str, str] = field(default_factory=dict)  # format -> PEM of the trusted root(s)
    allow_debug: bool = False
    min_tcb_status: str = "UpToDate"  # the worst TCB status accepted (TCB_STATUSES order)
    max_attestation_age: int = 600  # seconds between the evidence's own time and the block's
    heartbeat_interval: int = 100  # blocks an attestation covers; re-attest within it
    nonce_window: int = 20  # blocks: the nonce must be the hash of one of the last this many
    gpu_formats: tuple[str, ...] = ("nvidia",)  # GPU evidence formats accepted ("dev-gpu" only if listed)
    gpu_golden: Golden = field(default_factory=dict)  # see the module doc
    gpu_required: tuple[str, ...] = ()  # models ("*": all) whose receipts need an enclave with a GPU report

    def to_json(self) -> dict[str, Any]:
        return {
            "formats": list(self.formats),
            "roots": dict(sorted(self.roots.items())),
            "allow_debug": self.allow_debug,
            "min_tcb_status": self.min_tcb_status,
            "max_attestation_age": self.max_attestation_age,
            "heartbeat_interval": self.heartbeat_interval,
            "nonce_window": self.nonce_window,
            "gpu_formats": list(self.gpu_formats),
            "gpu_golden": golden_json(self.gpu_golden),
            "gpu_required": list(self.gpu_required),
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
        if not isinstance(roots, dict) or not set(roots) <= set(ROOT_NAMES):
            raise ValueError(f"roots: expected an object keyed by format ({list(ROOT_NAMES)})")
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
        gpu_formats = merged["gpu_formats"]
        if not isinstance(gpu_formats, list) or not set(gpu_formats) <= set(GPU_EVIDENCE_FORMATS):
            raise ValueError(f"gpu_formats: expected a list of {list(GPU_EVIDENCE_FORMATS)}")
        if len(set(gpu_formats)) != len(gpu_formats):
            raise ValueError("gpu_formats: a format is listed twice")
        required = merged["gpu_required"]
        if (
            not isinstance(required, list)
            or len(required) > MAX_GPU_REQUIRED
            or not all(isinstance(m, str) and (m == GLOBAL_SCOPE or _MODEL.fullmatch(m)) for m in required)
        ):
            raise ValueError(f'gpu_required: expected a list of at most {MAX_GPU_REQUIRED} model names or "*"')
        if len(set(required)) != len(required):
            raise ValueError("gpu_required: a model is listed twice")
        return cls(
            tuple(formats),
            {k: roots[k] for k in sorted(roots)},
            merged["allow_debug"],
            merged["min_tcb_status"],
            merged["max_attestation_age"],
            merged["heartbeat_interval"],
            merged["nonce_window"],
            tuple(gpu_formats),
            parse_golden(merged["gpu_golden"]),
            tuple(sorted(required)),
        )

    def root_pems(self) -> dict[str, bytes]:
        return {fmt: pem.encode() for fmt, pem in self.roots.items()}

    def check_format(self, fmt: str) -> None:
        if fmt not in self.formats:
            label = " (the DEV attester is not allowed on this chain)" if fmt == "dev" else ""
            raise AttestationError("format", f"format {fmt!r} is not allowed{label}; allowed: {list(self.formats)}")

    def check_gpu_format(self, fmt: str) -> None:
        if fmt not in self.gpu_formats:
            label = " (DEV GPU evidence is not allowed on this chain)" if fmt == "dev-gpu" else ""
            raise AttestationError(
                "format", f"GPU evidence format {fmt!r} is not allowed{label}; allowed: {list(self.gpu_formats)}"
            )

    def check_gpu(self, report: GpuReport) -> None:
        """A verified GPU report against the golden values (see the module doc): step "format" for a
        format not allowed, "golden" for a missing entry, a conflict, or a measurement not allowed."""
        self.check_gpu_format(report.format)
        listed: dict[int, tuple[str, tuple[str, ...]]] = {}
        for key in report.golden_keys():
            entry = self.gpu_golden.get(key)
            if entry is None:
                raise AttestationError("golden", f"the policy has no golden values for {key}")
            for index, allowed in entry.items():
                if index in listed:
                    raise AttestationError(
                        "golden", f"measurement {index} is listed by both {listed[index][0]} and {key}"
                    )
                listed[index] = (key, allowed)
        for index in sorted(listed):
            key, allowed = listed[index]
            value = report.measurements.get(index)
            if value is None:
                raise AttestationError("golden", f"measurement {index} (golden in {key}) is missing from the report")
            if value.hex() not in allowed:
                raise AttestationError("golden", f"measurement {index} is {value.hex()}, not a golden value of {key}")

    def gpu_missing(self, record: Mapping[str, Any], model: str) -> str:
        """Why an enclave record does not meet `gpu_required` for `model` ("" when it does)."""
        return gpu_missing(self.gpu_required, len(record.get("gpus") or ()), str(record.get("key", "")), model)

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


def gpu_missing(required: Sequence[str], gpus: int, key: str, model: str) -> str:
    """Why an enclave key whose latest attestation carried `gpus` verified GPU reports may not sign
    receipts for `model` under `gpu_required` = `required` ("" when it may)."""
    if gpus > 0 or (GLOBAL_SCOPE not in required and model not in required):
        return ""
    return (
        f"model {model!r} requires GPU evidence (TEE policy gpu_required) and enclave key {key}"
        " was attested without a GPU report"
    )


def check_binding(
    claims: Claims, chain_id: str, node: str, key: str, nonce: bytes, gpus: Sequence[GpuEvidence] = ()
) -> None:
    """The evidence's report data must be key_binding(chain id, node, key, nonce, GPU reports), exactly."""
    if claims.report_data != key_binding(chain_id, node, key, nonce, gpus):
        raise AttestationError(
            "binding",
            f"the report data does not bind key {key} to node {node} on chain {chain_id!r}, the nonce given"
            f" and the {len(gpus)} GPU report(s) sent with it",
        )


def _check_pem(fmt: str, pem: Any) -> None:
    if not isinstance(pem, str) or "BEGIN CERTIFICATE" not in pem or len(pem) > 16_384:
        raise ValueError(f"roots.{fmt}: expected PEM certificate text")
    try:
        x509.load_pem_x509_certificates(pem.encode())
    except ValueError as exc:
        raise ValueError(f"roots.{fmt}: {exc}") from exc


def golden_json(golden: Golden) -> dict[str, dict[str, list[str]]]:
    return {key: {str(i): list(v) for i, v in sorted(entry.items())} for key, entry in sorted(golden.items())}


def parse_golden(doc: Any) -> dict[str, dict[int, tuple[str, ...]]]:
    """`gpu_golden` from its JSON form; ValueError naming the bad part."""
    if not isinstance(doc, dict) or len(doc) > MAX_GOLDEN_ENTRIES:
        raise ValueError(f"gpu_golden: expected an object of at most {MAX_GOLDEN_ENTRIES} entries")
    out: dict[str, dict[int, tuple[str, ...]]] = {}
    for key in sorted(doc):
        entry = doc[key]
        if not isinstance(key, str) or not GOLDEN_KEY.fullmatch(key):
            raise ValueError(
                f"gpu_golden: {key!r} is not <chip>/driver/<version> or <chip>/vbios/<version> (lower case)"
            )
        if not isinstance(entry, dict) or not 1 <= len(entry) <= MAX_GOLDEN_INDICES:
            raise ValueError(f"gpu_golden.{key}: expected an object of 1 to {MAX_GOLDEN_INDICES} measurement indices")
        parsed: dict[int, tuple[str, ...]] = {}
        for index in sorted(entry, key=lambda i: (len(str(i)), str(i))):
            values = entry[index]
            if not isinstance(index, str) or not _INDEX.fullmatch(index) or int(index) > 255:
                raise ValueError(f"gpu_golden.{key}: index {index!r} is not a decimal from 0 to 255")
            if (
                not isinstance(values, list)
                or not 1 <= len(values) <= MAX_GOLDEN_ALTERNATIVES
                or not all(
                    isinstance(v, str) and _HEX.fullmatch(v) and len(v) <= 2 * MAX_GOLDEN_VALUE_BYTES for v in values
                )
            ):
                raise ValueError(
                    f"gpu_golden.{key}.{index}: expected 1 to {MAX_GOLDEN_ALTERNATIVES} lower-case hex values"
                    f" of at most {MAX_GOLDEN_VALUE_BYTES} bytes"
                )
            if len(set(values)) != len(values):
                raise ValueError(f"gpu_golden.{key}.{index}: a value is listed twice")
            parsed[int(index)] = tuple(values)
        out[key] = parsed
    return out
