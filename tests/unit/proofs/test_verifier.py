"""The per-mode verifier framework: one protocol, a vanilla verifier that decides which key must
have signed, and a verdict cache keyed by the evidence so repeated checks cost nothing."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from haca.crypto.keys import PrivateKey
from haca.proofs.receipt import EvidenceError
from haca.proofs.verifier import VanillaVerifier, VerdictCache, VerifyContext, verifiers, verify
from haca.types.encoding import canonical_json
from haca.types.modes import Mode, Status
from haca.types.receipt import Receipt, SignedReceipt

NODE, OTHER = PrivateKey.from_seed("verifier-node"), PrivateKey.from_seed("verifier-other")


def signed(mode: str = Mode.VANILLA, key: PrivateKey = NODE) -> SignedReceipt:
    r = Receipt(
        "c", NODE.address, OTHER.address, "0x" + "01" * 32, "sha256:" + "ab" * 32, mode,
        "0x" + "02" * 32, "0x" + "03" * 32, 10, 5, 0,
    )  # fmt: skip
    return SignedReceipt(r, r.sign(key))


def context(node: str = NODE.address) -> VerifyContext:
    return VerifyContext("c", 6, 1_700_000_000, "m", node)


def test_a_vanilla_receipt_signed_by_its_node_settles_unverified() -> None:
    verdict = verify(verifiers(), signed(), b"", context())
    assert (verdict.status, verdict.signer) == (Status.SETTLED, NODE.address)


def test_a_vanilla_receipt_with_evidence_is_refused() -> None:
    with pytest.raises(EvidenceError, match="vanilla receipts carry no evidence"):
        verify(verifiers(), signed(), b"\x01", context())


def test_the_signer_must_be_the_nodes_account_key() -> None:
    with pytest.raises(EvidenceError, match=f"is signed by {OTHER.address}"):
        verify(verifiers(), signed(key=OTHER), b"", context())
    with pytest.raises(EvidenceError, match="but is signed by"):  # the node record is another node
        verify(verifiers(), signed(), b"", context(OTHER.address))


def test_a_mode_without_a_verifier_is_refused_with_its_name() -> None:
    table = {Mode.VANILLA: verifiers()[Mode.VANILLA]}  # a chain version that knows vanilla only
    with pytest.raises(EvidenceError, match="mode 'zkml' evidence is not supported"):
        verify(table, signed(Mode.ZKML), b"", context())


def test_the_cache_recovers_each_signature_once_and_never_caches_a_failure() -> None:
    cache = VerdictCache()
    verifier = VanillaVerifier(cache)
    receipt = signed()
    for _ in range(3):
        verifier.verify(receipt, b"", context())
    assert (cache.misses, cache.hits) == (1, 2)
    broken = replace(receipt, signature=b"\x00" * 65)
    for _ in range(2):
        with pytest.raises(EvidenceError):
            verifier.verify(broken, b"", context())
    assert (cache.misses, cache.hits) == (3, 2)


def test_the_cache_is_bounded() -> None:
    cache = VerdictCache(size=2)
    for n in range(3):
        cache.get((bytes([n]),), lambda n=n: n)
    assert cache.get((b"\x00",), lambda: "recomputed") == "recomputed"


def test_modes_and_statuses_are_their_wire_strings() -> None:
    assert canonical_json({"mode": Mode.TEE, "status": Status.VERIFIED}) == b'{"mode":"tee","status":"verified"}'
    assert json.loads(canonical_json([Mode.VANILLA])) == ["vanilla"] and Mode("zkml") is Mode.ZKML
