"""Issue 11, batch settlement in-process: MsgSettleBatch settles many allowance-paid receipts under
one root signature, checking every item (hashing, no per-item signature); a bad root signature
refuses the whole batch with no state change; a bad item is skipped and recorded with its code
while the rest settle, every balance exact; the stored root and the request's mark, read with
state proofs, give a client an inclusion proof of its receipt."""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from tendermint.abci import types_pb2 as abci

from haca.chain.app import BlockFacts
from haca.chain.modules.inference.keeper import ESCROW_ACCOUNT, settled_index_key
from haca.chain.store import INDEX_PREFIX
from haca.crypto.hashing import sha256
from haca.crypto.keys import PrivateKey
from haca.crypto.merkle import inclusion_path, leaf_hash, merkle_root, root_from_path, root_of_leaves
from haca.crypto.state_proof import verify_proof
from haca.types import codes
from haca.types.batch import (
    InclusionProof,
    MsgSettleBatch,
    ReceiptHasher,
    assemble_batch,
    batch_item,
    item_receipt,
)
from haca.types.inference import MsgClaim, MsgDeposit, MsgRevokeAllowance, MsgSettle, SettlementItem
from haca.types.payment import PaymentAuthorization, SignedPayment, SpendingAllowance
from haca.types.receipt import Receipt, SignedReceipt
from haca.types.tx import decode_tx
from tests.metricshelpers import samples, value
from tests.unit.chain import apphelpers
from tests.unit.chain.apphelpers import CHAIN_ID, Node
from tests.unit.chain.test_tee import (
    CLIENT,
    ENCLAVE,
    FEE,
    LLM,
    MALLORY,
    NODE,
    NODE_B,
    PARAMS,
    SF,
    attest,
    dev_platform,
    genesis_supply,
    start,
)

CAP = 10**9
DEPOSIT = 10**6  # what the chain fixture deposits for CLIENT at NODE


@pytest.fixture(scope="module")
def dev(tmp_path_factory) -> dict[str, bytes]:
    return dev_platform(tmp_path_factory)


@pytest.fixture
def chain(tmp_path, monkeypatch, dev):
    node = start(tmp_path, monkeypatch, dev)
    ok(node.deliver(NODE, attest(node, dev)))
    ok(node.deliver(MALLORY, MsgDeposit(NODE.address, DEPOSIT)))
    yield node
    node.close()


def ok(result) -> None:
    assert result.code == 0, result.log


def allowance(
    client: PrivateKey = CLIENT, cap: int = CAP, nonce: int = 1, node: str = NODE.address, max_per_request: int = 0
) -> SignedPayment:
    value = SpendingAllowance(
        CHAIN_ID, client.address, node, cap, expiry=10**9, nonce=nonce, max_per_request=max_per_request
    )
    return SignedPayment("allowance", value, value.sign(client))


def receipt(chain: Node, n: int, *, client: PrivateKey = CLIENT, mode: str = "tee", fee: int = FEE, **kw) -> Receipt:
    fields = {
        "chain_id": CHAIN_ID,
        "node": NODE.address,
        "client": client.address,
        "request_id": "0x" + sha256(f"batch-request-{n}".encode()).hex(),
        "model_id": LLM.model_id,
        "mode": mode,
        "input_hash": "0x" + sha256(f"input-{n}".encode()).hex(),
        "output_hash": "0x" + sha256(f"output-{n}".encode()).hex(),
        "fee": fee,
        "height_hint": chain.height,
        "timestamp": 1_700_000_000 + n,
        **kw,
    }
    return Receipt(**fields)


def batch(
    entries: list[tuple[Receipt, SignedPayment]], signer: PrivateKey = ENCLAVE, mode: str = "tee"
) -> MsgSettleBatch:
    msg, header = assemble_batch(CHAIN_ID, NODE.address, mode, entries)
    return dataclasses.replace(msg, signature=header.sign(signer))


def batch_record(chain: Node, msg: MsgSettleBatch) -> dict:
    return chain.answer("/inference/batch", msg.header(CHAIN_ID, NODE.address).id.encode())


def mark(chain: Node, r: Receipt) -> dict:
    return chain.answer("/inference/request", f"{r.client}/{r.request_id}".encode())


