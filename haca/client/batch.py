"""A client's proof that its receipt settled in a batch (MsgSettleBatch), from the chain alone.

1. The request's settled mark (`/inference/request`), proven against a light-client-checked app
   hash: it names the receipt id, the batch and the receipt's index in it.
2. The batch record (`/inference/batch`), proven likewise: its Merkle root and count.
3. The batch tx, from the block at the mark's height: the receipt ids it lists (recomputed here)
   give the inclusion path, which must lead from the receipt to the proven root. The tx bytes are
   not trusted: a wrong tx cannot produce a path to the proven root.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from haca.client.chain import ChainClient
from haca.client.errors import ProofInvalid
from haca.types.batch import InclusionProof, MsgSettleBatch
from haca.types.receipt import Receipt
from haca.types.tx import TxDecodeError, decode_tx

SETTLED_PREFIX = b"inference/settled/"


@dataclass(frozen=True)
class BatchInclusion:
    mark: dict[str, Any]  # the request's settled mark (proven)
    batch: dict[str, Any]  # the batch record (proven)
    proof: InclusionProof
    height: int  # the state height the records were proven at

    def to_json(self) -> dict[str, Any]:
        return {
            "mark": self.mark,
            "batch": _summary(self.batch),
            "inclusion": self.proof.to_json(),
            "height": self.height,
        }


def _summary(batch: dict[str, Any]) -> dict[str, Any]:
    keep = ("batch_id", "node", "mode", "root", "count", "signer", "height", "settled")
    return {k: batch[k] for k in keep if k in batch} | {"rejected": len(batch.get("rejected", []))}


def prove_batched_receipt(chain: ChainClient, receipt: Receipt) -> BatchInclusion:
    """Prove that `receipt` settled in a batch; raises ProofInvalid when any step fails, QueryFailed
    when its request has not settled, and ValueError when it settled alone (not in a batch)."""
    mark_p = chain.query_proven_keys("/inference/request", f"{receipt.client}/{receipt.request_id}".encode())
    raw = next((v for k, v in mark_p[1].items() if k.startswith(SETTLED_PREFIX)), b"")
    if not raw:
        raise ProofInvalid(f"the proof shows no settlement of request {receipt.request_id}")
    if raw[:1] != b"{" or "batch" not in (mark := json.loads(raw)):
        raise ValueError(f"request {receipt.request_id} settled alone, not in a batch")
    if mark["receipt_id"] != receipt.id:
        raise ProofInvalid(f"the request settled with receipt {mark['receipt_id']}, not {receipt.id}")
    batch_p = chain.query_proven("/inference/batch", str(mark["batch"]).encode())
    batch = json.loads(batch_p.raw)
    root = bytes.fromhex(batch["root"][2:])
    ids = _batch_ids(chain, int(mark["height"]), str(mark["batch"]))
    index = int(mark["index"])
    if len(ids) != int(batch["count"]) or index >= len(ids) or "0x" + ids[index].hex() != receipt.id:
        raise ProofInvalid(f"receipt {receipt.id} is not item {index} of batch {mark['batch']}")
    proof = InclusionProof.build(str(mark["batch"]), ids, index)
    try:
        proof.verify(root)
    except ValueError as exc:
        raise ProofInvalid(str(exc)) from exc
    return BatchInclusion(mark, batch, proof, min(mark_p[2], batch_p.height))


def _batch_ids(chain: ChainClient, height: int, batch_id: str) -> list[bytes]:
    """The receipt ids of batch `batch_id`, from its tx in the block at `height`."""
    txs = chain.rpc.block(height)["block"]["data"]["txs"] or []
    for encoded in txs:
        try:
            tx = decode_tx(base64.b64decode(encoded))
        except TxDecodeError:
            continue
        for msg in tx.msgs:
            if isinstance(msg, MsgSettleBatch):
                ids = msg.receipt_ids(chain.chain_id, tx.signer)
                if msg.header(chain.chain_id, tx.signer, ids).id == batch_id:
                    return ids
    raise ProofInvalid(f"block {height} holds no tx of batch {batch_id}")
