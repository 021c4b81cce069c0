"""tee module messages: enclave key attestation (registration and heartbeats) by nodes, and the
TEE policy (measurements, formats, roots, limits) set by the governance authority."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from haca.types import fields as f
from haca.types.encoding import canonical_json
from haca.types.tx import register_msg

ATTESTATION_FORMATS = ("nitro", "tdx", "sgx", "snp", "dev")
GPU_EVIDENCE_FORMATS = ("nvidia", "dev-gpu")  # GPU reports that ride along a CPU attestation
MAX_EVIDENCE_BYTES = 64 * 1024
MAX_ENDORSEMENTS_BYTES = 64 * 1024
MAX_POLICY_BYTES = 32 * 1024
MAX_GPUS = 8  # GPU reports one attestation may carry
MAX_GPU_REPORT_BYTES = 32 * 1024
MAX_GPU_CHAIN_CHARS = 16 * 1024  # PEM text of a GPU's certificate chain
GLOBAL_SCOPE = "*"  # a measurement approved for every model


# --- the tee module's state keys (shared with clients, who check proofs of them) ----------------
# Layout documented in haca/chain/modules/tee/keeper.py.

PREFIX = b"tee/"
POLICY_KEY = PREFIX + b"policy"
APPROVAL_PREFIX = PREFIX + b"approval/"
ENCLAVE_PREFIX = PREFIX + b"enclave/"
NODE_KEY_PREFIX = PREFIX + b"node_key/"
COVER_PREFIX = PREFIX + b"cover/"
ATTESTATION_PREFIX = PREFIX + b"attestation/"
LAPSE_PREFIX = PREFIX + b"lapse/"
REVOKED_PREFIX = PREFIX + b"revoked/"
GPU_REQUIRED_PREFIX = PREFIX + b"gpu_required/"


def addr_bytes(address: str) -> bytes:
    return bytes.fromhex(address[2:])


def u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


def approval_key(scope: str, measurement_id: str) -> bytes:
    return APPROVAL_PREFIX + scope.encode() + b"/" + measurement_id.encode()


def gpu_required_key(scope: str) -> bytes:
    return GPU_REQUIRED_PREFIX + scope.encode()


def revoked_key(scope: str, measurement_id: str) -> bytes:
    return REVOKED_PREFIX + scope.encode() + b"/" + measurement_id.encode()


def enclave_key(key: str) -> bytes:
    return ENCLAVE_PREFIX + addr_bytes(key)


def cover_key(key: str, start: int) -> bytes:
    return COVER_PREFIX + addr_bytes(key) + u64(start)


def attestation_key(key: str, start: int) -> bytes:
    return ATTESTATION_PREFIX + addr_bytes(key) + u64(start)


def lapse_key(height: int, key: str) -> bytes:
    return LAPSE_PREFIX + u64(height) + addr_bytes(key)


def _format(value: Any) -> str:
    if value not in ATTESTATION_FORMATS:
        raise ValueError(f"format: expected one of {list(ATTESTATION_FORMATS)}")
    return str(value)


def _measurement_id(value: Any) -> str:
    text = f.text(value, "measurement_id", 80)
    fmt, colon, digest = text.partition(":")
    if not colon or fmt not in ATTESTATION_FORMATS or len(digest) != 64 or digest != digest.lower():
        raise ValueError("measurement_id: expected <format>:<64 lowercase hex> (see `haca attestation verify`)")
    bytes.fromhex(digest)
    return text


def _scope(value: Any) -> str:
    return GLOBAL_SCOPE if value == GLOBAL_SCOPE else f.name(value, "model")


@dataclass(frozen=True)
class GpuEvidence:
    """One GPU's confidential-computing report, bound to the same enclave key as the CPU evidence
    it travels with (its nonce is `haca.proofs.tee.binding.gpu_report_nonce` of that binding).
    `report`: nvidia: the SPDM GET_MEASUREMENTS request and signed response; dev-gpu: the DEV GPU
    document (haca.proofs.tee.dev_gpu). `chain`: the GPU's certificate chain, PEM text, leaf first.

    JSON: ``{"format": "nvidia", "report": "0x<hex>", "chain": "-----BEGIN CERTIFICATE-----..."}``."""

    format: str  # one of GPU_EVIDENCE_FORMATS
    report: bytes
    chain: bytes

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "report": "0x" + self.report.hex(), "chain": self.chain.decode("ascii")}

    @classmethod
    def from_json(cls, value: Any, what: str = "gpu") -> GpuEvidence:
        doc = f.require_fields(value, {"format", "report", "chain"}, what)
        if doc["format"] not in GPU_EVIDENCE_FORMATS:
            raise ValueError(f"{what}.format: expected one of {list(GPU_EVIDENCE_FORMATS)}")
        report = f.hex_bytes(doc["report"], f"{what}.report", MAX_GPU_REPORT_BYTES)
        if not report:
            raise ValueError(f"{what}.report: must not be empty")
        chain = doc["chain"]
        if (
            not isinstance(chain, str)
            or not chain.isascii()
            or len(chain) > MAX_GPU_CHAIN_CHARS
            or not chain.lstrip().startswith("-----BEGIN CERTIFICATE-----")
        ):
            raise ValueError(
                f"{what}.chain: expected PEM certificate text (leaf first) of at most {MAX_GPU_CHAIN_CHARS} characters"
            )
        return cls(str(doc["format"]), report, chain.encode("ascii"))


def gpus_json(gpus: tuple[GpuEvidence, ...]) -> list[dict[str, Any]]:
    return [g.to_json() for g in gpus]


def gpus_eip712(gpus: tuple[GpuEvidence, ...]) -> bytes:
    """What an attestation's signature covers of its GPU reports: nothing (empty bytes) when it has
    none, else the canonical JSON of their list (each as in `GpuEvidence.to_json`, in order)."""
    return canonical_json(gpus_json(gpus)) if gpus else b""


def parse_gpus(value: Any) -> tuple[GpuEvidence, ...]:
    """The `gpus` field: a non-empty list of at most MAX_GPUS distinct reports (omitted when none)."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_GPUS:
        raise ValueError(f"gpus: expected a list of 1 to {MAX_GPUS} GPU reports (omit the field when there are none)")
    gpus = tuple(GpuEvidence.from_json(item, f"gpus[{i}]") for i, item in enumerate(value))
    for i, gpu in enumerate(gpus):
        for j in range(i):
            if gpus[j].report == gpu.report:
                raise ValueError(f"gpus[{i}]: the same report as gpus[{j}] (one report per GPU)")
    return gpus


