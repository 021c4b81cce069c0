"""registry module, driven through HacaApp in-process: model manifests (versioned, owned),
inference nodes, their queries, and stateless validation of the messages."""

from __future__ import annotations

import dataclasses
import json

import pytest

from haca.chain import errors
from haca.chain.genesis import AppGenesis, GenesisAccount
from haca.chain.modules.registry.keeper import model_key, node_key
from haca.crypto.hashing import sha256
from haca.crypto.keys import PrivateKey
from haca.crypto.state_proof import verify_proof
from haca.types.encoding import canonical_json
from haca.types.gov import MsgUpdateParams
from haca.types.registry import MsgRegisterModel, MsgRegisterNode
from tests.unit.chain import apphelpers
from tests.unit.chain.apphelpers import FEES, Node

OWNER, MALLORY, NODE_A, NODE_B = (PrivateKey.from_seed(s) for s in ("owner", "mallory", "node-a", "node-b"))
FUNDS = 10**12
GENESIS = AppGenesis(
    fees=FEES, accounts=tuple(GenesisAccount(k.address, FUNDS) for k in (OWNER, MALLORY, NODE_A, NODE_B))
)
GENESIS_SUPPLY = 4 * FUNDS


def model_id(tag: str) -> str:
    return "sha256:" + sha256(tag.encode()).hex()


IRIS = MsgRegisterModel(
    name="iris",
    model_id=model_id("iris-v1"),
    input_schema={"x": {"dtype": "float32", "shape": [1, 4]}},
    output_schema={"probs": {"dtype": "float32", "shape": [-1, 3]}},
    modes=("vanilla",),
    price=1_000,
)
IRIS_V2 = dataclasses.replace(IRIS, model_id=model_id("iris-v2"), modes=("tee", "vanilla"), price=2_500)
DIGITS = MsgRegisterModel(
    name="digits",
    model_id=model_id("digits-v1"),
    input_schema={"image": {"dtype": "uint8", "shape": [1, 28, 28]}, "scale": {"dtype": "float64", "shape": [1]}},
    output_schema={"logits": {"dtype": "float32", "shape": [1, 10]}},
    modes=("tee",),
    price=7,
)
NODE_IRIS = MsgRegisterNode(endpoint="http://10.0.0.1:8000", modes=("vanilla",), models=("iris",), price=1_200)


@pytest.fixture
def chain(tmp_path):
    """A chain past height 1, so CheckTx sees the genesis state."""
    n = Node(tmp_path / "state.db")
    n.init(GENESIS)
    n.block()
    yield n
    n.close()


def assert_ok(result) -> None:
    assert result.code == 0, result.log


def assert_rejected_without_state_change(chain: Node, key: PrivateKey, raw: bytes, code: int, log_part: str) -> None:
    apphelpers.assert_rejected_without_state_change(chain, key, raw, code, log_part, GENESIS_SUPPLY)


# --- models ----------------------------------------------------------------------------------------


def test_register_model_stores_the_manifest_as_version_1_owned_by_the_signer(chain):
    result = chain.deliver(OWNER, IRIS)
    assert_ok(result)
    manifest = chain.answer("/registry/model", b"iris")
    assert manifest == {
        "name": "iris",
        "model_id": IRIS.model_id,
        "input_schema": IRIS.input_schema,
        "output_schema": IRIS.output_schema,
        "modes": ["vanilla"],
        "price": "1000",
        "price_unit": "request",
        "max_rows": 64,
        "circuit": None,  # only zkml models have one
        "kind": "onnx",
        "completion_price": "0",  # only LLMs (kind gguf) are priced per token
        "version": 1,
        "owner": OWNER.address,
        "height": chain.height,
        "effective_height": chain.height,  # a first version applies at once
    }
    (event,) = [e for e in result.events if e.type == "register_model"]
    attrs = {a.key: a.value for a in event.attributes}
    assert attrs == {"name": "iris", "version": "1", "model_id": IRIS.model_id, "owner": OWNER.address}
    assert chain.answer("/registry/model", b"iris@1") == manifest


def test_reregistering_a_name_by_its_owner_adds_version_2_and_latest_points_to_it(chain):
    assert_ok(chain.deliver(OWNER, IRIS))
    first_height = chain.height
    assert_ok(chain.deliver(OWNER, IRIS_V2))
    latest = chain.answer("/registry/model", b"iris")
    assert (latest["version"], latest["model_id"], latest["price"]) == (2, IRIS_V2.model_id, "2500")
    assert latest["modes"] == ["tee", "vanilla"] and latest["owner"] == OWNER.address
    assert chain.answer("/registry/model", b"iris@2") == latest
    old = chain.answer("/registry/model", b"iris@1")
    assert (old["version"], old["model_id"], old["price"], old["height"]) == (1, IRIS.model_id, "1000", first_height)
    assert chain.answer("/registry/models") == {"models": [latest]}
    # A version that was never registered is not found, and a historical query still sees version 1.
    assert chain.query("/registry/model", b"iris@3").code == errors.NotFound.code
    assert chain.answer("/registry/model", b"iris", height=first_height)["version"] == 1


