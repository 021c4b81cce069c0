"""zkml settlement through HacaApp in-process, with real EZKL proofs of a tiny circuit: circuits
stored on chain by hash, the SRS pinned in genesis, a zkml receipt committing to its proof's
public instances settles `verified` with its proof, and every way to cheat is refused with its
code, a readable reason and no state change."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from tendermint.abci import types_pb2 as abci

from haca.chain import errors
from haca.chain.genesis import AppGenesis, GenesisAccount
from haca.chain.modules.inference.keeper import InferenceParams
from haca.crypto.hashing import sha256
from haca.crypto.keys import PrivateKey
from haca.proofs.zk.proof import (
    PROOF_MAGIC,
    Instances,
    ProofError,
    ZkProof,
    decode_proof,
    encode_ezkl_proof,
    encode_proof,
    instances_commitment,
    proof_instances,
)
from haca.proofs.zk.srs import SrsError
from haca.types.inference import MsgClaim, MsgDeposit, MsgSettle, SettlementItem
from haca.types.payment import PaymentAuthorization, SignedPayment
from haca.types.receipt import Receipt, SignedReceipt
from haca.types.registry import MsgRegisterCircuit, MsgRegisterModel, MsgRegisterNode
from tests.unit.chain import apphelpers
from tests.unit.chain.apphelpers import CHAIN_ID, FEES, Node
from tests.zkhelpers import INPUT, OTHER_INPUT, SRS_DIR, cached_proof, srs_of, tiny_circuit

pytestmark = pytest.mark.slow
OWNER, NODE, CLIENT = (PrivateKey.from_seed(s) for s in ("zk-owner", "zk-node", "zk-client"))
FUNDS = 10**12
PARAMS = InferenceParams(withdraw_delay=5, revoke_delay=4, settlement_fee=100, settlement_fee_bps=500)
PRICE = FEE = 2_000
SCHEMA_IN = {"x": {"dtype": "float32", "shape": [1, 4]}}
SCHEMA_OUT = {"y": {"dtype": "float32", "shape": [1, 3]}}


def wire(proof: ZkProof) -> ZkProof:
    """The proof as nodes settle it (a proof cached on disk before the binary encoding is JSON)."""
    return proof if proof.proof.startswith(PROOF_MAGIC) else ZkProof(encode_ezkl_proof(proof.proof), proof.instances)


@pytest.fixture(scope="module")
def zk():  # type: ignore[no-untyped-def]
    a, b = tiny_circuit(1), tiny_circuit(2)
    return {
        "a": a,
        "b": b,
        "proof": wire(cached_proof(a, INPUT)),
        "other_input": wire(cached_proof(a, OTHER_INPUT)),
        "other_model": wire(cached_proof(b, INPUT)),
    }


def model_id_of(name: str) -> str:
    return "sha256:" + sha256(name.encode()).hex()


def model_msg(name: str, circuit, modes: tuple[str, ...] = ("vanilla", "zkml")) -> MsgRegisterModel:  # type: ignore[no-untyped-def]
    ref = {"settings_hash": circuit.settings_hash, "vk_hash": circuit.vk_hash} if "zkml" in modes else None
    return MsgRegisterModel(name, model_id_of(name), SCHEMA_IN, SCHEMA_OUT, modes, PRICE, circuit=ref)


def circuit_msg(circuit, model: str = "") -> MsgRegisterCircuit:  # type: ignore[no-untyped-def]
    """Register `circuit`, declared as the circuit of model `model`'s bytes (unbound for "")."""
    return MsgRegisterCircuit(
        circuit.settings_path.read_bytes(), circuit.vk_path.read_bytes(), model_id_of(model) if model else ""
    )


def genesis(zk) -> AppGenesis:  # type: ignore[no-untyped-def]
    return AppGenesis(
        fees=FEES,
        inference=PARAMS,
        accounts=tuple(GenesisAccount(k.address, FUNDS) for k in (OWNER, NODE, CLIENT)),
        srs=((zk["a"].logrows, zk["a"].srs_hash),),
    )


