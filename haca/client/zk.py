"""Checking a zkml receipt without trusting the node or any one RPC endpoint: the model's manifest
(its pinned circuit hashes), the circuit's settings and verifying key and the genesis SRS pin are
read with Merkle proofs; the bytes must hash to the pinned values; the local SRS file must be the
pinned one; then the proof is verified here with EZKL and its public instances compared with the
receipt's commitment, and the receipt's signature checked — the very ZkmlVerifier validators run."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from haca.client.chain import ChainClient
from haca.client.errors import ProofInvalid, QueryFailed
from haca.client.records import proven_manifest
from haca.client.tee import ReceiptVerification, chain_status
from haca.proofs.receipt import EvidenceError
from haca.proofs.verifier import CircuitArtefacts, VerifyContext, ZkmlVerifier
from haca.proofs.zk.srs import SrsError, pinned_srs
from haca.types.receipt import SignedReceipt
from haca.types.registry import srs_key

_ZKML = ZkmlVerifier()


def _proven_blob(chain: ChainClient, digest: str) -> bytes:
    proven = chain.query_proven("/registry/blob", digest.encode())
    if "sha256:" + hashlib.sha256(proven.raw).hexdigest() != digest:
        raise ProofInvalid(f"the chain's bytes for {digest} do not hash to it")
    if proven.answer.get("data") != "0x" + proven.raw.hex():
        raise ProofInvalid("the artefact answered is not the proven one")
    return proven.raw


def proof_from_chain(chain: ChainClient, receipt_id: str) -> bytes:
    """The proof a settled zkml receipt was settled with, from its settlement tx on chain (so a
    client can check it after the node is gone); b"" when no committed tx settled it."""
    import base64

    import haca.types.messages  # noqa: F401  (registers the message types a tx may carry)
    from haca.types.inference import MsgSettle
    from haca.types.tx import decode_tx

    found = chain.rpc.call("tx_search", query=f"settle.receipt_id='{receipt_id}'", per_page="1")
    for entry in found.get("txs", []):
        tx = decode_tx(base64.b64decode(entry["tx"]))
        for msg in tx.msgs:
            if isinstance(msg, MsgSettle):
                for item in msg.items:
                    if item.receipt.id == receipt_id:
                        return item.evidence
    return b""


def verify_zkml_receipt(
    chain: ChainClient, signed: SignedReceipt, proof: bytes, srs_dir: Path | None
) -> ReceiptVerification:
    """The local verdict on a zkml receipt and its proof (never raises for one that does not verify)."""
    receipt = signed.receipt
    result = ReceiptVerification(signed.id, receipt.mode, False, chain_status(chain, signed.id))
    if not proof:
        return replace(result, reason="the node has no proof for this receipt yet")
    try:
        # the terms of the name this node serves the bytes by (several names may hold one model id)
        manifest, proven_height = proven_manifest(chain, receipt.model_id, receipt.height_hint, receipt.node)
        pinned = manifest.circuit
        if pinned is None:
            return replace(result, reason=f"model {receipt.model_id} has no zkml circuit on chain")
        if pinned.input_visibility not in ("hashed", "public") or pinned.output_visibility != "public":
            return replace(result, reason="the model's circuit does not bind the input and the output")
        settings, vk = _proven_blob(chain, pinned.settings_hash), _proven_blob(chain, pinned.vk_hash)
        logrows = pinned.logrows
        _, values, _ = chain.query_proven_keys("/registry/srs")
        srs_pin = values.get(srs_key(logrows), b"").decode()
    except QueryFailed as exc:
        return replace(result, reason=str(exc))
    if srs_pin != pinned.srs_hash:
        return replace(result, reason=f"genesis pins no SRS of logrows {logrows} matching the manifest's")
    details = {"vk_hash": pinned.vk_hash, "settings_hash": pinned.settings_hash, "logrows": logrows}
    result = replace(result, claims=details, proven_height=proven_height)
    if srs_dir is None:
        return replace(result, reason="no SRS directory configured (the network's genesis SRS files)")
    try:
        srs = pinned_srs(srs_dir, logrows, srs_pin)
        circuit = CircuitArtefacts(settings, vk, pinned.settings_hash, pinned.vk_hash, srs)
        context = VerifyContext(receipt.chain_id, 0, 0, "", receipt.node, circuit=circuit)
        _ZKML.verify(signed, proof, context)
    except (EvidenceError, SrsError) as exc:
        return replace(result, reason=str(exc))
    return replace(result, verified=True)