def holds(chain: Node) -> None:
    assert chain.invariant_violations(genesis_supply()) == []


# --- the encoding --------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    request=st.binary(min_size=32, max_size=32),
    fee=st.integers(0, (1 << 128) - 1),
    height=st.integers(0, (1 << 64) - 1),
    tokens=st.tuples(st.integers(0, (1 << 32) - 1), st.integers(0, (1 << 32) - 1)),
    mode=st.sampled_from(["tee", "vanilla"]),
)
def test_the_batch_hasher_gives_each_receipt_its_eip712_id(request, fee, height, tokens, mode):
    r = Receipt(
        CHAIN_ID,
        NODE.address,
        CLIENT.address,
        "0x" + request.hex(),
        LLM.model_id,
        mode,
        "0x" + sha256(request).hex(),
        "0x" + sha256(request + b"o").hex(),
        fee,
        height,
        12345,
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
    )
    item = batch_item(r, 0, 0)
    hasher = ReceiptHasher(CHAIN_ID, NODE.address, mode, (LLM.model_id,))
    assert hasher.receipt_id(item, bytes.fromhex(CLIENT.address[2:])) == r.digest
    msg = MsgSettleBatch(mode, (LLM.model_id,), (allowance(),), (item,), b"\x00" * 65)
    assert item_receipt(msg, 0, CHAIN_ID, NODE.address) == r
    assert MsgSettleBatch.from_json(json.loads(json.dumps(msg.to_json()))).items == (item,)


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 13, 64, 100])
def test_every_inclusion_path_leads_to_the_root_and_a_wrong_one_does_not(count):
    items = [f"receipt {i}".encode() for i in range(count)]
    leaves = [leaf_hash(i) for i in items]
    root = merkle_root(items)
    assert root == root_of_leaves(leaves)
    for index in range(count):
        path = inclusion_path(leaves, index)
        assert root_from_path(leaves[index], index, count, path) == root
        if count > 1:
            other = (index + 1) % count
            assert root_from_path(leaves[other], index, count, path) != root
            with pytest.raises(ValueError, match="shorter"):
                root_from_path(leaves[index], index, count, path[:-1])
    assert merkle_root([*items[:-1], items[-1] + b"!"]) != root


def test_malformed_batches_are_refused_at_decode_with_a_reason():
    r = Receipt(
        CHAIN_ID, NODE.address, CLIENT.address, "0x" + "11" * 32, LLM.model_id, "tee", *["0x" + "22" * 32] * 2, 5, 1, 1
    )
    good = MsgSettleBatch("tee", (LLM.model_id,), (allowance(),), (batch_item(r, 0, 0),), b"\x00" * 65).to_json()
    auth = PaymentAuthorization(CHAIN_ID, CLIENT.address, NODE.address, r.request_id, r.model_id, "tee", 5, 10**9)
    cases = {
        "whole number": {**good, "items": base64.b64encode(b"x" * 10).decode()},
        "not base64": {**good, "items": "***"},
        "out of range": {**good, "models": []} | {"models": [LLM.model_id], "items": _items_with_index(good, 3)},
        "allowances only": {**good, "allowances": [SignedPayment("request", auth, auth.sign(CLIENT)).to_json()]},
        "batches settle": {**good, "mode": "zkml"},
        "listed twice": {**good, "allowances": [good["allowances"][0]] * 2},
    }
    for reason, doc in cases.items():
        with pytest.raises(ValueError, match=reason):
            MsgSettleBatch.from_json(doc)


def _items_with_index(doc: dict, allowance_index: int) -> str:
    raw = bytearray(base64.b64decode(doc["items"]))
    raw[0:2] = allowance_index.to_bytes(2, "big")
    return base64.b64encode(bytes(raw)).decode()


# --- settling ------------------------------------------------------------------------------------