def test_registering_a_name_owned_by_another_account_is_rejected_unauthorized_with_no_state_change(chain):
    assert_ok(chain.deliver(OWNER, IRIS))
    hijack = dataclasses.replace(IRIS_V2, price=0)
    assert_rejected_without_state_change(
        chain, MALLORY, chain.tx(MALLORY, hijack), errors.Unauthorized.code, "belongs to another owner"
    )
    manifest = chain.answer("/registry/model", b"iris")
    assert (manifest["version"], manifest["owner"], manifest["price"]) == (1, OWNER.address, "1000")


def test_registering_another_name_with_a_model_id_owned_by_someone_else_does_not_take_over_that_id(chain):
    assert_ok(chain.deliver(OWNER, IRIS))
    copycat = dataclasses.replace(IRIS, name="iris-copy", price=0, modes=("tee",))
    # A model id is content (issue 19): the copy registers under its own name, and the id keeps
    # resolving to the first name registered for it, the owner's.
    assert_ok(chain.deliver(MALLORY, copycat))
    assert chain.app.registry.model_by_id(chain.app.store, IRIS.model_id).owner == OWNER.address
    assert chain.app.registry.names_of(chain.app.store, IRIS.model_id) == ["iris", "iris-copy"]


def test_a_squatter_registering_the_uploaders_model_id_first_does_not_lock_the_uploader_out(chain):
    """Issue 19: MALLORY saw OWNER's bytes on the hub and registered their id first under a name of
    its own; OWNER still registers its own bytes under its own name."""
    assert_ok(chain.deliver(MALLORY, dataclasses.replace(IRIS, name="iris-squat", price=1)))
    assert chain.deliver(OWNER, IRIS).code == 0


def test_a_model_id_under_several_names_resolves_to_the_name_the_node_serves(chain):
    assert_ok(chain.deliver(MALLORY, dataclasses.replace(IRIS, name="iris-squat", price=1)))
    assert_ok(chain.deliver(OWNER, IRIS))
    assert_ok(chain.deliver(NODE_A, NODE_IRIS))  # serves OWNER's "iris"
    height = chain.height
    served = chain.answer("/registry/model_in_effect", f"{IRIS.model_id}@{height}@{NODE_A.address}".encode())
    assert (served["name"], served["owner"], served["price"]) == ("iris", OWNER.address, "1000")
    # without a node (or for a node serving neither name): the first name registered for the bytes
    first = chain.answer("/registry/model_in_effect", f"{IRIS.model_id}@{height}".encode())
    assert (first["name"], first["owner"]) == ("iris-squat", MALLORY.address)
    other = chain.answer("/registry/model_in_effect", f"{IRIS.model_id}@{height}@{NODE_B.address}".encode())
    assert other["name"] == "iris-squat"
    bad = chain.query("/registry/model_in_effect", f"{IRIS.model_id}@{height}@nobody".encode())
    assert bad.code == errors.InvalidQuery.code
    # a node cannot list two names of one model id: its receipts, which name the bytes, would be ambiguous
    both = dataclasses.replace(NODE_IRIS, models=("iris", "iris-squat"))
    assert_rejected_without_state_change(
        chain, NODE_B, chain.tx(NODE_B, both), errors.InvalidMessage.code, "same bytes"
    )


def test_models_query_lists_the_latest_version_of_every_model_by_name(chain):
    assert chain.answer("/registry/models") == {"models": []}
    chain.block([chain.tx(OWNER, IRIS), chain.tx(OWNER, DIGITS, offset=1), chain.tx(OWNER, IRIS_V2, offset=2)])
    models = chain.answer("/registry/models")["models"]
    assert [(m["name"], m["version"]) for m in models] == [("digits", 1), ("iris", 2)]
    assert models[0]["input_schema"] == DIGITS.input_schema