@pytest.fixture
def chain(tmp_path, zk):  # type: ignore[no-untyped-def]
    node = Node(tmp_path / "state.db", srs_dir=SRS_DIR)
    node.init(genesis(zk))
    node.block()
    results = list(
        node.block(
            [node.tx(OWNER, circuit_msg(zk["a"], "tiny")), node.tx(OWNER, circuit_msg(zk["b"], "tiny-b"), offset=1)]
        ).tx_results
    )
    models = (model_msg("tiny", zk["a"]), model_msg("tiny-b", zk["b"]), model_msg("plain", zk["a"], ("vanilla",)))
    results += node.block([node.tx(OWNER, m, offset=i) for i, m in enumerate(models)]).tx_results
    node_msg = MsgRegisterNode("http://node:8000", ("vanilla", "zkml"), ("plain", "tiny", "tiny-b"), 0)
    results += node.block([node.tx(NODE, node_msg), node.tx(CLIENT, MsgDeposit(NODE.address, 10**6))]).tx_results
    assert [r.code for r in results] == [0] * 7, [r.log for r in results]
    yield node
    node.close()


def zk_item(
    chain: Node,
    n: int,
    proof: ZkProof | None,
    *,
    instances: Instances | None = None,
    model: str = "tiny",
    expiry: int = 10**9,
) -> SettlementItem:
    committed = instances if instances is not None else (proof.instances if proof else ((("00" * 32),),))
    receipt = Receipt(
        CHAIN_ID,
        NODE.address,
        CLIENT.address,
        "0x" + sha256(f"zk-{n}".encode()).hex(),
        "sha256:" + sha256(model.encode()).hex(),
        "zkml",
        "0x" + sha256(b"in").hex(),
        "0x" + sha256(b"out").hex(),
        FEE,
        chain.height,
        0,
        instances_commitment(committed),
    )
    auth = PaymentAuthorization(
        CHAIN_ID, CLIENT.address, NODE.address, receipt.request_id, receipt.model_id, "zkml", FEE, expiry
    )
    payment = SignedPayment("request", auth, auth.sign(CLIENT))
    return SettlementItem(SignedReceipt(receipt, receipt.sign(NODE)), payment, proof.proof if proof else b"")


def rejected(chain: Node, item: SettlementItem, code: int, log_part: str) -> None:
    raw = chain.tx(NODE, MsgSettle((item,)))
    apphelpers.assert_rejected_without_state_change(chain, NODE, raw, code, log_part, 3 * FUNDS)


def refused_in_its_block(chain: Node, item: SettlementItem, log_part: str) -> None:
    """A proof that decodes and claims the receipt's instances but does not verify: CheckTx leaves
    the EZKL verification to the block (it would cost the validator and the sender nothing), where
    the tx fails with invalid_evidence and its sender pays the tx fee; nothing else changes."""
    raw = chain.tx(NODE, MsgSettle((item,)))
    assert chain.check(raw).code == 0
    before = chain.dump()
    (result,) = chain.block([raw]).tx_results
    assert result.code == errors.InvalidEvidence.code and log_part in result.log, result.log
    account = apphelpers.balance_key(NODE.address)
    after = chain.dump()
    assert apphelpers.changed_keys(before, after) == {
        account,
        apphelpers.nonce_key(NODE.address),
        apphelpers.SUPPLY_KEY,
        apphelpers.BURNED_KEY,
    }
    assert int(after[account]) == int(before[account]) - apphelpers.fee_of(raw)
    assert chain.invariant_violations(3 * FUNDS) == []


