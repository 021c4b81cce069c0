"""A client's proof that its receipt settled in a batch (MsgSettleBatch), from the chain alone.

1. Where to look: the request's mark (`/inference/request`: batch id, index, height). It comes
   from the chain's derived index and has no state proof: it is only a pointer.
2. The batch record (`/inference/batch`), proven against a light-client-checked app hash: its
   Merkle root, count, height and the indices it rejected.
3. The batch tx, from the block at the record's height: the receipt ids it lists (recomputed here)
   give the inclusion path, which must lead from the receipt to the proven root, at an index the
   record does not list as rejected. The tx bytes are not trusted: a wrong tx cannot produce a path
   to the proven root.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from haca.client.chain import ChainClient
from haca.client.errors import ProofInvalid
from haca.client.records import parse_answer
from haca.types.batch import BatchMark, BatchRecord, InclusionProof, MsgSettleBatch
from haca.types.receipt import Receipt
from haca.types.settlement import request_settlement
from haca.types.tx import TxDecodeError, decode_tx


@dataclass(frozen=True)
class BatchInclusion:
    mark: BatchMark  # the request's mark (a pointer, unproven)
    batch: BatchRecord  # the batch record (proven)
    proof: InclusionProof
    height: int  # the state height the records were proven at

    def to_json(self) -> dict[str, Any]:
        return {
            "mark": self.mark.to_json(),
            "batch": _summary(self.batch),
            "inclusion": self.proof.to_json(),
            "height": self.height,
        }


def _summary(batch: BatchRecord) -> dict[str, Any]:
    keep = ("batch_id", "node", "mode", "root", "count", "signer", "height", "settled")
    return {k: v for k, v in batch.to_json().items() if k in keep} | {"rejected": len(batch.rejected)}


def prove_batched_receipt(chain: ChainClient, receipt: Receipt) -> BatchInclusion:
    """Prove that `receipt` settled in a batch; raises ProofInvalid when any step fails, QueryFailed
    when its request has not settled, and ValueError when it settled alone (not in a batch)."""
    answer = chain.query("/inference/request", f"{receipt.client}/{receipt.request_id}".encode())
    mark = parse_answer(request_settlement, answer, "request settlement")
    if not isinstance(mark, BatchMark):
        raise ValueError(f"request {receipt.request_id} settled alone, not in a batch")
    if mark.receipt_id != receipt.id:
        raise ProofInvalid(f"the request settled with receipt {mark.receipt_id}, not {receipt.id}")
    batch_id = mark.batch
    proven = chain.query_proven("/inference/batch", batch_id.encode())
    batch = parse_answer(BatchRecord.from_json, json.loads(proven.raw), "batch record")
    if batch.batch_id != batch_id:
        raise ProofInvalid(f"the chain answered the record of batch {batch.batch_id}, not {batch_id}")
    ids = _batch_ids(chain, batch.height, batch_id)
    index = mark.index  # the item that settled (a batch may list one receipt twice, once rejected)
    if len(ids) != batch.count or index >= len(ids) or "0x" + ids[index].hex() != receipt.id:
        raise ProofInvalid(f"receipt {receipt.id} is not item {index} of batch {batch_id}")
    if index in {r.index for r in batch.rejected}:
        raise ProofInvalid(f"batch {batch_id} rejected receipt {receipt.id} (item {index})")
    proof = InclusionProof.build(batch_id, ids, index)
    try:
        proof.verify(bytes.fromhex(batch.root[2:]))
    except ValueError as exc:
        raise ProofInvalid(str(exc)) from exc
    return BatchInclusion(mark, batch, proof, proven.height)


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
                if msg.header(chain.chain_id, tx.signer).id == batch_id:
                    return ids
    raise ProofInvalid(f"block {height} holds no tx of batch {batch_id}")
