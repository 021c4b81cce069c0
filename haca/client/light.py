"""Light-client checks of CometBFT headers: the header hash, and a commit signed by more than
2/3 of a trusted validator set's voting power (ed25519 over canonical precommit sign bytes).

This is what lets a client trust an app hash, and through it a state proof, without trusting
the RPC node that served them.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from tendermint.crypto import keys_pb2
from tendermint.types import canonical_pb2, types_pb2, validator_pb2

from haca.client.errors import HacaError
from haca.crypto.merkle import merkle_root  # RFC 6962, as CometBFT's merkle.HashFromByteSlices
from haca.types.encoding import encode_uvarint

BLOCK_ID_FLAG_COMMIT = 2
# Header fields after last_block_id, in Header.Hash() order; each is a gogoproto BytesValue.
_HASH_FIELDS = (
    "last_commit_hash",
    "data_hash",
    "validators_hash",
    "next_validators_hash",
    "consensus_hash",
    "app_hash",
    "last_results_hash",
    "evidence_hash",
    "proposer_address",
)


class LightClientError(HacaError):
    code = "light_client"


@dataclass(frozen=True)
class TrustedValidator:
    address: bytes
    pub_key: bytes  # ed25519, 32 bytes
    power: int


def validators_from_rpc(items: list[dict[str, Any]]) -> list[TrustedValidator]:
    out = []
    for v in items:
        if v["pub_key"]["type"] != "tendermint/PubKeyEd25519":
            raise LightClientError(f"unsupported validator key type {v['pub_key']['type']}")
        out.append(
            TrustedValidator(
                bytes.fromhex(v["address"]), base64.b64decode(v["pub_key"]["value"]), int(v["voting_power"])
            )
        )
    return out


def verify_signed_header(signed_header: dict[str, Any], validators: list[TrustedValidator], chain_id: str) -> bytes:
    """Check a `commit` RPC answer against a trusted validator set; return the header's app hash."""
    header, commit = signed_header["header"], signed_header["commit"]
    if header["chain_id"] != chain_id:
        raise LightClientError(f"header is for chain {header['chain_id']!r}, not {chain_id!r}")
    if header["validators_hash"].lower() != validator_set_hash(validators).hex():
        raise LightClientError("header's validators_hash does not match the trusted validator set")
    header_hash = hash_header(header)
    if commit["block_id"]["hash"].lower() != header_hash.hex() or commit["height"] != header["height"]:
        raise LightClientError("commit is not for this header")
    total = sum(v.power for v in validators)
    signed_power = commit_power(commit, validators, chain_id)
    if signed_power * 3 <= total * 2:
        raise LightClientError(f"commit signed by {signed_power} of {total} voting power, not more than 2/3")
    return bytes.fromhex(header["app_hash"])


def commit_power(commit: dict[str, Any], validators: list[TrustedValidator], chain_id: str) -> int:
    """The voting power of `validators` (matched by address, each counted once) whose precommit
    for the commit's block is in it and verifies. A signature that does not verify here is not
    counted (never an error): CometBFT checks votes with ZIP-215's rules, a little wider than
    OpenSSL's, so one validator's odd-but-valid key must not make every header unverifiable."""
    by_address = {v.address: v for v in validators}
    signed_power = 0
    seen: set[bytes] = set()
    for sig in commit["signatures"]:
        if sig["block_id_flag"] != BLOCK_ID_FLAG_COMMIT:
            continue
        address = bytes.fromhex(sig["validator_address"])
        validator = by_address.get(address)
        if validator is None or address in seen:
            continue
        seen.add(address)
        message = precommit_sign_bytes(
            chain_id, int(commit["height"]), int(commit["round"]), commit["block_id"], sig["timestamp"]
        )
        try:
            Ed25519PublicKey.from_public_bytes(validator.pub_key).verify(base64.b64decode(sig["signature"]), message)
        except (InvalidSignature, ValueError):
            continue  # not counted: the rest must still carry the power
        signed_power += validator.power
    return signed_power


def precommit_sign_bytes(chain_id: str, height: int, round_: int, block_id: dict[str, Any], timestamp: str) -> bytes:
    seconds, nanos = parse_rfc3339_nanos(timestamp)
    vote = canonical_pb2.CanonicalVote(
        type=types_pb2.SIGNED_MSG_TYPE_PRECOMMIT, height=height, round=round_, chain_id=chain_id
    )
    vote.block_id.hash = bytes.fromhex(block_id["hash"])
    vote.block_id.part_set_header.total = int(block_id["parts"]["total"])
    vote.block_id.part_set_header.hash = bytes.fromhex(block_id["parts"]["hash"])
    vote.timestamp.seconds, vote.timestamp.nanos = seconds, nanos
    body = vote.SerializeToString()
    return encode_uvarint(len(body)) + body


def hash_header(header: dict[str, Any]) -> bytes:
    """CometBFT's Header.Hash(): a simple Merkle tree over the proto encoding of each field."""
    version = types_pb2.Header().version
    version.block, version.app = int(header["version"]["block"]), int(header["version"].get("app", 0))
    seconds, nanos = parse_rfc3339_nanos(header["time"])
    ts = types_pb2.Header().time
    ts.seconds, ts.nanos = seconds, nanos
    last = types_pb2.BlockID(hash=bytes.fromhex(header["last_block_id"]["hash"]))
    last.part_set_header.total = int(header["last_block_id"]["parts"]["total"])
    last.part_set_header.hash = bytes.fromhex(header["last_block_id"]["parts"]["hash"])
    fields = [
        version.SerializeToString(),
        _bytes_value(header["chain_id"].encode()),
        _int64_value(int(header["height"])),
        ts.SerializeToString(),
        last.SerializeToString(),
        *(_bytes_value(bytes.fromhex(header[name])) for name in _HASH_FIELDS),
    ]
    return merkle_root(fields)


def validator_set_hash(validators: list[TrustedValidator]) -> bytes:
    leaves = []
    for v in sorted(validators, key=lambda v: (-v.power, v.address)):  # CometBFT's canonical order
        simple = validator_pb2.SimpleValidator(pub_key=keys_pb2.PublicKey(ed25519=v.pub_key), voting_power=v.power)
        leaves.append(simple.SerializeToString())
    return merkle_root(leaves)


def parse_rfc3339_nanos(text: str) -> tuple[int, int]:
    """Seconds and nanoseconds of an RFC 3339 UTC time with up to 9 fractional digits."""
    main, _, frac = text.rstrip("Z").partition(".")
    moment = datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return int(moment.timestamp()), int((frac or "0").ljust(9, "0")[:9])


def _bytes_value(data: bytes) -> bytes:  # gogoproto BytesValue/StringValue: field 1, omitted when empty
    return b"\x0a" + encode_uvarint(len(data)) + data if data else b""


def _int64_value(value: int) -> bytes:
    return b"\x08" + encode_uvarint(value) if value else b""