@register_msg
@dataclass(frozen=True)
class MsgAttestEnclave:
    """A node registers an enclave key, or re-attests it (a heartbeat): `evidence` must bind
    key_binding(chain id, node, key, hash of block `nonce_height`) as its report data, and each of
    `gpus` (the enclave's confidential GPUs, none or up to MAX_GPUS) must carry
    gpu_report_nonce(the same) as its nonce. JSON: `gpus` is omitted when empty."""

    type_name: ClassVar[str] = "tee/attest_enclave"
    eip712_name: ClassVar[str] = "MsgAttestEnclave"
    eip712_fields: ClassVar[list[tuple[str, str]]] = [
        ("key", "address"),
        ("format", "string"),
        ("evidence", "bytes"),
        ("endorsements", "bytes"),
        ("nonceHeight", "uint64"),
        ("gpus", "bytes"),  # gpus_eip712: empty when the attestation has no GPU reports
    ]

    key: str  # the enclave's receipt-signing address
    format: str
    evidence: bytes
    endorsements: bytes  # tdx/sgx: DCAP collateral JSON; snp: VCEK (DER); others: empty
    nonce_height: int
    gpus: tuple[GpuEvidence, ...] = ()

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "key": self.key,
            "format": self.format,
            "evidence": "0x" + self.evidence.hex(),
            "endorsements": "0x" + self.endorsements.hex(),
            "nonce_height": self.nonce_height,
        }
        if self.gpus:
            doc["gpus"] = gpus_json(self.gpus)
        return doc

    def to_eip712(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "format": self.format,
            "evidence": self.evidence,
            "endorsements": self.endorsements,
            "nonceHeight": self.nonce_height,
            "gpus": gpus_eip712(self.gpus),
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> MsgAttestEnclave:
        names = {"key", "format", "evidence", "endorsements", "nonce_height"}
        if isinstance(value, dict) and "gpus" in value:
            names.add("gpus")
        doc = f.require_fields(value, names, cls.type_name)
        evidence = f.hex_bytes(doc["evidence"], "evidence", MAX_EVIDENCE_BYTES)
        if not evidence:
            raise ValueError("evidence: must not be empty")
        return cls(
            f.address(doc["key"], "key"),
            _format(doc["format"]),
            evidence,
            f.hex_bytes(doc["endorsements"], "endorsements", MAX_ENDORSEMENTS_BYTES),
            f.uint(doc["nonce_height"], "nonce_height", 64),
            parse_gpus(doc["gpus"]) if "gpus" in doc else (),
        )


@dataclass(frozen=True)
class _MeasurementMsg:
    eip712_fields: ClassVar[list[tuple[str, str]]] = [("measurementId", "string"), ("model", "string")]

    measurement_id: str
    model: str = GLOBAL_SCOPE  # a model name, or "*" for every model

    def to_json(self) -> dict[str, Any]:
        return {"measurement_id": self.measurement_id, "model": self.model}

    def to_eip712(self) -> dict[str, Any]:
        return {"measurementId": self.measurement_id, "model": self.model}

    @classmethod
    def _parse(cls, value: dict[str, Any], what: str) -> tuple[str, str]:
        doc = f.require_fields(value, {"measurement_id", "model"}, what)
        return _measurement_id(doc["measurement_id"]), _scope(doc["model"])


@register_msg
@dataclass(frozen=True)
class MsgApproveMeasurement(_MeasurementMsg):
    """The authority approves enclave code (by measurement id) for one model or for every model."""

    type_name: ClassVar[str] = "tee/approve_measurement"
    eip712_name: ClassVar[str] = "MsgApproveMeasurement"

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> MsgApproveMeasurement:
        return cls(*cls._parse(value, cls.type_name))


@register_msg
@dataclass(frozen=True)
class MsgRevokeMeasurement(_MeasurementMsg):
    """The authority revokes an approval: from this block on, no receipt from an enclave with
    that measurement settles (for that model, or for every model), whatever its height."""

    type_name: ClassVar[str] = "tee/revoke_measurement"
    eip712_name: ClassVar[str] = "MsgRevokeMeasurement"

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> MsgRevokeMeasurement:
        return cls(*cls._parse(value, cls.type_name))


@register_msg
@dataclass(frozen=True)
class MsgSetTeePolicy:
    """The authority changes some fields of the TEE policy (the others keep their values)."""

    type_name: ClassVar[str] = "tee/set_policy"
    eip712_name: ClassVar[str] = "MsgSetTeePolicy"
    eip712_fields: ClassVar[list[tuple[str, str]]] = [("policy", "string")]

    policy: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy}

    def to_eip712(self) -> dict[str, Any]:
        return {"policy": canonical_json(self.policy).decode()}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> MsgSetTeePolicy:
        doc = f.require_fields(value, {"policy"}, cls.type_name)
        policy = doc["policy"]
        if not isinstance(policy, dict) or not policy:
            raise ValueError("policy: expected a non-empty object")
        if len(canonical_json(policy)) > MAX_POLICY_BYTES:
            raise ValueError(f"policy: at most {MAX_POLICY_BYTES} bytes")
        return cls(json.loads(canonical_json(policy)))


