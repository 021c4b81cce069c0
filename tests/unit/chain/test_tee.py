"""tee module, driven through HacaApp in-process with the DEV attester's evidence: enclave key
registration and heartbeats, the policy and measurement approvals set by the authority, and tee
receipts settling as `verified` only against a key in good standing at their height.

Every refusal is checked for its exact code, a readable log, and no state change."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from haca.chain import errors
from haca.chain.genesis import AppGenesis, GenesisAccount, TeeGenesis, parse_app_genesis
from haca.chain.modules.inference.keeper import InferenceParams
from haca.crypto.hashing import sha256
from haca.crypto.keys import PrivateKey
from haca.crypto.state_proof import verify_proof
from haca.enclave.measure import enclave_measurement
from haca.proofs.tee.binding import key_binding, measurement_id
from haca.proofs.tee.claims import Claims
from haca.proofs.tee.dev import (
    PLATFORM_CERT_FILE,
    PLATFORM_KEY_FILE,
    issue_dev_platform,
    make_dev_evidence,
    make_dev_root,
)
from haca.proofs.tee.policy import TeePolicy
from haca.types.inference import MsgDeposit, MsgSettle, SettlementItem
from haca.types.registry import MsgRegisterModel, MsgRegisterNode
from haca.types.tee import MsgApproveMeasurement, MsgAttestEnclave, MsgRevokeMeasurement, MsgSetTeePolicy
from tests.unit.chain import apphelpers
from tests.unit.chain.apphelpers import CHAIN_ID, FEES, Node, block_hash_of, block_time

AUTHORITY, NODE, NODE_B, CLIENT, OWNER, MALLORY = (
    PrivateKey.from_seed(s) for s in ("tee-authority", "tee-node", "tee-node-b", "tee-client", "tee-owner", "mallory")
)
ENCLAVE, ENCLAVE_2 = PrivateKey.from_seed("tee-enclave"), PrivateKey.from_seed("tee-enclave-2")
FUNDS = 10**12
PARAMS = InferenceParams(withdraw_delay=5, revoke_delay=4, settlement_fee=100, settlement_fee_bps=500)
HEARTBEAT, NONCE_WINDOW = 6, 5
PRICE, FEE = 1_000, 2_000
SF = PARAMS.settlement_fee_for(FEE)
DEV_MID = measurement_id(Claims("dev", {"measurement": enclave_measurement()}, b"", False, "UpToDate"))
SCHEMA = {"x": {"dtype": "float32", "shape": [1, 4]}}
LLM = MsgRegisterModel("llm", "sha256:" + sha256(b"llm").hex(), SCHEMA, SCHEMA, ("tee", "vanilla"), PRICE)
NODE_MSG = MsgRegisterNode("http://node:8000", ("tee", "vanilla"), ("llm",), 0)


@pytest.fixture(scope="module")
def dev(tmp_path_factory) -> dict[str, bytes]:
    return dev_platform(tmp_path_factory)


def dev_platform(tmp_path_factory) -> dict[str, bytes]:
    """A DEV root and one platform (the dev enclave's hardware key) issued by it."""
    root_dir, platform_dir = tmp_path_factory.mktemp("dev-root"), tmp_path_factory.mktemp("dev-platform")
    root = make_dev_root(root_dir)
    issue_dev_platform(root_dir, platform_dir)
    other = tmp_path_factory.mktemp("other-root")
    make_dev_root(other)
    other_platform = tmp_path_factory.mktemp("other-platform")
    issue_dev_platform(other, other_platform)
    return {
        "root": root,
        "key": (platform_dir / PLATFORM_KEY_FILE).read_bytes(),
        "chain": (platform_dir / PLATFORM_CERT_FILE).read_bytes(),
        "other_key": (other_platform / PLATFORM_KEY_FILE).read_bytes(),
        "other_chain": (other_platform / PLATFORM_CERT_FILE).read_bytes(),
    }


def genesis(dev: dict[str, bytes], formats: tuple[str, ...] = ("dev", "nitro")) -> AppGenesis:
    policy = TeePolicy(
        formats=formats, roots={"dev": dev["root"].decode()}, heartbeat_interval=HEARTBEAT, nonce_window=NONCE_WINDOW
    )
    return AppGenesis(
        fees=FEES,
        inference=PARAMS,
        accounts=tuple(GenesisAccount(k.address, FUNDS) for k in (AUTHORITY, NODE, NODE_B, CLIENT, OWNER, MALLORY)),
        authorities=(AUTHORITY.address,),
        tee=TeeGenesis(policy, (("*", DEV_MID),)),
    )


def start(tmp_path: Path, monkeypatch, dev: dict[str, bytes], **kw) -> Node:
    # The DEV certificates are made now: block times must fall inside their validity.
    monkeypatch.setattr(apphelpers, "GENESIS_TIME", int(time.time()))
    chain = Node(tmp_path / "state.db")
    chain.init(genesis(dev, **kw))
    chain.block()
    results = list(chain.block([chain.tx(OWNER, LLM)]).tx_results)
    results += chain.block(
        [chain.tx(NODE, NODE_MSG), chain.tx(NODE_B, NODE_MSG), chain.tx(CLIENT, MsgDeposit(NODE.address, 10**6))]
    ).tx_results
    assert [r.code for r in results] == [0] * 4, [r.log for r in results]
    return chain


@pytest.fixture
def chain(tmp_path, monkeypatch, dev):
    node = start(tmp_path, monkeypatch, dev)
    yield node
    node.close()


def attest(
    chain: Node,
    dev: dict[str, bytes],
    key: PrivateKey = ENCLAVE,
    *,
    nonce_height: int | None = None,
    bound_key: str | None = None,
    debug: bool = False,
    platform: str = "",
    evidence_time: int | None = None,
    fmt: str = "dev",
    node: str = NODE.address,
) -> MsgAttestEnclave:
    """What a dev enclave holding `key` sends to (re-)register it for `node`, nonce = the last
    block's hash."""
    nonce_height = chain.height if nonce_height is None else nonce_height
    report = key_binding(CHAIN_ID, node, bound_key or key.address, block_hash_of(nonce_height))
    evidence = make_dev_evidence(
        dev[f"{platform}key"],
        dev[f"{platform}chain"],
        enclave_measurement(),
        report,
        block_time(chain.height + 1) if evidence_time is None else evidence_time,
        debug,
    )
    return MsgAttestEnclave(key.address, fmt, evidence, b"", nonce_height)


def tee_item(chain: Node, n: int, *, signer: PrivateKey = ENCLAVE, height_hint: int | None = None) -> SettlementItem:
    hint = chain.height if height_hint is None else height_hint
    return apphelpers.tee_item(NODE, CLIENT, signer, LLM.model_id, FEE, hint, f"tee-request-{n}")


def ok(result) -> None:
    assert result.code == 0, result.log


def rejected(chain: Node, key: PrivateKey, msg, code: int, log_part: str) -> None:
    supply = genesis_supply()
    apphelpers.assert_rejected_without_state_change(chain, key, chain.tx(key, msg), code, log_part, supply)


def genesis_supply() -> int:
    return 6 * FUNDS


def record(chain: Node, receipt_id: str) -> dict:
    return chain.answer("/inference/receipt", receipt_id.encode())


# --- the happy path --------------------------------------------------------------------------------


def test_a_registered_dev_enclave_key_settles_tee_receipts_as_verified_and_labelled_dev(chain, dev):
    result = chain.deliver(NODE, attest(chain, dev))
    ok(result)
    (event,) = [e for e in result.events if e.type == "enclave_attested"]
    attrs = {a.key: a.value for a in event.attributes}
    assert attrs["kind"] == "register" and attrs["dev"] == "true" and attrs["measurement_id"] == DEV_MID
    assert attrs["good_until"] == str(chain.height + HEARTBEAT)

    node_before, client_escrow = chain.balance(NODE.address), chain.escrow(CLIENT.address, NODE.address)
    _, burned_before = chain.supply()
    item = tee_item(chain, 1)
    settle = chain.tx(NODE, MsgSettle((item,)))
    ok(chain.block([settle]).tx_results[0])
    rec = record(chain, item.receipt.id)
    assert rec["status"] == "verified"
    assert rec["dev"] is True and rec["attestation"] == "dev" and rec["enclave_key"] == ENCLAVE.address
    assert chain.balance(NODE.address) == node_before - apphelpers.fee_of(settle) + FEE
    assert chain.escrow(CLIENT.address, NODE.address) == client_escrow - FEE - SF
    assert chain.supply()[1] == burned_before + SF + apphelpers.fee_of(settle)
    assert chain.invariant_violations(genesis_supply()) == []


def test_the_enclave_query_answers_the_standing_with_the_attestation_and_proves_it(chain, dev):
    ok(chain.deliver(NODE, attest(chain, dev)))
    registered = chain.height
    data = f"{ENCLAVE.address}@{registered}/llm".encode()
    answer = chain.answer("/tee/enclave", data)
    assert answer["covered"] is True and answer["approved"] is True
    assert answer["enclave"]["node"] == NODE.address and answer["enclave"]["dev"] is True
    assert answer["attestation"]["height"] == registered and answer["attestation"]["format"] == "dev"
    resp = chain.query("/tee/enclave", data, prove=True)
    assert len(resp.proof_ops.ops) == 5  # record, segment, attestation, global and per-model approval
    for op in resp.proof_ops.ops:
        assert verify_proof(chain.app.store.app_hash, op.key, op.data) == (chain.app.store.get(op.key) or b"")
    nodes = chain.answer("/tee/node_enclaves", NODE.address.encode())
    assert [e["key"] for e in nodes["enclaves"]] == [ENCLAVE.address]


# --- heartbeats -----------------------------------------------------------------------------------


def test_heartbeats_extend_coverage_and_a_missed_one_stops_receipts_after_it(chain, dev):
    ok(chain.deliver(NODE, attest(chain, dev)))
    first = chain.height
    for _ in range(3):
        chain.block()
    ok(chain.deliver(NODE, attest(chain, dev)))  # heartbeat inside the segment
    beat = chain.height
    answer = chain.answer("/tee/enclave", ENCLAVE.address.encode())
    assert answer["segments"] == [{"start": first, "until": beat + HEARTBEAT}]

    while chain.height <= beat + HEARTBEAT:  # no heartbeat: the key lapses
        chain.block()
    lapsed_at = beat + HEARTBEAT + 1
    assert chain.answer("/tee/enclave", ENCLAVE.address.encode())["enclave"]["lapsed"] is True
    late = tee_item(chain, 2, height_hint=lapsed_at)
    rejected(chain, NODE, MsgSettle((late,)), errors.EnclaveNotInGoodStanding.code, "a heartbeat was missed")
    # What it signed while covered still settles, after the lapse.
    inside = tee_item(chain, 3, height_hint=beat + HEARTBEAT)
    ok(chain.deliver(NODE, MsgSettle((inside,))))
    assert record(chain, inside.receipt.id)["status"] == "verified"


def test_re_attesting_after_a_lapse_opens_a_new_segment_and_the_gap_never_settles(chain, dev):
    ok(chain.deliver(NODE, attest(chain, dev)))
    first = chain.height
    for _ in range(HEARTBEAT + 3):
        chain.block()
    ok(chain.deliver(NODE, attest(chain, dev)))
    second = chain.height
    segments = chain.answer("/tee/enclave", ENCLAVE.address.encode())["segments"]
    assert segments == [{"start": first, "until": first + HEARTBEAT}, {"start": second, "until": second + HEARTBEAT}]
    gap = tee_item(chain, 4, height_hint=first + HEARTBEAT + 1)
    rejected(chain, NODE, MsgSettle((gap,)), errors.EnclaveNotInGoodStanding.code, "covers height")
    ok(chain.deliver(NODE, MsgSettle((tee_item(chain, 5, height_hint=second),))))


# --- revocation -----------------------------------------------------------------------------------


def test_a_revoked_measurement_refuses_receipts_at_once_whatever_their_height(chain, dev):
    ok(chain.deliver(NODE, attest(chain, dev)))
    signed_before = tee_item(chain, 6)
    ok(chain.deliver(AUTHORITY, MsgRevokeMeasurement(DEV_MID, "*")))
    rejected(chain, NODE, MsgSettle((signed_before,)), errors.MeasurementNotApproved.code, "not approved")
    rejected(chain, NODE, attest(chain, dev), errors.MeasurementNotApproved.code, "not approved")
    # Approving it for this model again lets the receipt settle.
    ok(chain.deliver(AUTHORITY, MsgApproveMeasurement(DEV_MID, "llm")))
    ok(chain.deliver(NODE, MsgSettle((signed_before,))))


# --- registration refusals ------------------------------------------------------------------------


def test_report_data_that_binds_another_key_is_refused(chain, dev):
    msg = attest(chain, dev, bound_key=ENCLAVE_2.address)
    rejected(chain, NODE, msg, errors.InvalidAttestation.code, "binding: the report data does not bind key")


def test_a_nonce_older_than_the_window_is_refused(chain, dev):
    for _ in range(NONCE_WINDOW + 1):
        chain.block()
    stale = attest(chain, dev, nonce_height=chain.height - NONCE_WINDOW)
    rejected(chain, NODE, stale, errors.InvalidAttestation.code, "stale nonce")


def test_a_nonce_from_the_future_is_refused(chain, dev):
    rejected(
        chain, NODE, attest(chain, dev, nonce_height=chain.height + 1), errors.InvalidAttestation.code, "stale nonce"
    )


def test_dev_evidence_on_a_chain_that_does_not_allow_dev_is_refused(tmp_path, monkeypatch, dev):
    chain = start(tmp_path, monkeypatch, dev, formats=("nitro", "tdx", "sgx", "snp"))
    msg = attest(chain, dev)
    rejected(chain, NODE, msg, errors.InvalidAttestation.code, "the DEV attester is not allowed on this chain")
    chain.close()


def test_a_debug_enclave_is_refused_by_the_chain_policy(chain, dev):
    rejected(chain, NODE, attest(chain, dev, debug=True), errors.InvalidAttestation.code, "debug")


def test_evidence_from_another_root_is_refused(chain, dev):
    rejected(chain, NODE, attest(chain, dev, platform="other_"), errors.InvalidAttestation.code, "chain")


def test_evidence_older_than_the_policy_allows_is_refused(chain, dev):
    old = attest(chain, dev, evidence_time=block_time(chain.height) - 601)
    rejected(chain, NODE, old, errors.InvalidAttestation.code, "age")


def test_the_node_account_key_cannot_be_registered_as_its_enclave_key(chain, dev):
    rejected(chain, NODE, attest(chain, dev, key=NODE), errors.InvalidAttestation.code, "account key")


def test_a_key_registered_by_one_node_cannot_be_claimed_by_another(chain, dev):
    ok(chain.deliver(NODE, attest(chain, dev)))
    rejected(chain, NODE_B, attest(chain, dev, node=NODE_B.address), errors.Unauthorized.code, "is registered by node")


def test_evidence_made_for_one_node_cannot_be_registered_first_by_another(chain, dev):
    """Issue 19: the report data binds the node, so another tee node copying the evidence from the
    mempool and submitting it first cannot take the enclave key and lock its node out of it."""
    msg = attest(chain, dev)  # made by NODE's enclave, for NODE
    rejected(chain, NODE_B, msg, errors.InvalidAttestation.code, "does not bind key")
    ok(chain.deliver(NODE, msg))  # the rightful node registers its own key
    assert chain.answer("/tee/enclave", ENCLAVE.address.encode())["enclave"]["node"] == NODE.address


# --- receipts not signed by an attested key -------------------------------------------------------


def test_a_tee_receipt_signed_by_the_node_account_key_is_refused(chain, dev):
    ok(chain.deliver(NODE, attest(chain, dev)))
    forged = tee_item(chain, 7, signer=NODE)
    rejected(chain, NODE, MsgSettle((forged,)), errors.InvalidEvidence.code, "signed by the node's account key")


def test_a_tee_receipt_signed_by_an_unregistered_key_is_refused(chain, dev):
    ok(chain.deliver(NODE, attest(chain, dev)))
    forged = tee_item(chain, 8, signer=ENCLAVE_2)
    rejected(chain, NODE, MsgSettle((forged,)), errors.InvalidEvidence.code, "not an enclave key attested for node")


# --- governance ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "msg",
    [
        MsgSetTeePolicy({"allow_debug": True}),
        MsgApproveMeasurement("dev:" + "ab" * 32, "*"),
        MsgRevokeMeasurement(DEV_MID, "*"),
    ],
    ids=["set_policy", "approve", "revoke"],
)
def test_tee_policy_messages_from_a_non_authority_are_refused(chain, msg):
    rejected(chain, MALLORY, msg, errors.Unauthorized.code, "is not a governance authority")


