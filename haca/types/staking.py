"""staking module messages: bond and unbond the signer's stake (nodes and validators)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from haca.crypto.consensus import SIGNATURE_SIZE
from haca.crypto.keys import PrivateKey
from haca.types import eip712
from haca.types import fields as f
from haca.types.tx import register_msg


@dataclass(frozen=True)
class _StakeMsg:
    eip712_fields: ClassVar[list[tuple[str, str]]] = [("amount", "uint256")]
    type_name: ClassVar[str]

    amount: int

    def to_json(self) -> dict[str, Any]:
        return {"amount": str(self.amount)}

    def to_eip712(self) -> dict[str, Any]:
        return {"amount": self.amount}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Self:
        doc = f.require_fields(value, {"amount"}, cls.type_name)
        amount = f.uint(doc["amount"], "amount")
        if amount == 0:
            raise ValueError("amount must be positive")
        return cls(amount)


@register_msg
@dataclass(frozen=True)
class MsgBond(_StakeMsg):
    """Bond `amount` of the signer's balance: a node needs the minimum stake of each mode it
    serves to register and to settle; bonded stake is what a fault is slashed from."""

    type_name: ClassVar[str] = "staking/bond"
    eip712_name: ClassVar[str] = "MsgBond"


@register_msg
@dataclass(frozen=True)
class MsgUnbond(_StakeMsg):
    """Start unbonding `amount`: it stays slashable and is paid back `unbonding_period` blocks
    later (later still while a claim against the signer is pending)."""

    type_name: ClassVar[str] = "staking/unbond"
    eip712_name: ClassVar[str] = "MsgUnbond"


MAX_MONIKER = 64


def _moniker(value: Any) -> str:
    moniker = f.text(value, "moniker", MAX_MONIKER)
    if not moniker.isprintable():
        raise ValueError("moniker: printable characters only")
    return moniker


def consensus_pub_key(value: Any) -> bytes:
    """A validator's consensus key: an ed25519 public key, 32 bytes, base64 (as CometBFT writes it)."""
    raw = f.base64_bytes(value, "pub_key", 32)
    if len(raw) != 32:
        raise ValueError("pub_key: expected a 32-byte ed25519 public key (base64)")
    return raw


def _possession(value: Any) -> bytes:
    raw = f.base64_bytes(value, "possession", SIGNATURE_SIZE)
    if len(raw) != SIGNATURE_SIZE:
        raise ValueError("possession: expected a 64-byte ed25519 signature (base64)")
    return raw


