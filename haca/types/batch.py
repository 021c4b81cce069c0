"""Batch settlement (`MsgSettleBatch`): many allowance-paid vanilla or tee receipts of one node,
committed to by one Merkle root that the node (vanilla) or its attested enclave (tee) signs once.

What a validator does per item is hashing, never a signature recovery: it rebuilds each receipt
from the item's fields and the batch's shared ones (chain, node, mode, model), hashes it to the
receipt id (its EIP-712 digest, the same bytes the node signed for the client), and the root
over those ids must be the signed one. The client signatures are the allowances', listed once
per batch. A signed root is therefore the node's (or enclave's) signature over every receipt in
it; on chain, claims and equivocation reports still take the receipt as the node signed it for the
client (the root is not accepted there yet).

Wire shape: `items` is base64 of fixed-width records (`ITEM_FORMAT`), one per receipt, because a
batch holds thousands and JSON field parsing would be most of a validator's cost.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

from haca.crypto.eip712 import domain_separator, struct_type_hash
from haca.crypto.hashing import keccak256
from haca.crypto.keys import PrivateKey, recover_signer, sign_digest
from haca.crypto.merkle import inclusion_path, leaf_hash, root_from_path, root_of_leaves
from haca.types import eip712
from haca.types import fields as f
from haca.types.encoding import canonical_json
from haca.types.modes import Mode
from haca.types.payment import SignedPayment, SpendingAllowance
from haca.types.receipt import NO_INSTANCES, RECEIPT_FIELDS, Receipt
from haca.types.tx import register_msg

MAX_BATCH_ITEMS = 4096  # ~760 KB of items as base64: inside the 4 MiB tx limit and the attester's 1 MiB frame
MAX_BATCH_ALLOWANCES = 256
MAX_BATCH_MODELS = 16
BATCH_MODES = (Mode.VANILLA, Mode.TEE)  # zkml items each carry a proof: verifying it is not hashing

# allowance index, model index, request id, input hash, output hash, fee (u128), height hint,
# timestamp, prompt tokens, completion tokens
ITEM_FORMAT = struct.Struct(">HB32s32s32s16sQQII")
ITEM_SIZE = ITEM_FORMAT.size

BATCH_FIELDS = [
    ("chainId", "string"),
    ("node", "address"),
    ("mode", "string"),
    ("root", "bytes32"),
    ("count", "uint32"),
]

_RECEIPT_TYPE_HASH = struct_type_hash("Receipt", tuple(RECEIPT_FIELDS))
_NO_INSTANCES = bytes.fromhex(NO_INSTANCES[2:])


@dataclass(frozen=True)
class ReceiptBatch:
    """What the root signature covers (EIP-712 `ReceiptBatch`); its digest is the batch id."""

    chain_id: str
    node: str
    mode: str
    root: bytes
    count: int

    def eip712_message(self) -> dict[str, Any]:
        return {"chainId": self.chain_id, "node": self.node, "mode": self.mode, "root": self.root, "count": self.count}

    @cached_property
    def digest(self) -> bytes:
        return eip712.digest("ReceiptBatch", BATCH_FIELDS, self.eip712_message())

    @property
    def id(self) -> str:
        return "0x" + self.digest.hex()

    def sign(self, key: PrivateKey) -> bytes:
        return sign_digest(key.secret, self.digest)

    def signer(self, signature: bytes) -> str:
        return recover_signer(self.digest, signature)


@dataclass(frozen=True)
class BatchItem:
    """One receipt's own fields; the rest (chain, node, mode, model, client) come from the batch."""

    allowance: int  # index into the batch's allowances: the paying client and its authorisation
    model: int  # index into the batch's model ids
    request_id: bytes
    input_hash: bytes
    output_hash: bytes
    fee: int
    height_hint: int
    timestamp: int
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def pack(self) -> bytes:
        if self.fee >= 1 << 128:
            raise ValueError(f"fee {self.fee} does not fit a batch item (128 bits)")
        return ITEM_FORMAT.pack(
            self.allowance,
            self.model,
            self.request_id,
            self.input_hash,
            self.output_hash,
            self.fee.to_bytes(16, "big"),
            self.height_hint,
            self.timestamp,
            self.prompt_tokens,
            self.completion_tokens,
        )