def test_the_authority_sets_the_policy_and_a_bad_policy_is_refused(chain):
    ok(chain.deliver(AUTHORITY, MsgSetTeePolicy({"heartbeat_interval": 50, "min_tcb_status": "SWHardeningNeeded"})))
    policy = chain.answer("/tee/policy")
    assert policy["heartbeat_interval"] == 50 and policy["min_tcb_status"] == "SWHardeningNeeded"
    assert policy["nonce_window"] == NONCE_WINDOW  # unchanged
    rejected(chain, AUTHORITY, MsgSetTeePolicy({"formats": ["sev"]}), errors.InvalidMessage.code, "formats")
    rejected(chain, AUTHORITY, MsgSetTeePolicy({"nonce_window": 5000}), errors.InvalidMessage.code, "nonce_window")


def test_approving_for_an_unknown_model_is_refused(chain):
    rejected(chain, AUTHORITY, MsgApproveMeasurement(DEV_MID, "nope"), errors.NotFound.code, "no model 'nope'")


def test_genesis_tee_section_round_trips_and_bad_sections_are_refused(dev):
    g = genesis(dev)
    parsed = parse_app_genesis(json.dumps(g.to_json()).encode())
    assert parsed.tee == g.tee
    bad = g.to_json()
    bad["tee"]["approvals"] = [{"model": "*", "measurement_id": "sha256:zz"}]
    with pytest.raises(errors.InvalidGenesis, match="measurement_id"):
        parse_app_genesis(json.dumps(bad).encode())