def test_model_query_with_prove_returns_a_proof_of_the_manifest_that_verifies_against_the_app_hash(chain):
    assert_ok(chain.deliver(OWNER, IRIS))
    resp = chain.query("/registry/model", b"iris@1", prove=True)
    assert resp.code == 0, resp.log
    (op,) = resp.proof_ops.ops
    assert op.key == model_key("iris", 1)
    assert verify_proof(chain.app.store.app_hash, op.key, op.data) == canonical_json(json.loads(resp.value))


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"nope", errors.NotFound.code),
        (b"iris@0x1", errors.InvalidQuery.code),
        (b"iris@-1", errors.InvalidQuery.code),
        (b"iris@1@2", errors.InvalidQuery.code),
    ],
)
def test_model_query_of_a_missing_model_or_a_malformed_version_answers_its_code(chain, data, code):
    assert_ok(chain.deliver(OWNER, IRIS))
    resp = chain.query("/registry/model", data)
    assert resp.code == code, resp.log
    assert resp.log and not resp.value


@pytest.mark.parametrize("data", ["iris@4294967296", "iris@²", "iris@" + "9" * 30])
def test_model_query_with_an_out_of_range_or_non_ascii_version_answers_an_error_code_instead_of_raising(chain, data):
    assert_ok(chain.deliver(OWNER, IRIS))
    resp = chain.query("/registry/model", data.encode())
    assert resp.code == errors.InvalidQuery.code, resp.log  # refused as a query, not looked up


# --- nodes -----------------------------------------------------------------------------------------


def test_register_node_stores_it_and_node_queries_return_it(chain):
    chain.block([chain.tx(OWNER, IRIS), chain.tx(OWNER, DIGITS, offset=1)])
    both = MsgRegisterNode(endpoint="https://b.example", modes=("tee", "vanilla"), models=("digits", "iris"), price=0)
    chain.block([chain.tx(NODE_A, NODE_IRIS), chain.tx(NODE_B, both)])
    node_a = chain.answer("/registry/node", NODE_A.address.encode())
    assert node_a == {
        "endpoint": "http://10.0.0.1:8000",
        "modes": ["vanilla"],
        "models": ["iris"],
        "price": "1200",
        "address": NODE_A.address,
        "height": chain.height,
    }
    # Addresses are accepted in any case.
    assert chain.answer("/registry/node", NODE_A.address.upper().replace("0X", "0x").encode()) == node_a
    nodes = chain.answer("/registry/nodes")["nodes"]
    assert sorted(n["address"] for n in nodes) == sorted([NODE_A.address, NODE_B.address])
    assert next(n for n in nodes if n["address"] == NODE_B.address)["models"] == ["digits", "iris"]
    resp = chain.query("/registry/node", NODE_A.address.encode(), prove=True)
    (op,) = resp.proof_ops.ops
    assert op.key == node_key(NODE_A.address)
    assert verify_proof(chain.app.store.app_hash, op.key, op.data) == canonical_json(node_a)


def test_reregistering_a_node_replaces_its_record(chain):
    chain.block([chain.tx(OWNER, IRIS), chain.tx(OWNER, DIGITS, offset=1)])
    assert_ok(chain.deliver(NODE_A, NODE_IRIS))
    moved = MsgRegisterNode(endpoint="https://new.example", modes=("tee",), models=("digits",), price=9)
    assert_ok(chain.deliver(NODE_A, moved))
    node = chain.answer("/registry/node", NODE_A.address.encode())
    assert (node["endpoint"], node["models"], node["modes"]) == ("https://new.example", ["digits"], ["tee"])
    assert len(chain.answer("/registry/nodes")["nodes"]) == 1


def test_register_node_requires_every_listed_model_to_be_registered(chain):
    assert_ok(chain.deliver(OWNER, IRIS))
    msg = dataclasses.replace(NODE_IRIS, models=("iris", "nope"))
    assert_rejected_without_state_change(chain, NODE_A, chain.tx(NODE_A, msg), errors.NotFound.code, "'nope'")
    assert chain.query("/registry/node", NODE_A.address.encode()).code == errors.NotFound.code
    assert chain.answer("/registry/nodes") == {"nodes": []}


def test_register_node_requires_each_model_to_share_a_mode_with_the_node(chain):
    chain.block([chain.tx(OWNER, IRIS), chain.tx(OWNER, DIGITS, offset=1)])
    # iris allows only vanilla, digits only tee: a vanilla-only node cannot serve digits.
    msg = dataclasses.replace(NODE_IRIS, models=("digits", "iris"))
    assert_rejected_without_state_change(chain, NODE_A, chain.tx(NODE_A, msg), errors.Unauthorized.code, "digits")
    tee_only = dataclasses.replace(NODE_IRIS, modes=("tee",))
    assert_rejected_without_state_change(chain, NODE_A, chain.tx(NODE_A, tee_only), errors.Unauthorized.code, "iris")
    assert chain.answer("/registry/nodes") == {"nodes": []}


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"not-an-address", errors.InvalidQuery.code),
        (b"\xff\xfe", errors.InvalidQuery.code),
        (("0x" + "12" * 20).encode(), errors.NotFound.code),
    ],
)
def test_node_query_of_a_bad_or_unregistered_address_answers_its_code(chain, data, code):
    resp = chain.query("/registry/node", data)
    assert resp.code == code, resp.log
    assert resp.log and not resp.value


