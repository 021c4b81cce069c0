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


def addr_bytes(address: str) -> bytes:
    return bytes.fromhex(address[2:])


def u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


def approval_key(scope: str, measurement_id: str) -> bytes:
    return APPROVAL_PREFIX + scope.encode() + b"/" + measurement_id.encode()


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
    `report`: nvidia: the SPDM GET_MEASUREMENTS request and signed response; `chain`: the GPU's
    certificate chain (PEM, leaf first)."""

    format: str  # one of GPU_EVIDENCE_FORMATS
    report: bytes
    chain: bytes


@register_msg
@dataclass(frozen=True)
class MsgAttestEnclave:
    """A node registers an enclave key, or re-attests it (a heartbeat): `evidence` must bind
    key_binding(chain id, node, key, hash of block `nonce_height`) as its report data."""

    type_name: ClassVar[str] = "tee/attest_enclave"
    eip712_name: ClassVar[str] = "MsgAttestEnclave"
    eip712_fields: ClassVar[list[tuple[str, str]]] = [
        ("key", "address"),
        ("format", "string"),
        ("evidence", "bytes"),
        ("endorsements", "bytes"),
        ("nonceHeight", "uint64"),
    ]

    key: str  # the enclave's receipt-signing address
    format: str
    evidence: bytes
    endorsements: bytes  # tdx/sgx: DCAP collateral JSON; snp: VCEK (DER); others: empty
    nonce_height: int

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "format": self.format,
            "evidence": "0x" + self.evidence.hex(),
            "endorsements": "0x" + self.endorsements.hex(),
            "nonce_height": self.nonce_height,
        }

    def to_eip712(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "format": self.format,
            "evidence": self.evidence,
            "endorsements": self.endorsements,
            "nonceHeight": self.nonce_height,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> MsgAttestEnclave:
        doc = f.require_fields(value, {"key", "format", "evidence", "endorsements", "nonce_height"}, cls.type_name)
        evidence = f.hex_bytes(doc["evidence"], "evidence", MAX_EVIDENCE_BYTES)
        if not evidence:
            raise ValueError("evidence: must not be empty")
        return cls(
            f.address(doc["key"], "key"),
            _format(doc["format"]),
            evidence,
            f.hex_bytes(doc["endorsements"], "endorsements", MAX_ENDORSEMENTS_BYTES),
            f.uint(doc["nonce_height"], "nonce_height", 64),
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