# --- what the tee module stores and answers about an enclave key --------------------------------

_GPU_SUMMARY_FIELDS = {"format", "chip", "board", "driver_version", "vbios_version", "dev"}


def _gpu_summary(value: Any, what: str) -> dict[str, Any]:
    doc = f.require_fields(value, _GPU_SUMMARY_FIELDS, what)
    if not isinstance(doc["dev"], bool) or not all(isinstance(doc[k], str) for k in _GPU_SUMMARY_FIELDS - {"dev"}):
        raise ValueError(f"{what}: dev is true or false, the other fields are strings")
    return dict(doc)


def _measurement(value: Any) -> str:
    """`<format>:<sha256 hex>` (haca.proofs.tee.binding.measurement_id)."""
    platform, _, digest = value.partition(":") if isinstance(value, str) else ("", "", "")
    if not (platform and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise ValueError("measurement_id: expected '<format>:' followed by 64 lower-case hex digits")
    return str(value)


@dataclass(frozen=True)
class EnclaveRecord:
    """An attested enclave key (`/tee/enclave`'s "enclave"): the node that registered it, what its
    latest attestation showed (platform format, measurement, DEV or debug, TCB status, a summary of
    each GPU report), and its coverage: registered, last attested, good until."""

    key: str
    node: str
    format: str  # attestation format: the platform ("dev" for the labelled DEV platform)
    measurement_id: str
    dev: bool
    debug: bool
    tcb_status: str
    gpus: tuple[dict[str, Any], ...]  # per GPU report: format, chip, board, driver/VBIOS version, dev
    registered_height: int = 0
    attested_height: int = 0
    good_until: int = 0
    lapsed: bool = False  # its coverage ended without a heartbeat (until it attests again)

    def to_json(self) -> dict[str, Any]:
        lapsed = {"lapsed": True} if self.lapsed else {}
        return lapsed | {
            "key": self.key,
            "node": self.node,
            "format": self.format,
            "measurement_id": self.measurement_id,
            "dev": self.dev,
            "debug": self.debug,
            "tcb_status": self.tcb_status,
            "gpus": [dict(g) for g in self.gpus],
            "registered_height": self.registered_height,
            "attested_height": self.attested_height,
            "good_until": self.good_until,
        }

    @classmethod
    def from_json(cls, value: Any) -> EnclaveRecord:
        names = set(cls.__dataclass_fields__) - (
            {"lapsed"} if isinstance(value, dict) and "lapsed" not in value else set()
        )
        doc = f.require_fields(value, names, "enclave record")
        gpus = doc["gpus"]
        if not isinstance(gpus, list) or len(gpus) > MAX_GPUS:
            raise ValueError(f"gpus: expected a list of at most {MAX_GPUS} GPU summaries")
        return cls(
            f.address(doc["key"], "key"),
            f.address(doc["node"], "node"),
            f.text(doc["format"], "format", 32),
            _measurement(doc["measurement_id"]),
            f.flag(doc["dev"], "dev"),
            f.flag(doc["debug"], "debug"),
            f.text(doc["tcb_status"], "tcb_status", 64),
            tuple(_gpu_summary(g, f"gpus[{i}]") for i, g in enumerate(gpus)),
            f.height(doc["registered_height"], "registered_height"),
            f.height(doc["attested_height"], "attested_height"),
            f.height(doc["good_until"], "good_until"),
            f.flag(doc.get("lapsed", False), "lapsed"),
        )
