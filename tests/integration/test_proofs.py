"""abci_query with prove=true: the proof verifies against the app hash in the next header,
whose commit more than 2/3 of the validators signed; tampering with anything fails."""

from __future__ import annotations

import base64
import copy

import pytest

from haca.client.errors import ProofInvalid
from haca.client.light import LightClientError, validators_from_rpc, verify_signed_header
from haca.crypto.state_proof import ProofError, verify_proof

from .helpers import wait_height

pytestmark = pytest.mark.devnet


def _proof_response(devnet, address: str) -> dict:
    return devnet.client.rpc.abci_query("/bank/balance", address.encode(), prove=True)


def test_proven_balance_matches_the_plain_query(devnet):
    address = devnet.keys.get("dev1").address
    assert devnet.client.proven_balance(address) == devnet.client.balance(address)


def test_proof_verifies_against_the_app_hash_signed_in_the_next_header(devnet):
    address = devnet.keys.get("dev2").address
    response = _proof_response(devnet, address)
    height = int(response["height"])
    wait_height(devnet.client.rpc, height + 1)
    signed = devnet.client.rpc.commit(height + 1)["signed_header"]
    validators = validators_from_rpc(devnet.config.validators)
    app_hash = verify_signed_header(signed, validators, devnet.config.chain_id)
    assert app_hash == bytes.fromhex(devnet.client.rpc.block(height + 1)["block"]["header"]["app_hash"])
    key = base64.b64decode(response["key"])
    proof = base64.b64decode(response["proofOps"]["ops"][0]["data"])
    assert int(verify_proof(app_hash, key, proof)) == devnet.client.balance(address)


def test_tampered_value_is_caught(devnet, monkeypatch):
    address = devnet.keys.get("dev3").address
    real = devnet.client.rpc.abci_query

    def lying_query(path, data=b"", height=0, prove=False):
        response = dict(real(path, data, height, prove))
        response["value"] = base64.b64encode(b'{"address":"%s","balance":"1","denom":"opg"}' % address.encode())
        return response

    monkeypatch.setattr(devnet.client.rpc, "abci_query", lying_query)
    with pytest.raises(ProofInvalid):
        devnet.client.proven_balance(address)


def test_tampered_proof_is_caught(devnet):
    response = _proof_response(devnet, devnet.keys.get("dev4").address)
    app_hash = devnet.client.app_hash_after(int(response["height"]))
    key = base64.b64decode(response["key"])
    proof = bytearray(base64.b64decode(response["proofOps"]["ops"][0]["data"]))
    proof[5] ^= 0x01
    with pytest.raises(ProofError):
        verify_proof(app_hash, key, bytes(proof))


def test_forged_header_or_too_few_signatures_fail_light_client_checks(devnet):
    height = devnet.client.rpc.height()
    signed = devnet.client.rpc.commit(height)["signed_header"]
    validators = validators_from_rpc(devnet.config.validators)
    chain_id = devnet.config.chain_id
    verify_signed_header(signed, validators, chain_id)

    forged = copy.deepcopy(signed)
    forged["header"]["app_hash"] = "00" * 32
    with pytest.raises(LightClientError):
        verify_signed_header(forged, validators, chain_id)

    committed = [i for i, s in enumerate(signed["commit"]["signatures"]) if s["block_id_flag"] == 2]
    few = copy.deepcopy(signed)
    few["commit"]["signatures"] = [few["commit"]["signatures"][i] for i in committed[:2]]  # 2 of 4 equal powers
    with pytest.raises(LightClientError, match="2/3"):
        verify_signed_header(few, validators, chain_id)

    bad_sig = copy.deepcopy(signed)  # two of four signatures flipped: not counted, 2 of 4 is not > 2/3
    for index in committed[:2]:
        entry = bad_sig["commit"]["signatures"][index]
        raw = bytearray(base64.b64decode(entry["signature"]))
        raw[0] ^= 1
        entry["signature"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(LightClientError, match="not more than 2/3"):
        verify_signed_header(bad_sig, validators, chain_id)

    with pytest.raises(LightClientError, match="validators_hash"):
        verify_signed_header(signed, validators[:3], chain_id)
