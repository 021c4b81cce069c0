"""A consensus key's proof of possession: made only by the key's holder, bound to one operator on one chain."""

from __future__ import annotations

import hashlib

from haca.crypto.consensus import possession_message, sign_possession, verify_possession

SEED = hashlib.sha256(b"a validator's consensus key").digest()
ALICE, BOB = "0x" + "a1" * 20, "0x" + "b2" * 20


def test_a_proof_verifies_for_its_operator_and_chain_only():
    pub_key, proof = sign_possession(SEED, "haca-1", ALICE)
    assert verify_possession(pub_key, proof, "haca-1", ALICE)
    assert not verify_possession(pub_key, proof, "haca-1", BOB)  # front-running with the owner's proof
    assert not verify_possession(pub_key, proof, "haca-2", ALICE)  # replayed on another chain
    assert not verify_possession(pub_key, proof[:63] + bytes([proof[63] ^ 1]), "haca-1", ALICE)
    assert not verify_possession(pub_key[:31], proof, "haca-1", ALICE)


def test_a_small_order_key_with_a_signature_that_needs_no_private_key_is_refused():
    """The identity point A = 0 verifies R = 0, S = 0 for any message under the plain equation
    (S·B = R + k·A): libsodium refuses such keys."""
    identity = bytes([1]) + bytes(31)
    assert not verify_possession(identity, identity + bytes(32), "haca-1", ALICE)
    assert possession_message("haca-1", ALICE, identity).startswith(b"HACA consensus key possession/1\x00haca-1\x00")