@register_msg
@dataclass(frozen=True)
class MsgCreateValidator:
    """Make the signer the operator of a validator with consensus key `pub_key`, bonding
    `self_bond` more: its voting power is its operator's bonded stake in units of the `power_unit`
    param, and it joins the set (CometBFT applies it two blocks later) when that puts it among the
    `max_validators` most powerful with at least `min_validator_stake` bonded. `possession`: the
    consensus key's signature over the chain id and the signer's address
    (haca.crypto.consensus), so no one can register a key that is not theirs."""

    type_name: ClassVar[str] = "staking/create_validator"
    eip712_name: ClassVar[str] = "MsgCreateValidator"
    eip712_fields: ClassVar[list[tuple[str, str]]] = [
        ("pubKey", "bytes"),
        ("moniker", "string"),
        ("selfBond", "uint256"),
        ("possession", "bytes"),
    ]

    pub_key: bytes
    moniker: str
    self_bond: int
    possession: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "pub_key": base64.b64encode(self.pub_key).decode(),
            "moniker": self.moniker,
            "self_bond": str(self.self_bond),
            "possession": base64.b64encode(self.possession).decode(),
        }

    def to_eip712(self) -> dict[str, Any]:
        return {
            "pubKey": self.pub_key,
            "moniker": self.moniker,
            "selfBond": self.self_bond,
            "possession": self.possession,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> MsgCreateValidator:
        doc = f.require_fields(value, {"pub_key", "moniker", "self_bond", "possession"}, cls.type_name)
        return cls(
            consensus_pub_key(doc["pub_key"]),
            _moniker(doc["moniker"]),
            f.uint(doc["self_bond"], "self_bond"),
            _possession(doc["possession"]),
        )


@register_msg
@dataclass(frozen=True)
class MsgEditValidator:
    """Rename the signer's validator."""

    type_name: ClassVar[str] = "staking/edit_validator"
    eip712_name: ClassVar[str] = "MsgEditValidator"
    eip712_fields: ClassVar[list[tuple[str, str]]] = [("moniker", "string")]

    moniker: str

    def to_json(self) -> dict[str, Any]:
        return {"moniker": self.moniker}

    def to_eip712(self) -> dict[str, Any]:
        return {"moniker": self.moniker}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> MsgEditValidator:
        doc = f.require_fields(value, {"moniker"}, cls.type_name)
        return cls(_moniker(doc["moniker"]))


class _NoFields:
    """A message that says nothing but who signed it."""

    type_name: ClassVar[str]
    eip712_fields: ClassVar[list[tuple[str, str]]] = []

    def to_json(self) -> dict[str, Any]:
        return {}

    def to_eip712(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Self:
        f.require_fields(value, set(), cls.type_name)
        return cls()


@register_msg
@dataclass(frozen=True)
class MsgLeaveValidator(_NoFields):
    """Take the signer's validator out of the set (power 0, two blocks later). Its stake stays
    bonded until unbonded (MsgUnbond), and slashable for what it signed while in the set."""

    type_name: ClassVar[str] = "staking/leave_validator"
    eip712_name: ClassVar[str] = "MsgLeaveValidator"


@register_msg
@dataclass(frozen=True)
class MsgUnjail(_NoFields):
    """Bring the signer's validator back after a downtime jail (once its jail time is served and
    its operator still has the minimum stake); its power returns two blocks later. A validator
    jailed for a duplicate vote is jailed for good."""

    type_name: ClassVar[str] = "staking/unjail"
    eip712_name: ClassVar[str] = "MsgUnjail"


GENESIS_VALIDATOR_FIELDS = [
    ("chainId", "string"),
    ("operator", "address"),
    ("pubKey", "bytes"),
    ("moniker", "string"),
    ("bond", "uint256"),
    ("nodeId", "string"),
    ("p2p", "string"),
    ("possession", "bytes"),
]


@dataclass(frozen=True)
class GenesisValidator:
    """One operator's entry for a new network's genesis (`haca validator gentx`): its validator's
    consensus key and peer address, and the bond it takes from the operator's genesis balance —
    signed by the operator (EIP-712), so `haca network collect` takes no entry it did not sign, with
    the consensus key's proof of possession for that operator (no one can list another's key)."""

    chain_id: str
    operator: str
    pub_key: bytes
    moniker: str
    bond: int
    node_id: str  # CometBFT's node id (hex of 20 bytes)
    p2p: str  # host:port its peers dial
    possession: bytes  # the consensus key's signature over chain id and operator (haca.crypto.consensus)

    def eip712_message(self) -> dict[str, Any]:
        return {
            "chainId": self.chain_id,
            "operator": self.operator,
            "pubKey": self.pub_key,
            "moniker": self.moniker,
            "bond": self.bond,
            "nodeId": self.node_id,
            "p2p": self.p2p,
            "possession": self.possession,
        }

    def sign(self, key: PrivateKey) -> bytes:
        return eip712.sign(key, "GenesisValidator", GENESIS_VALIDATOR_FIELDS, self.eip712_message())

    def signer(self, signature: bytes) -> str:
        return eip712.signer_of("GenesisValidator", GENESIS_VALIDATOR_FIELDS, self.eip712_message(), signature)

    @property
    def peer(self) -> str:
        return f"{self.node_id}@{self.p2p}"

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "operator": self.operator,
            "pub_key": base64.b64encode(self.pub_key).decode(),
            "moniker": self.moniker,
            "bond": str(self.bond),
            "node_id": self.node_id,
            "p2p": self.p2p,
            "possession": base64.b64encode(self.possession).decode(),
        }

    @classmethod
    def from_json(cls, value: Any) -> GenesisValidator:
        doc = f.require_fields(value, set(cls.__dataclass_fields__), "genesis validator")
        node_id = f.text(doc["node_id"], "node_id", 40)
        if len(node_id) != 40 or any(c not in "0123456789abcdef" for c in node_id):
            raise ValueError("node_id: expected 40 lowercase hex characters (cometbft show-node-id)")
        p2p = f.text(doc["p2p"], "p2p", 255)
        host, _, port = p2p.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("p2p: expected host:port")
        return cls(
            chain_id=f.text(doc["chain_id"], "chain_id"),
            operator=f.address(doc["operator"], "operator"),
            pub_key=consensus_pub_key(doc["pub_key"]),
            moniker=_moniker(doc["moniker"]),
            bond=f.uint(doc["bond"], "bond"),
            node_id=node_id,
            p2p=p2p,
            possession=_possession(doc["possession"]),
        )