def test_a_batch_of_1000_tee_receipts_settles_in_one_tx_and_a_client_proves_its_receipt(chain):
    pay = allowance()
    receipts = [receipt(chain, n) for n in range(1000)]
    ok(chain.deliver(CLIENT, MsgDeposit(NODE.address, 1000 * (FEE + SF))))
    escrow, node_balance = chain.escrow(CLIENT.address, NODE.address), chain.balance(NODE.address)
    _, burned_before = chain.supply()
    msg = batch([(r, pay) for r in receipts])
    raw = chain.tx(NODE, msg)
    assert chain.check(raw).code == 0
    (result,) = chain.block([raw]).tx_results
    ok(result)
    fee_paid = apphelpers.fee_of(raw)
    assert chain.escrow(CLIENT.address, NODE.address) == escrow - 1000 * (FEE + SF)
    assert chain.balance(NODE.address) == node_balance + 1000 * FEE - fee_paid
    assert chain.supply()[1] - burned_before == 1000 * SF + fee_paid
    assert chain.answer("/inference/allowance", json.dumps(pay.value.to_json()).encode())["spent"] == str(1000 * FEE)
    record = batch_record(chain, msg)
    assert (record["count"], record["settled"], record["rejected"]) == (1000, 1000, [])
    assert record["signer"] == ENCLAVE.address and record["dev"] is True and record["mode"] == "tee"
    (event,) = [e for e in result.events if e.type == "settle_batch"]
    assert {a.key: a.value for a in event.attributes}["settled"] == "1000"
    holds(chain)

    # The client of receipt 617 proves it from the chain alone: its request's mark says where to
    # look (a derived index, no proof); the batch record is proven against the app hash; the batch
    # tx gives the inclusion path to that root.
    mine = receipts[617]
    found = mark(chain, mine)
    assert found == {
        "receipt_id": mine.id,
        "batch": record["batch_id"],
        "index": 617,
        "status": "verified",
        "height": chain.height,
    }
    assert (
        chain.query("/inference/request", f"{mine.client}/{mine.request_id}".encode(), prove=True).proof_ops.ops == []
    )
    batch_resp = chain.query("/inference/batch", record["batch_id"].encode(), prove=True)
    (op,) = batch_resp.proof_ops.ops
    proven_root = json.loads(verify_proof(chain.info().last_block_app_hash, op.key, op.data))["root"]
    sent = decode_tx(raw).msgs[0]
    assert isinstance(sent, MsgSettleBatch)
    proof = InclusionProof.build(record["batch_id"], sent.receipt_ids(CHAIN_ID, NODE.address), found["index"])
    assert proof.receipt_id == mine.id and len(proof.path) == 10
    proof = InclusionProof.from_json(json.loads(json.dumps(proof.to_json())))
    proof.verify(bytes.fromhex(proven_root[2:]))
    with pytest.raises(ValueError, match="is not leaf"):
        dataclasses.replace(proof, receipt_id=receipts[618].id).verify(bytes.fromhex(record["root"][2:]))
    # The index is kept out of the trie: one trie write per batch, not per receipt.
    trie_keys = {k for k in chain.dump() if not k.startswith(INDEX_PREFIX)}
    assert len([k for k in trie_keys if k.startswith(b"inference/batch/")]) == 1
    assert (
        chain.query("/store", settled_index_key(mine.client, mine.request_id), prove=True).code == codes.INVALID_QUERY
    )


def test_a_vanilla_batch_is_signed_by_the_node_and_settles_unverified(chain):
    pay = allowance()
    receipts = [receipt(chain, n, mode="vanilla") for n in range(20)]
    msg = batch([(r, pay) for r in receipts], signer=NODE, mode="vanilla")
    ok(chain.deliver(NODE, msg))
    assert mark(chain, receipts[3])["status"] == "settled"
    assert batch_record(chain, msg)["settled"] == 20 and "dev" not in batch_record(chain, msg)
    holds(chain)


@pytest.mark.parametrize(
    ("mode", "signer", "log_part"),
    [
        ("tee", MALLORY, "not an enclave key attested"),
        ("tee", NODE, "must be signed by an attested enclave key"),
        ("vanilla", ENCLAVE, "not by the node"),
    ],
)
def test_a_batch_whose_root_is_not_signed_by_the_node_or_its_enclave_is_refused_whole(chain, mode, signer, log_part):
    msg = batch([(receipt(chain, n, mode=mode), allowance()) for n in range(5)], signer=signer, mode=mode)
    apphelpers.assert_rejected_without_state_change(
        chain, NODE, chain.tx(NODE, msg), codes.INVALID_EVIDENCE, log_part, genesis_supply()
    )