# --- real attestations through the chain's registration path ----------------------------------------

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "tee"
REAL = {
    # format: (evidence, endorsements, a block time inside its validity)
    "nitro": (FIXTURES / "nitro" / "nitro_attestation.bin", None, 1_766_668_537),
    "tdx": (FIXTURES / "tdx" / "tdx_quote", FIXTURES / "tdx" / "tdx_quote_collateral.json", 1_751_328_000),
    "snp": (FIXTURES / "snp" / "report_milan.hex", FIXTURES / "snp" / "vcek_milan.der", 1_751_328_000),
}


@pytest.mark.parametrize("fmt", sorted(REAL))
def test_a_real_attestation_verifies_on_chain_and_is_refused_only_for_not_binding_this_key(
    tmp_path, monkeypatch, dev, fmt
):
    """The chain runs the real verifiers at block time: each fixture passes signature, chain,
    validity and policy, and is then refused because its report data binds someone else's key."""
    evidence, endorsements, at = REAL[fmt]
    monkeypatch.setattr(apphelpers, "GENESIS_TIME", at - 2)  # the Nitro leaf is valid from 3 s before
    chain = Node(tmp_path / "state.db")
    chain.init(genesis(dev))
    chain.block()
    chain.deliver(OWNER, LLM)
    ok(chain.deliver(NODE, NODE_MSG))
    if fmt != "nitro":
        ok(chain.deliver(AUTHORITY, MsgSetTeePolicy({"formats": ["dev", "nitro", "tdx", "snp"]})))
    raw = evidence.read_bytes()
    msg = MsgAttestEnclave(ENCLAVE.address, fmt, raw, endorsements.read_bytes() if endorsements else b"", chain.height)
    rejected(chain, NODE, msg, errors.InvalidAttestation.code, "binding: the report data does not bind key")
    chain.close()


def test_a_real_nitro_document_past_its_certificates_is_refused_as_expired(tmp_path, monkeypatch, dev):
    monkeypatch.setattr(apphelpers, "GENESIS_TIME", 1_766_668_537 + 4 * 3600)
    chain = Node(tmp_path / "state.db")
    chain.init(genesis(dev))
    chain.block()
    chain.deliver(OWNER, LLM)
    ok(chain.deliver(NODE, NODE_MSG))
    raw = REAL["nitro"][0].read_bytes()
    msg = MsgAttestEnclave(ENCLAVE.address, "nitro", raw, b"", chain.height)
    rejected(chain, NODE, msg, errors.InvalidAttestation.code, "expired")
    chain.close()