def test_a_zkml_receipt_with_its_proof_settles_verified_paying_the_node_and_burning_the_fee(chain, zk):
    item = zk_item(chain, 1, zk["proof"])
    node_before, escrow_before = chain.balance(NODE.address), chain.escrow(CLIENT.address, NODE.address)
    raw = chain.tx(NODE, MsgSettle((item,)))
    assert chain.check(raw).code == 0
    (result,) = chain.block([raw]).tx_results
    assert result.code == 0, result.log
    record = chain.answer("/inference/receipt", item.receipt.id.encode())
    assert record["status"] == "verified" and record["mode"] == "zkml"
    assert chain.balance(NODE.address) == node_before + FEE - apphelpers.fee_of(raw)
    assert chain.escrow(CLIENT.address, NODE.address) == escrow_before - FEE - PARAMS.settlement_fee_for(FEE)
    assert chain.invariant_violations(3 * FUNDS) == []
    verifier = chain.app.inference.verifiers["zkml"]
    assert verifier.cache.misses >= 1  # CheckTx verified it; FinalizeBlock found the verdict cached
    manifest = chain.answer("/registry/model", b"tiny")
    assert manifest["circuit"]["vk_hash"] == zk["a"].vk_hash and manifest["circuit"]["logrows"] == zk["a"].logrows


def test_a_proof_of_a_different_input_is_refused(chain, zk):
    item = zk_item(chain, 2, zk["other_input"], instances=zk["proof"].instances)
    rejected(chain, item, errors.InvalidEvidence.code, "not the ones the receipt commits to")


def test_a_receipt_with_a_tampered_output_is_refused(chain, zk):
    (row,) = zk["proof"].instances
    tampered = ((row[0], row[1], row[2], "01" + row[3][2:]),)
    item = zk_item(chain, 3, zk["proof"], instances=tampered)
    rejected(chain, item, errors.InvalidEvidence.code, "not the ones the receipt commits to")


def test_a_proof_under_another_models_key_is_refused(chain, zk):
    item = zk_item(chain, 4, zk["other_model"])  # proven with tiny-b's circuit, settled as tiny
    refused_in_its_block(chain, item, "does not verify")


@pytest.mark.parametrize(
    "evidence, reason",
    [(b"garbage", "must be in HACA's binary proof encoding"), (b"", "settles only with its proof")],
    ids=["garbage", "no_proof"],
)
def test_a_garbage_proof_or_none_is_refused(chain, zk, evidence, reason):
    item = dataclasses.replace(zk_item(chain, 5, zk["proof"]), evidence=evidence)
    rejected(chain, item, errors.InvalidEvidence.code, reason)