def test_a_root_signature_over_other_receipts_is_refused_whole(chain):
    good = batch([(receipt(chain, n), allowance()) for n in range(5)])
    other = batch([(receipt(chain, n + 100), allowance()) for n in range(5)])
    forged = dataclasses.replace(good, signature=other.signature)  # a real enclave signature, another root
    apphelpers.assert_rejected_without_state_change(
        chain, NODE, chain.tx(NODE, forged), codes.INVALID_EVIDENCE, "batch root", genesis_supply()
    )


def test_another_node_cannot_settle_a_batch_it_did_not_serve(chain):
    msg = batch([(receipt(chain, n), allowance()) for n in range(3)])
    # NODE_B's tx: the receipts hash to other ids (node is the signer), so the root is not ENCLAVE's.
    apphelpers.assert_rejected_without_state_change(
        chain, NODE_B, chain.tx(NODE_B, msg), codes.INVALID_EVIDENCE, "batch root", genesis_supply()
    )


def test_the_same_batch_twice_is_refused_and_pays_once(chain):
    msg = batch([(receipt(chain, n), allowance()) for n in range(5)])
    ok(chain.deliver(NODE, msg))
    apphelpers.assert_rejected_without_state_change(
        chain, NODE, chain.tx(NODE, msg), codes.ALREADY_SETTLED, "settled before", genesis_supply()
    )


def test_bad_items_are_skipped_and_recorded_while_the_others_settle_exactly(chain, dev):
    pay = allowance()
    early = receipt(chain, 900)
    ok(chain.deliver(NODE, batch([(early, pay)])))  # settles request 900 once
    chain.block()
    revoked = allowance(nonce=7)
    ok(chain.deliver(CLIENT, MsgRevokeAllowance(NODE.address, 7)))
    for _ in range(PARAMS.revoke_delay):
        chain.block()
    ok(chain.deliver(NODE, attest(chain, dev)))  # a heartbeat: the enclave's coverage goes on
    small_cap = allowance(nonce=2, cap=FEE)
    poor = allowance(MALLORY, nonce=3)
    entries = [
        (receipt(chain, 0), pay),  # 0 good
        (receipt(chain, 1, fee=LLM.price - 1), pay),  # 1 below the price
        (receipt(chain, 900), pay),  # 2 already settled in an earlier batch
        (receipt(chain, 3), pay),  # 3 good
        (receipt(chain, 3, timestamp=5), pay),  # 4 the same request again, in this batch
        (receipt(chain, 5, height_hint=chain.height + 5), pay),  # 5 a height in the future
        (receipt(chain, 6), small_cap),  # 6 good: uses the whole small cap
        (receipt(chain, 7), small_cap),  # 7 over the small cap
        (receipt(chain, 8), revoked),  # 8 a revoked allowance
        (receipt(chain, 9, client=MALLORY, fee=DEPOSIT), poor),  # 9 more than MALLORY's lane holds
        (receipt(chain, 10, client=MALLORY), poor),  # 10 good: MALLORY's lane covers this one
    ]
    escrow = {k.address: chain.escrow(k.address, NODE.address) for k in (CLIENT, MALLORY)}
    node_balance, (_, burned) = chain.balance(NODE.address), chain.supply()
    msg = batch(entries)
    raw = chain.tx(NODE, msg)
    (result,) = chain.block([raw]).tx_results
    ok(result)
    record = batch_record(chain, msg)
    got = {r["index"]: (r["code"], r["log"]) for r in record["rejected"]}
    expected = {
        1: (codes.INVALID_PAYMENT, "below the price"),
        2: (codes.ALREADY_SETTLED, "was settled by receipt " + early.id),
        4: (codes.ALREADY_SETTLED, "in this batch twice"),
        5: (codes.INVALID_PAYMENT, "claims height"),
        7: (codes.FEE_ABOVE_LIMIT, "allowance cap"),
        8: (codes.INVALID_PAYMENT, "revoked"),
        9: (codes.INSUFFICIENT_ESCROW, "escrow of " + MALLORY.address),
    }
    assert sorted(got) == sorted(expected), got
    for index, (code, part) in expected.items():
        assert got[index][0] == code and part in got[index][1], (index, got[index])
    assert record["settled"] == 4
    settled = [0, 3, 6, 10]
    for index in settled:
        assert mark(chain, entries[index][0])["index"] == index
    for index in (1, 5, 7, 8, 9):
        resp = chain.query("/inference/request", f"{entries[index][0].client}/{entries[index][0].request_id}".encode())
        assert resp.code == codes.NOT_FOUND
    assert chain.escrow(CLIENT.address, NODE.address) == escrow[CLIENT.address] - 3 * (FEE + SF)
    assert chain.escrow(MALLORY.address, NODE.address) == escrow[MALLORY.address] - (FEE + SF)
    assert chain.balance(NODE.address) == node_balance + 4 * FEE - apphelpers.fee_of(raw)
    assert chain.supply()[1] - burned == 4 * SF + apphelpers.fee_of(raw)
    assert record["fees"] == str(4 * FEE) and record["settlement_fees"] == str(4 * SF)
    holds(chain)