class ReceiptHasher:
    """Receipt ids for one batch's shared fields: the per-item work is two keccaks over bytes
    (the strings' hashes and the type hash are computed once). Equal to `Receipt.digest`."""

    def __init__(self, chain_id: str, node: str, mode: str, model_ids: tuple[str, ...]) -> None:
        self._prefix = b"\x19\x01" + domain_separator(eip712.DOMAIN["name"], eip712.DOMAIN["version"])
        self._head = _RECEIPT_TYPE_HASH + keccak256(chain_id.encode()) + bytes(12) + bytes.fromhex(node[2:])
        self._mode = keccak256(mode.encode())
        self._models = [keccak256(model.encode()) for model in model_ids]

    def receipt_id(self, item: BatchItem, client: bytes) -> bytes:
        encoded = b"".join(
            (
                self._head,
                bytes(12),
                client,
                item.request_id,
                self._models[item.model],
                self._mode,
                item.input_hash,
                item.output_hash,
                item.fee.to_bytes(32, "big"),
                item.height_hint.to_bytes(32, "big"),
                item.timestamp.to_bytes(32, "big"),
                _NO_INSTANCES,
                item.prompt_tokens.to_bytes(32, "big"),
                item.completion_tokens.to_bytes(32, "big"),
            )
        )
        return keccak256(self._prefix + keccak256(encoded))


def unpack_items(raw: bytes) -> list[BatchItem]:
    if len(raw) % ITEM_SIZE:
        raise ValueError(f"items: {len(raw)} bytes is not a whole number of {ITEM_SIZE}-byte records")
    items = []
    for values in ITEM_FORMAT.iter_unpack(raw):
        a, m, request, inp, out, fee, height, ts, prompt, completion = values
        items.append(BatchItem(a, m, request, inp, out, int.from_bytes(fee, "big"), height, ts, prompt, completion))
    return items