def test_a_truncated_proof_is_refused(chain, zk):
    transcript, instances = decode_proof(zk["proof"].proof)
    half = encode_proof(transcript[: len(transcript) // 2], instances)
    item = dataclasses.replace(zk_item(chain, 6, zk["proof"]), evidence=half)
    refused_in_its_block(chain, item, "does not verify")


def test_a_malformed_binary_proof_is_refused(chain, zk):
    item = dataclasses.replace(zk_item(chain, 10, zk["proof"]), evidence=zk["proof"].proof + b"\x00")
    rejected(chain, item, errors.InvalidEvidence.code, "bytes follow the proof's last instance")


def test_a_proof_in_ezkls_json_is_refused_on_chain(chain, zk):
    """The chain takes only the binary form: it runs no JSON parser on evidence (deep nesting
    overflows the C scanner's stack). A node converts proofs it queued as JSON before sending."""
    from haca.proofs.zk.proof import ezkl_proof_json

    item = dataclasses.replace(zk_item(chain, 11, zk["proof"]), evidence=ezkl_proof_json(zk["proof"].proof))
    rejected(chain, item, errors.InvalidEvidence.code, "binary proof encoding")


def _settings(zk, **run_args) -> bytes:  # type: ignore[no-untyped-def]
    settings = json.loads(zk["a"].settings_path.read_bytes())
    settings["run_args"].update(run_args)
    return json.dumps(settings).encode()


@pytest.mark.parametrize(
    ("run_args", "reason"),
    [
        ({"input_visibility": "Private"}, "does not bind the input"),
        ({"input_visibility": {"Hashed": {"hash_is_public": False, "outlets": []}}}, "does not bind the input"),
        ({"output_visibility": "Private"}, "does not bind the output"),
        ({"output_visibility": {"Hashed": {"hash_is_public": True, "outlets": []}}}, "does not bind the output"),
        ({"param_visibility": "Private"}, "params must be fixed"),
        ({"param_visibility": "Public"}, "params must be fixed"),
    ],
    ids=[
        "private_input",
        "unpublished_input_hash",
        "private_output",
        "hashed_output",
        "private_params",
        "public_params",
    ],
)
def test_a_circuit_that_does_not_bind_input_and_output_is_refused_at_registration(chain, zk, run_args, reason):
    msg = MsgRegisterCircuit(_settings(zk, **run_args), zk["a"].vk_path.read_bytes(), model_id_of("tiny"))
    apphelpers.assert_rejected_without_state_change(
        chain, OWNER, chain.tx(OWNER, msg), errors.InvalidMessage.code, reason, 3 * FUNDS
    )


def test_a_circuit_declared_for_other_bytes_is_refused_until_declared_for_these(chain, zk):
    copy = model_msg("tiny-copy", zk["a"])  # other bytes naming circuit a, which OWNER declared for "tiny"
    apphelpers.assert_rejected_without_state_change(
        chain, OWNER, chain.tx(OWNER, copy), errors.Unauthorized.code, "registered for other model ids", 3 * FUNDS
    )
    assert chain.deliver(OWNER, circuit_msg(zk["a"], "tiny-copy")).code == 0  # declared for these bytes too
    assert chain.deliver(OWNER, copy).code == 0


def test_a_zkml_receipt_settled_after_its_authorisation_expired_is_refused(chain, zk):
    item = zk_item(chain, 7, zk["proof"], expiry=chain.height)
    chain.block()
    rejected(chain, item, errors.AuthorizationExpired.code, "expired at height")


def test_a_proof_for_a_vanilla_only_model_is_refused(chain, zk):
    item = zk_item(chain, 8, zk["proof"], model="plain")
    rejected(chain, item, errors.Unauthorized.code, "does not allow mode 'zkml'")


def test_a_circuit_of_a_size_genesis_pins_no_srs_for_is_refused(chain, zk):
    settings = json.loads(zk["a"].settings_path.read_bytes())
    settings["run_args"]["logrows"] = zk["a"].logrows + 1
    msg = MsgRegisterCircuit(json.dumps(settings).encode(), b"vk")
    raw = chain.tx(OWNER, msg)
    apphelpers.assert_rejected_without_state_change(
        chain, OWNER, raw, errors.InvalidMessage.code, "no SRS of logrows", 3 * FUNDS
    )


def test_a_zkml_model_whose_circuit_is_not_on_chain_is_refused(chain, zk):
    missing = dataclasses.replace(
        model_msg("ghost", zk["a"]), circuit={"settings_hash": zk["a"].settings_hash, "vk_hash": "sha256:" + "00" * 32}
    )
    raw = chain.tx(OWNER, missing)
    apphelpers.assert_rejected_without_state_change(
        chain, OWNER, raw, errors.NotFound.code, "register its settings and verifying key first", 3 * FUNDS
    )


def test_a_validator_without_the_pinned_srs_refuses_to_start(tmp_path, zk):
    empty = tmp_path / "srs"
    empty.mkdir()
    node = Node(tmp_path / "state.db", srs_dir=empty)
    with pytest.raises(SrsError, match="no SRS for logrows"):
        node.init(genesis(zk))
    node.close()
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    shutil.copy(srs_of(zk["b"]), wrong / srs_of(zk["a"]).name)
    (wrong / srs_of(zk["a"]).name).write_bytes(b"not the pinned bytes")
    other = Node(tmp_path / "state2.db", srs_dir=wrong)
    with pytest.raises(SrsError, match="genesis pins"):
        other.init(genesis(zk))
    other.close()


def test_the_circuit_artefacts_are_readable_by_hash_with_proofs(chain, zk):
    answer = chain.answer("/registry/blob", zk["a"].vk_hash.encode())
    assert bytes.fromhex(answer["data"][2:]) == zk["a"].vk_path.read_bytes()
    assert chain.answer("/registry/srs")["srs"] == {str(zk["a"].logrows): zk["a"].srs_hash}
    resp = chain.query("/registry/blob", b"sha256:" + b"00" * 32)
    assert resp.code == errors.NotFound.code and "no circuit artefact" in resp.log


def test_a_proof_checked_against_swapped_settings_is_refused(chain, zk):
    """A model whose pinned settings are not its circuit's (here: a public input instead of a hashed
    one) gets its proofs refused: validators verify only against the pinned bytes."""
    settings = json.loads(zk["a"].settings_path.read_bytes())
    settings["run_args"]["input_visibility"] = "Public"
    swapped = MsgRegisterCircuit(json.dumps(settings).encode(), zk["a"].vk_path.read_bytes())
    ok = chain.deliver(OWNER, swapped)
    assert ok.code == 0, ok.log
    settings_hash = "sha256:" + sha256(swapped.settings).hex()
    msg = dataclasses.replace(
        model_msg("tiny-swapped", zk["a"]), circuit={"settings_hash": settings_hash, "vk_hash": zk["a"].vk_hash}
    )
    assert chain.deliver(OWNER, msg).code == 0
    node_msg = MsgRegisterNode("http://node:8000", ("vanilla", "zkml"), ("plain", "tiny", "tiny-b", "tiny-swapped"), 0)
    assert chain.deliver(NODE, node_msg).code == 0
    item = zk_item(chain, 9, zk["proof"], model="tiny-swapped")
    refused_in_its_block(chain, item, "does not verify")


def proposal(chain: Node, raw: bytes) -> list[bytes]:
    req = abci.RequestPrepareProposal(height=chain.height + 1, txs=[raw], max_tx_bytes=1 << 24)
    req.time.seconds = apphelpers.block_time(chain.height + 1)
    return list(chain.app.prepare_proposal(req).txs)


def test_a_proposal_keeps_a_tx_whose_proof_fails_so_its_sender_pays_and_drops_other_failures(chain, zk):
    """CheckTx leaves the proof to the block: a proposer that dropped a failing proof would verify
    it again every block for free; kept, its sender pays. Any other failing tx is still dropped."""
    junk = chain.tx(NODE, MsgSettle((zk_item(chain, 11, zk["other_model"]),)))
    assert proposal(chain, junk) == [junk]
    vanilla_only = chain.tx(NODE, MsgSettle((zk_item(chain, 12, zk["proof"], model="plain"),)))
    assert proposal(chain, vanilla_only) == []


def test_deeply_nested_evidence_is_refused_not_a_crash(chain, zk):
    """Evidence that is not the binary form is read as EZKL's JSON: nesting deep enough to exhaust
    the parser's recursion is refused (invalid evidence) like any malformed proof."""
    item = dataclasses.replace(zk_item(chain, 13, zk["proof"]), evidence=b"[" * 200_000)
    rejected(chain, item, errors.InvalidEvidence.code, "binary proof encoding")
    with pytest.raises(ProofError, match="nests deeper"):  # a client reading a node's stored proof
        proof_instances(b"[" * 200_000)


def test_a_settlement_whose_proof_is_left_to_the_block_does_not_keep_the_claim_out_of_the_mempool(chain, zk):
    """CheckTx records nothing for a receipt whose proof it did not verify: a node sending a junk
    proof cannot make the client's claim look settled to the mempool."""
    item = zk_item(chain, 14, zk["other_model"])  # decodes, claims the receipt's instances, does not verify
    assert chain.check(chain.tx(NODE, MsgSettle((item,)))).code == 0
    claim = chain.check(chain.tx(CLIENT, MsgClaim(item.receipt, item.payment)))
    assert claim.code == 0, claim.log