def test_a_batch_item_above_its_allowances_maximum_per_request_is_refused_and_pays_nothing(chain):
    """The attack: a node holding an agent's API key (cap far above one fee, at most FEE per
    request) charges one request FEE + 1. That item is refused; the one at FEE settles."""
    limited = allowance(nonce=41, max_per_request=FEE)
    entries = [(receipt(chain, 50, fee=FEE + 1), limited), (receipt(chain, 51), limited)]
    escrow, node_balance = chain.escrow(CLIENT.address, NODE.address), chain.balance(NODE.address)
    msg = batch(entries)
    raw = chain.tx(NODE, msg)
    (result,) = chain.block([raw]).tx_results
    ok(result)
    record = batch_record(chain, msg)
    assert [(r["index"], r["code"], r["log"]) for r in record["rejected"]] == [
        (0, codes.FEE_ABOVE_LIMIT, f"fee {FEE + 1} exceeds the allowance's maximum per request {FEE}")
    ]
    assert chain.escrow(CLIENT.address, NODE.address) == escrow - (FEE + SF)
    assert chain.balance(NODE.address) == node_balance + FEE - apphelpers.fee_of(raw)
    holds(chain)


def test_a_claimed_receipt_is_left_out_of_a_batch_and_settles_alone_by_its_claim(chain):
    """A claim is the receipt's payment (its hold, its terms): a batch skips the claimed item (code
    25), the rest settle, and inference/settle of the receipt resolves the claim."""
    pay = allowance()
    r = receipt(chain, 42)
    signed = SignedReceipt(r, r.sign(ENCLAVE))
    ok(chain.deliver(CLIENT, MsgClaim(signed, pay)))
    held = chain.escrow(CLIENT.address, NODE.address)
    assert chain.answer("/inference/claim", r.id.encode())["held"] == str(FEE + SF)
    msg = batch([(r, pay), (receipt(chain, 43), pay)])
    ok(chain.deliver(NODE, msg))
    record = chain.answer("/inference/batch", msg.header(CHAIN_ID, NODE.address).id.encode())
    assert [(x["index"], x["code"]) for x in record["rejected"]] == [(0, codes.CLAIM_CONFLICT)]
    assert chain.escrow(CLIENT.address, NODE.address) == held - (FEE + SF)  # the other receipt paid
    result = chain.deliver(NODE, MsgSettle((SettlementItem(signed, pay),)))
    ok(result)
    assert [e.type for e in result.events] == ["tx", "burn", "claim_resolved", "settle"]
    assert chain.query("/inference/claim", r.id.encode()).code == codes.NOT_FOUND
    # The hold went back to the lane and paid the receipt: the lane paid two receipts in all.
    assert chain.escrow(CLIENT.address, NODE.address) == held - (FEE + SF)
    assert chain.balance(ESCROW_ACCOUNT) == chain.escrow(CLIENT.address, NODE.address) + chain.escrow(
        MALLORY.address, NODE.address
    )
    holds(chain)