@register_msg
@dataclass(frozen=True)
class MsgSettleBatch:
    """Settle up to MAX_BATCH_ITEMS allowance-paid receipts of the tx signer (the node) in one
    tx, under one root signature (the node's account key for vanilla, an enclave key attested for
    the node for tee). A bad root signature refuses the whole batch; an item that fails its own
    checks is skipped and recorded as rejected in the batch record, and the others settle."""

    type_name: ClassVar[str] = "inference/settle_batch"
    eip712_name: ClassVar[str] = "MsgSettleBatch"
    eip712_fields: ClassVar[list[tuple[str, str]]] = [("batch", "string")]

    mode: str
    models: tuple[str, ...]
    allowances: tuple[SignedPayment, ...]
    items: tuple[BatchItem, ...]
    signature: bytes  # over ReceiptBatch(chain, node, mode, root, count)

    @cached_property
    def packed_items(self) -> bytes:
        return b"".join(item.pack() for item in self.items)

    @cached_property
    def _json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "models": list(self.models),
            "allowances": [a.to_json() for a in self.allowances],
            "items": base64.b64encode(self.packed_items).decode(),
            "signature": "0x" + self.signature.hex(),
        }

    def to_json(self) -> dict[str, Any]:
        return self._json

    def to_eip712(self) -> dict[str, Any]:
        return {"batch": self._text}

    @cached_property
    def _text(self) -> str:
        return canonical_json(self._json).decode()

    @cached_property
    def spending(self) -> tuple[SpendingAllowance, ...]:
        """The allowances themselves (from_json admits no other kind of payment)."""
        out = tuple(p.value for p in self.allowances)
        if not all(isinstance(a, SpendingAllowance) for a in out):
            raise ValueError("batch items are paid by allowances only")
        return out  # type: ignore[return-value]

    def clients(self) -> list[bytes]:
        """Each allowance's client as 20 bytes (what the receipt hashes)."""
        return [bytes.fromhex(a.value.client[2:]) for a in self.allowances]

    @cached_property
    def _hashed(self) -> dict[tuple[str, str], tuple[list[bytes], ReceiptBatch]]:
        # A decoded tx is reused by CheckTx, rechecks, the proposal and the block: hash it once.
        return {}

    def receipt_ids(self, chain_id: str, node: str) -> list[bytes]:
        """Each item's receipt id, with the batch's chain and node (the tx signer)."""
        return self._hash(chain_id, node)[0]

    def header(self, chain_id: str, node: str) -> ReceiptBatch:
        """What the root signature covers."""
        return self._hash(chain_id, node)[1]

    def _hash(self, chain_id: str, node: str) -> tuple[list[bytes], ReceiptBatch]:
        found = self._hashed.get((chain_id, node))
        if found is None:
            hasher = ReceiptHasher(chain_id, node, self.mode, self.models)
            clients = self.clients()
            ids = [hasher.receipt_id(item, clients[item.allowance]) for item in self.items]
            root = root_of_leaves([leaf_hash(i) for i in ids])
            found = ids, ReceiptBatch(chain_id, node, self.mode, root, len(ids))
            self._hashed[(chain_id, node)] = found
        return found

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> MsgSettleBatch:
        doc = f.require_fields(value, {"mode", "models", "allowances", "items", "signature"}, cls.type_name)
        mode = f.mode(doc["mode"])
        if mode not in BATCH_MODES:
            raise ValueError(f"mode: batches settle {' or '.join(BATCH_MODES)} receipts, not {mode!r}")
        models, allowances = doc["models"], doc["allowances"]
        if not isinstance(models, list) or not 1 <= len(models) <= MAX_BATCH_MODELS:
            raise ValueError(f"models: expected 1 to {MAX_BATCH_MODELS} model ids")
        if not isinstance(allowances, list) or not 1 <= len(allowances) <= MAX_BATCH_ALLOWANCES:
            raise ValueError(f"allowances: expected 1 to {MAX_BATCH_ALLOWANCES} signed allowances")
        payments = tuple(SignedPayment.from_json(a) for a in allowances)
        if any(not isinstance(p.value, SpendingAllowance) for p in payments):
            raise ValueError("allowances: batch items are paid by allowances only (per-request payments: MsgSettle)")
        # Spend and cap are counted per listed allowance: one listed twice would get its cap twice.
        if len({p.value.id for p in payments}) != len(payments):  # type: ignore[union-attr]
            raise ValueError("allowances: an allowance is listed twice")
        if not isinstance(doc["items"], str):
            raise ValueError("items: expected base64 text")
        try:
            raw = base64.b64decode(doc["items"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("items: not base64") from exc
        items = unpack_items(raw)
        if not 1 <= len(items) <= MAX_BATCH_ITEMS:
            raise ValueError(f"items: expected 1 to {MAX_BATCH_ITEMS} receipts")
        for index, item in enumerate(items):
            if item.allowance >= len(payments) or item.model >= len(models):
                raise ValueError(f"item {index}: allowance or model index out of range")
        return cls(
            mode,
            tuple(f.model_id(m) for m in models),
            payments,
            tuple(items),
            f.hex_bytes(doc["signature"], "signature", 65),
        )


def item_receipt(msg: MsgSettleBatch, index: int, chain_id: str, node: str) -> Receipt:
    """The full receipt item `index` stands for (what its client holds, signed by the node)."""
    item = msg.items[index]
    return Receipt(
        chain_id=chain_id,
        node=node,
        client=msg.allowances[item.allowance].value.client,
        request_id="0x" + item.request_id.hex(),
        model_id=msg.models[item.model],
        mode=msg.mode,
        input_hash="0x" + item.input_hash.hex(),
        output_hash="0x" + item.output_hash.hex(),
        fee=item.fee,
        height_hint=item.height_hint,
        timestamp=item.timestamp,
        prompt_tokens=item.prompt_tokens,
        completion_tokens=item.completion_tokens,
    )


def batch_item(receipt: Receipt, allowance: int, model: int) -> BatchItem:
    """The batch record of a receipt (the inverse of `item_receipt`)."""
    if receipt.instances_hash != NO_INSTANCES:
        raise ValueError("a receipt with proof instances (zkml) cannot be batched")
    return BatchItem(
        allowance,
        model,
        bytes.fromhex(receipt.request_id[2:]),
        bytes.fromhex(receipt.input_hash[2:]),
        bytes.fromhex(receipt.output_hash[2:]),
        receipt.fee,
        receipt.height_hint,
        receipt.timestamp,
        receipt.prompt_tokens,
        receipt.completion_tokens,
    )


@dataclass(frozen=True)
class InclusionProof:
    """A receipt's place in a settled batch: check it with `verify` against the batch root the
    chain stores (read with a state proof)."""

    receipt_id: str
    batch_id: str
    index: int
    count: int
    path: tuple[bytes, ...]

    def root(self) -> bytes:
        return root_from_path(leaf_hash(bytes.fromhex(self.receipt_id[2:])), self.index, self.count, list(self.path))

    def verify(self, root: bytes) -> None:
        """Raise ValueError unless the path leads from the receipt to `root`."""
        if self.root() != root:
            raise ValueError(f"receipt {self.receipt_id} is not leaf {self.index} of the batch root {root.hex()}")

    def to_json(self) -> dict[str, Any]:
        return {
            "receipt_id": self.receipt_id,
            "batch_id": self.batch_id,
            "index": self.index,
            "count": self.count,
            "path": ["0x" + p.hex() for p in self.path],
        }

    @classmethod
    def from_json(cls, value: Any) -> InclusionProof:
        doc = f.require_fields(value, {"receipt_id", "batch_id", "index", "count", "path"}, "inclusion proof")
        if not isinstance(doc["path"], list) or len(doc["path"]) > 64:
            raise ValueError("path: expected a list of at most 64 hashes")
        return cls(
            f.bytes32(doc["receipt_id"], "receipt_id"),
            f.bytes32(doc["batch_id"], "batch_id"),
            f.uint(doc["index"], "index", 32),
            f.uint(doc["count"], "count", 32),
            tuple(bytes.fromhex(f.bytes32(p, "path")[2:]) for p in doc["path"]),
        )

    @classmethod
    def build(cls, batch_id: str, ids: list[bytes], index: int) -> InclusionProof:
        path = inclusion_path([leaf_hash(i) for i in ids], index)
        return cls("0x" + ids[index].hex(), batch_id, index, len(ids), tuple(path))


def assemble_batch(
    chain_id: str, node: str, mode: str, entries: list[tuple[Receipt, SignedPayment]]
) -> tuple[MsgSettleBatch, ReceiptBatch]:
    """A batch of `entries` (receipt, the allowance paying it) still to be signed: the message
    without its root signature and the header to sign; sign with `header.sign(key)` and put it in
    with `dataclasses.replace(msg, signature=...)`. Raises ValueError for an entry that does not
    belong (another chain, node or mode, a per-request payment, an allowance of another client)."""
    models: dict[str, int] = {}
    allowances: dict[str, int] = {}
    payments: list[SignedPayment] = []
    items: list[BatchItem] = []
    for receipt, payment in entries:
        if (receipt.chain_id, receipt.node, receipt.mode) != (chain_id, node, mode):
            raise ValueError(f"receipt {receipt.id} is not a {mode} receipt of node {node} on chain {chain_id!r}")
        allowance = payment.value
        if not isinstance(allowance, SpendingAllowance) or allowance.client != receipt.client:
            raise ValueError(f"receipt {receipt.id} is not paid by an allowance of its client")
        if allowance.id not in allowances:
            allowances[allowance.id] = len(payments)
            payments.append(payment)
        model = models.setdefault(receipt.model_id, len(models))
        items.append(batch_item(receipt, allowances[allowance.id], model))
    if len(models) > MAX_BATCH_MODELS or len(payments) > MAX_BATCH_ALLOWANCES or len(items) > MAX_BATCH_ITEMS:
        raise ValueError("too many receipts, models or allowances for one batch")
    msg = MsgSettleBatch(mode, tuple(models), tuple(payments), tuple(items), b"")
    return msg, msg.header(chain_id, node)


@dataclass(frozen=True)
class BatchMark:
    """Where a request settled inside a batch: the chain stores it under the request (its flat
    index), and `/inference/request` answers it. Stored as canonical JSON."""

    batch: str  # the batch id (0x + 64 hex)
    height: int
    index: int  # the item's index in the batch
    receipt_id: str
    status: str  # "settled" | "verified"

    def to_json(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "height": self.height,
            "index": self.index,
            "receipt_id": self.receipt_id,
            "status": self.status,
        }

    def canonical(self) -> bytes:
        """`canonical_json(self.to_json())`, written directly: a batch stores a thousand of these,
        and the general encoder costs ~4 µs each against ~0.3 µs (tested to give the same bytes)."""
        return (
            f'{{"batch":"{self.batch}","height":{self.height},"index":{self.index},'
            f'"receipt_id":"{self.receipt_id}","status":"{self.status}"}}'
        ).encode()

    @classmethod
    def from_json(cls, value: Any) -> BatchMark:
        doc = f.require_fields(value, {"batch", "height", "index", "receipt_id", "status"}, "batch mark")
        status = doc["status"]
        if status not in ("settled", "verified"):
            raise ValueError("batch mark status: expected settled or verified")
        return cls(
            f.bytes32(doc["batch"], "batch"),
            f.uint(doc["height"], "height", 64),
            f.uint(doc["index"], "index", 32),
            f.bytes32(doc["receipt_id"], "receipt_id"),
            status,
        )


@dataclass(frozen=True)
class RejectedItem:
    """A batch item the chain refused: its index, the refusal's ABCI code and reason."""

    index: int
    code: int
    log: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "code": self.code, "log": self.log}

    @classmethod
    def from_json(cls, value: Any) -> RejectedItem:
        doc = f.require_fields(value, {"index", "code", "log"}, "rejected item")
        if not isinstance(doc["log"], str):
            raise ValueError("rejected item log: expected a string")
        return cls(f.uint(doc["index"], "index", 32), f.uint(doc["code"], "code", 32), doc["log"])


@dataclass(frozen=True)
class BatchRecord:
    """A settled batch (`/inference/batch`): what its root signature covered, who signed it (tee:
    the enclave key, its platform and whether that was DEV), what settled and what was refused."""

    batch_id: str
    node: str
    mode: str
    root: str  # 0x + 64 hex
    count: int
    signer: str
    height: int
    settled: int
    rejected: tuple[RejectedItem, ...]
    fees: int  # to the node
    settlement_fees: int  # burned
    attestation: str | None = None  # tee: the signing enclave's attestation format
    dev: bool | None = None

    def to_json(self) -> dict[str, Any]:
        tee = {"attestation": self.attestation, "dev": self.dev} if self.attestation is not None else {}
        return {
            "batch_id": self.batch_id,
            "node": self.node,
            "mode": self.mode,
            "root": self.root,
            "count": self.count,
            "signer": self.signer,
            **tee,
            "height": self.height,
            "settled": self.settled,
            "rejected": [r.to_json() for r in self.rejected],
            "fees": str(self.fees),
            "settlement_fees": str(self.settlement_fees),
        }

    @classmethod
    def from_json(cls, value: Any) -> BatchRecord:
        names = {"batch_id", "node", "mode", "root", "count", "signer", "height", "settled", "rejected", "fees"}
        names |= {"settlement_fees"}
        tee = isinstance(value, dict) and ("attestation" in value or "dev" in value)
        doc = f.require_fields(value, names | ({"attestation", "dev"} if tee else set()), "batch record")
        if not isinstance(doc["rejected"], list):
            raise ValueError("rejected: expected a list")
        if tee and not isinstance(doc["dev"], bool):
            raise ValueError("dev: expected true or false")
        count = f.uint(doc["count"], "count", 32)
        rejected = tuple(RejectedItem.from_json(r) for r in doc["rejected"])
        settled = f.uint(doc["settled"], "settled", 32)
        if settled + len(rejected) != count or any(r.index >= count for r in rejected):
            raise ValueError("settled and rejected items do not add up to the batch's count")
        return cls(
            f.bytes32(doc["batch_id"], "batch_id"),
            f.address(doc["node"], "node"),
            f.mode(doc["mode"]),
            f.bytes32(doc["root"], "root"),
            count,
            f.address(doc["signer"], "signer"),
            f.height(doc["height"], "height"),
            settled,
            rejected,
            f.uint(doc["fees"], "fees"),
            f.uint(doc["settlement_fees"], "settlement_fees"),
            f.text(doc["attestation"], "attestation", 32) if tee else None,
            doc["dev"] if tee else None,
        )