# --- stateless validation --------------------------------------------------------------------------


def _schema(**spec) -> dict:
    return {"x": {"dtype": "float32", "shape": [1, 4], **spec}}


@pytest.mark.parametrize(
    ("msg", "log_part"),
    [
        (dataclasses.replace(IRIS, input_schema=_schema(dtype="float16")), "dtype"),
        (dataclasses.replace(IRIS, input_schema=_schema(dtype="FLOAT32")), "dtype"),
        (dataclasses.replace(IRIS, output_schema=_schema(shape=[1, 0])), "shape"),
        (dataclasses.replace(IRIS, input_schema=_schema(shape=[-2])), "shape"),
        (dataclasses.replace(IRIS, input_schema=_schema(shape=[True])), "shape"),
        (dataclasses.replace(IRIS, input_schema=_schema(shape="1x4")), "shape"),
        (dataclasses.replace(IRIS, input_schema=_schema(layout="nchw")), "input_schema.x"),
        (dataclasses.replace(IRIS, input_schema={"x": {"shape": [1]}}), "input_schema.x"),
        (dataclasses.replace(IRIS, output_schema={}), "output_schema"),
        (dataclasses.replace(IRIS, input_schema={"x": {"dtype": "uint8", "shape": [1] * 3000}}), "input_schema"),
        (dataclasses.replace(IRIS, name="Iris"), "name"),
        (dataclasses.replace(IRIS, model_id="sha256:xyz"), "model_id"),
        (dataclasses.replace(IRIS, modes=("gpu",)), "modes"),
        (dataclasses.replace(IRIS, modes=()), "modes"),
        (dataclasses.replace(NODE_IRIS, endpoint="ftp://x"), "endpoint"),
        (dataclasses.replace(NODE_IRIS, models=()), "models"),
    ],
)
def test_check_tx_rejects_a_registry_message_with_a_bad_schema_or_field_as_malformed(chain, msg, log_part):
    raw = chain.tx(OWNER, msg)
    check_writes = dict(chain.app.check_state.writes)
    resp = chain.check(raw)
    assert resp.code == errors.TxDecodeFailed.code, resp.log  # decoding is validation: it never decodes
    assert log_part in resp.log
    assert chain.app.check_state.writes == check_writes
    # Nothing was charged: the owner's next valid tx passes at the same nonce.
    assert chain.check(chain.tx(OWNER, IRIS)).code == 0


def test_a_lowered_price_delay_never_puts_a_newer_version_in_effect_before_the_one_it_follows(tmp_path):
    """Issue 23's finding: v2 is registered under a long price_delay, governance then lowers it, and
    v3 (registered later) would take effect before v2 — so v3's terms, then v2's older ones, would
    apply in turn. A version's terms never take effect before those of the version it follows."""
    authority = PrivateKey.from_seed("registry-authority")
    genesis = dataclasses.replace(
        GENESIS,
        accounts=(*GENESIS.accounts, GenesisAccount(authority.address, FUNDS)),
        authorities=(authority.address,),
    )
    chain = Node(tmp_path / "state.db")
    chain.init(genesis)
    chain.block()
    try:
        assert_ok(chain.deliver(OWNER, IRIS))
        assert_ok(chain.deliver(OWNER, dataclasses.replace(IRIS, price=2_000)))  # v2, effective after 20 blocks
        v2 = chain.answer("/registry/model", b"iris@2")
        assert_ok(chain.deliver(authority, MsgUpdateParams("registry", {"price_delay": 1})))
        assert_ok(chain.deliver(OWNER, dataclasses.replace(IRIS, price=3_000)))  # v3
        v3 = chain.answer("/registry/model", b"iris@3")
        assert v3["effective_height"] == v2["effective_height"] > v3["height"] + 1
        versions = [
            chain.answer("/registry/model_in_effect", f"{IRIS.model_id}@{h}".encode())["version"]
            for h in range(v2["height"], v2["effective_height"] + 2)
        ]
        assert versions == sorted(versions) and versions[-1] == 3 and 2 not in versions  # v3 replaces v2 at once
    finally:
        chain.close()