def test_a_single_settlement_and_a_batch_cannot_both_pay_one_request(chain):
    r = receipt(chain, 77)
    pay = allowance()
    ok(chain.deliver(NODE, MsgSettle((SettlementItem(SignedReceipt(r, r.sign(ENCLAVE)), pay),))))
    msg = batch([(r, pay)])
    ok(chain.deliver(NODE, msg))
    (rejection,) = batch_record(chain, msg)["rejected"]
    assert rejection["code"] == codes.ALREADY_SETTLED
    assert mark(chain, r)["receipt_id"] == r.id and mark(chain, r)["status"] == "verified"
    holds(chain)


def test_the_proposers_execution_of_a_batch_equals_every_other_validators(chain):
    """The proposer runs a block in PrepareProposal (and reuses that execution); the others run it
    in ProcessProposal. A batch must change state identically both ways (CheckTx alone may skip
    the items: its state is never committed)."""
    pay, other = allowance(), allowance(MALLORY, nonce=9)
    entries = [(receipt(chain, n), pay) for n in range(30)] + [(receipt(chain, 99, client=MALLORY), other)]
    raw = chain.tx(NODE, batch(entries))
    assert chain.check(raw).code == 0
    height = chain.height + 1
    request = abci.RequestPrepareProposal(height=height, txs=[raw], max_tx_bytes=1 << 24)
    request.time.seconds = apphelpers.block_time(height)
    assert list(chain.app.prepare_proposal(request).txs) == [raw]
    proposed = chain.app.processed
    assert proposed is not None
    executed = chain.app._execute(height, proposed.time, [raw], BlockFacts())
    assert proposed.state.writes == executed.state.writes
    assert any(k.startswith(b"index/inference/settled/") for k in executed.state.writes)


def test_an_allowance_listed_twice_to_charge_past_its_cap_is_refused_and_no_balance_moves(chain):
    """The attack: one signed allowance (cap = one fee) copied into two slots of the batch, one
    item on each, so that each slot's cap check passes. Refused at decode; every balance holds."""
    small = allowance(nonce=31, cap=FEE)
    honest, _ = assemble_batch(CHAIN_ID, NODE.address, "tee", [(receipt(chain, 500), small)])
    items = (honest.items[0], dataclasses.replace(batch_item(receipt(chain, 501), 1, 0)))
    forged = dataclasses.replace(honest, allowances=(small, small), items=items)
    forged = dataclasses.replace(forged, signature=forged.header(CHAIN_ID, NODE.address).sign(ENCLAVE))
    raw = chain.tx(NODE, forged)
    balances = {k.address: chain.balance(k.address) for k in (NODE, CLIENT)}
    escrow = chain.escrow(CLIENT.address, NODE.address)
    check_writes = dict(chain.app.check_state.writes)
    response = chain.check(raw)
    assert response.code == codes.TX_DECODE and "listed twice" in response.log
    assert chain.app.check_state.writes == check_writes
    (result,) = chain.block([raw]).tx_results
    assert result.code == codes.TX_DECODE
    assert {k.address: chain.balance(k.address) for k in (NODE, CLIENT)} == balances
    assert chain.escrow(CLIENT.address, NODE.address) == escrow
    spent = chain.answer("/inference/allowance", json.dumps(small.value.to_json()).encode())["spent"]
    assert spent == "0"
    holds(chain)


def test_the_app_metrics_count_what_committed_and_parse(chain):
    def scrape() -> dict:
        return samples(generate_latest(chain.app.metrics.registry).decode())

    before = scrape()
    pay = allowance()
    entries = [(receipt(chain, 700 + n), pay) for n in range(5)] + [(receipt(chain, 700), pay)]  # one twice
    ok(chain.deliver(NODE, batch(entries)))
    after = scrape()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("haca_chain_receipts_settled_total", mode="tee", status="verified") == 5
    assert delta("haca_chain_batch_items_rejected_total") == 1
    assert delta("haca_chain_batches_total", mode="tee") == 1
    assert delta("haca_chain_txs_total", result="ok") == 1
    assert value(after, "haca_chain_height") == chain.height
    assert value(after, "haca_chain_burned_tokens") == chain.supply()[1]
    assert delta("haca_chain_finalize_block_seconds_count") == 1
    assert ("haca_chain_verdict_cache_total", frozenset({("result", "hit")})) in after
