"""The explorer's in-browser light client (explorer/src/lightclient.js, run here with Node) agrees
with the Python one: a signed header and state proofs that Python accepts, it accepts with the same
app hash and value; each tampering it refuses at the step that broke (chain, validator set, header
hash, signatures, proof). Headers are signed here with ed25519 keys over the same canonical vote
bytes CometBFT signs (haca.client.light); proofs come from a real app store."""

from __future__ import annotations

import base64
import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import rlp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from haca.chain.modules.bank.keeper import balance_key
from haca.client import light
from haca.crypto.hashing import sha256
from haca.crypto.keys import PrivateKey
from haca.crypto.state_proof import encode_proof
from haca.types.bank import MsgSend
from tests.unit.chain.apphelpers import Node, signed_tx
from tests.unit.client import test_lightclient as lc

ROOT = Path(__file__).resolve().parents[2]
EXPLORER = ROOT / "explorer"
CHAIN_ID = "haca-unit"
ALICE, BOB = PrivateKey.from_seed("explorer alice"), PrivateKey.from_seed("explorer bob")


def run_js(cases: list[dict[str, Any]], tmp_path: Path) -> dict[str, dict[str, Any]]:
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(cases))
    done = subprocess.run(
        ["node", str(EXPLORER / "test" / "verify_cases.mjs"), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=EXPLORER,
    )
    assert done.returncode == 0, done.stderr
    return {doc["name"]: doc for doc in map(json.loads, done.stdout.splitlines())}


# --- signed headers ------------------------------------------------------------------------------


def validator_set(n: int) -> tuple[list[Ed25519PrivateKey], list[dict[str, Any]]]:
    keys = [Ed25519PrivateKey.from_private_bytes(sha256(f"validator {i}".encode())) for i in range(n)]
    rpc = []
    for i, key in enumerate(keys):
        pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        rpc.append(
            {
                "address": sha256(pub)[:20].hex().upper(),
                "pub_key": {"type": "tendermint/PubKeyEd25519", "value": base64.b64encode(pub).decode()},
                "voting_power": str(10 + i),
            }
        )
    return keys, rpc


def signed_header(keys: list[Ed25519PrivateKey], rpc: list[dict[str, Any]], app_hash: bytes) -> dict[str, Any]:
    trusted = light.validators_from_rpc(rpc)
    h = lambda tag: sha256(tag.encode()).hex().upper()  # noqa: E731
    header = {
        "version": {"block": "11", "app": "1"},
        "chain_id": CHAIN_ID,
        "height": "42",
        "time": "2026-12-02T10:11:12.123456789Z",
        "last_block_id": {"hash": h("last"), "parts": {"total": 1, "hash": h("parts")}},
        "last_commit_hash": h("commit"),
        "data_hash": h("data"),
        "validators_hash": light.validator_set_hash(trusted).hex().upper(),
        "next_validators_hash": light.validator_set_hash(trusted).hex().upper(),
        "consensus_hash": h("consensus"),
        "app_hash": app_hash.hex().upper(),
        "last_results_hash": h("results"),
        "evidence_hash": "",
        "proposer_address": rpc[0]["address"],
    }
    block_id = {"hash": light.hash_header(header).hex().upper(), "parts": {"total": 1, "hash": h("block parts")}}
    signatures = []
    for i, (key, v) in enumerate(zip(keys, rpc, strict=True)):
        ts = f"2026-12-02T10:11:13.{i:03d}000001Z"
        message = light.precommit_sign_bytes(CHAIN_ID, 42, 0, block_id, ts)
        signatures.append(
            {
                "block_id_flag": 2,
                "validator_address": v["address"],
                "timestamp": ts,
                "signature": base64.b64encode(key.sign(message)).decode(),
            }
        )
    return {"header": header, "commit": {"height": "42", "round": 0, "block_id": block_id, "signatures": signatures}}


def test_the_browser_accepts_the_header_python_accepts_and_refuses_each_tampering_at_its_step(tmp_path):
    keys, rpc = validator_set(4)
    app_hash = sha256(b"the state")
    good = signed_header(keys, rpc, app_hash)
    assert light.verify_signed_header(good, light.validators_from_rpc(rpc), CHAIN_ID) == app_hash

    def case(name: str, sh: dict[str, Any], validators: list[dict[str, Any]] = rpc, chain: str = CHAIN_ID) -> dict:
        return {"name": name, "signed_header": sh, "validators": validators, "chain_id": chain}

    other_app = copy.deepcopy(good)
    other_app["header"]["app_hash"] = sha256(b"another state").hex()
    bad_sig = copy.deepcopy(good)  # two flipped: not counted, 10 + 13 of 46 power left
    for index in (1, 2):
        sig = bytearray(base64.b64decode(bad_sig["commit"]["signatures"][index]["signature"]))
        sig[5] ^= 1
        bad_sig["commit"]["signatures"][index]["signature"] = base64.b64encode(bytes(sig)).decode()
    too_few = copy.deepcopy(good)
    for s in too_few["commit"]["signatures"][1:3]:
        s["block_id_flag"] = 1  # absent: 10 + 13 of 46 power signed
    _, strangers = validator_set(5)
    results = run_js(
        [
            case("good", good),
            case("another app hash", other_app),
            case("a flipped signature", bad_sig),
            case("under two thirds", too_few),
            case("another chain", good, chain="haca-other"),
            case("another trusted set", good, validators=strangers[1:]),
        ],
        tmp_path,
    )
    assert results["good"]["ok"] and results["good"]["value"] == app_hash.hex()
    expected = {
        "another app hash": "header hash",
        "a flipped signature": "signatures",
        "under two thirds": "signatures",
        "another chain": "chain",
        "another trusted set": "validator set",
    }
    for name, step in expected.items():
        assert (results[name]["ok"], results[name]["step"]) == (False, step), results[name]
    assert "not more than 2/3" in results["under two thirds"]["error"]


# --- state proofs from a real store -------------------------------------------------------------


@pytest.fixture
def store_node(tmp_path):
    from haca.chain.genesis import AppGenesis, GenesisAccount

    node = Node(tmp_path / "state.db")
    node.init(AppGenesis(accounts=(GenesisAccount(ALICE.address, 10**12), GenesisAccount(BOB.address, 10**12))))
    node.block()
    for nonce in range(5):
        node.block([signed_tx(ALICE, nonce, MsgSend(BOB.address, 1000 + nonce))])
    yield node
    node.close()


def test_the_browser_reads_state_proofs_as_python_does_and_refuses_a_tampered_one(store_node, tmp_path):
    store = store_node.app.store
    height, root = store.height, store.app_hash
    absent = balance_key(PrivateKey.from_seed("nobody").address)
    cases = []
    for name, key in (("alice", balance_key(ALICE.address)), ("bob", balance_key(BOB.address)), ("absent", absent)):
        value, proof = store.prove(height, key)
        cases.append({"name": name, "root": root.hex(), "key": key.hex(), "proof": base64.b64encode(proof).decode()})
        cases[-1]["expect"] = value.hex()
    value, proof = store.prove(height, balance_key(ALICE.address))
    nodes = rlp.decode(proof)
    nodes[-1] = [*nodes[-1][:-1], str(int(value) + 1).encode()]  # the leaf now claims another balance
    tampered = base64.b64encode(encode_proof(tuple(nodes))).decode()
    cases.append(
        {"name": "tampered leaf", "root": root.hex(), "key": balance_key(ALICE.address).hex(), "proof": tampered}
    )
    cases.append(
        {
            "name": "another root",
            "root": sha256(b"x").hex(),
            "key": balance_key(ALICE.address).hex(),
            "proof": base64.b64encode(proof).decode(),
        }
    )
    results = run_js(cases, tmp_path)
    for c in cases[:3]:
        assert results[c["name"]]["ok"] and results[c["name"]]["value"] == c["expect"], results[c["name"]]
    assert results["alice"]["value"] == str(store_node.balance(ALICE.address)).encode().hex()
    assert results["absent"]["value"] == ""
    for name in ("tampered leaf", "another root"):
        assert (results[name]["ok"], results[name]["step"]) == (False, "proof"), results[name]


# --- across validator-set changes (haca.client.light LightClient, explorer LightClient) -------------------


def rpc_set(validators: tuple[Any, ...]) -> list[dict[str, Any]]:
    return [
        {
            "address": v.address.hex().upper(),
            "pub_key": {"type": "tendermint/PubKeyEd25519", "value": base64.b64encode(v.pub_key).decode()},
            "voting_power": str(v.power),
        }
        for v in validators
    ]


def light_case(name: str, blocks: dict, anchor: int, target: int, now: int, before: tuple[int, ...] = ()) -> dict:
    wire = {
        str(h): {
            "signed_header": b.signed_header,
            "validators": rpc_set(b.validators),
            "next_validators": rpc_set(b.next_validators),
        }
        for h, b in blocks.items()
    }
    light_doc = {"chain_id": lc.CHAIN_ID, "anchor": anchor, "target": target, "now": now, "trusting_period": 3600}
    return {"name": name, "light": {**light_doc, "blocks": wire, "before": list(before)}}


def python_outcome(blocks: dict, anchor: int, target: int, now: int, before: tuple[int, ...] = ()) -> str:
    try:
        client = lc.LightClient(lc.CHAIN_ID, blocks[anchor], lambda h: blocks[h], 3600, lambda: now)
        for height in before:
            client.verified(height)
        return client.verified(target).app_hash.hex()
    except light.LightClientError:
        return "refused"


def test_the_browser_follows_set_changes_as_python_does_and_refuses_the_same_forgeries(tmp_path):
    honest = lc.honest_chain(40)
    forged_forward = dict(honest)
    last = honest[30].hash
    for h in range(31, 36):  # the old set A signing a chain of its own past 30 (whose next set is C)
        forged_forward[h] = lc.make_block(h, last, lc.SET_A, lc.SET_A, app_hash=sha256(b"mallory's state"))
        last = forged_forward[h].hash
    forged_back = dict(honest)
    forged_back[26] = lc.make_block(26, honest[25].hash, lc.SET_A, lc.SET_C, app_hash=sha256(b"mallory's state"))
    t = lc.T0 + 100
    cases = {  # name: (blocks, anchor, target, now, before, the step the browser must name)
        "two set changes, bisected": (honest, 1, 30, t, (), None),
        "forged by a set that lost its power": (forged_forward, 1, 35, t, (30,), "validator set"),
        "below the anchor, down the hash chain": (honest, 30, 25, t, (), None),
        "a forged header below the anchor": (forged_back, 30, 25, t, (), "header hash"),
        "past the trusting period": (honest, 1, 30, lc.T0 + 1 + 3600, (), "trusting period"),
    }
    results = run_js(
        [light_case(name, b, a, tg, now, before) for name, (b, a, tg, now, before, _) in cases.items()], tmp_path
    )
    for name, (blocks, anchor, target, now, before, step) in cases.items():
        python = python_outcome(blocks, anchor, target, now, before)
        if step is None:
            assert results[name]["ok"] and results[name]["value"] == python, (name, results[name])
        else:
            assert python == "refused" and not results[name]["ok"] and results[name]["step"] == step, (
                name,
                results[name],
            )
