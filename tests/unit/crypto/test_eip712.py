"""Our fast EIP-712 digest must equal eth-account's for every struct shape HACA uses."""

from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st

from haca.crypto.eip712 import typed_data_digest
from haca.crypto.hashing import keccak256
from haca.crypto.keys import PrivateKey, recover_signer

DOMAIN_TYPE = [{"name": "name", "type": "string"}, {"name": "version", "type": "string"}]
addresses = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
SCALARS = {
    "string": st.text(max_size=40),
    "address": addresses,
    "uint256": st.integers(0, 2**256 - 1),
    "uint64": st.integers(0, 2**64 - 1),
    "bytes32": st.binary(min_size=32, max_size=32),
    "bytes": st.binary(max_size=70),
    "bool": st.booleans(),
    "string[]": st.lists(st.text(max_size=10), max_size=4),
}


def reference_digest(typed: dict) -> bytes:
    signable = encode_typed_data(full_message=typed)
    return keccak256(b"\x19" + signable.version + signable.header + signable.body)


@st.composite
def typed_data(draw):
    kinds = draw(st.lists(st.sampled_from(sorted(SCALARS)), min_size=1, max_size=6))
    inner_kinds = draw(st.lists(st.sampled_from(sorted(SCALARS)), min_size=1, max_size=3))
    types = {
        "EIP712Domain": DOMAIN_TYPE,
        "Inner": [{"name": f"i{n}", "type": t} for n, t in enumerate(inner_kinds)],
        "Outer": [{"name": f"f{n}", "type": t} for n, t in enumerate(kinds)] + [{"name": "inner", "type": "Inner"}],
    }
    message = {f"f{n}": draw(SCALARS[t]) for n, t in enumerate(kinds)}
    message["inner"] = {f"i{n}": draw(SCALARS[t]) for n, t in enumerate(inner_kinds)}
    domain = {"name": draw(st.text(max_size=10)), "version": "1"}
    return {"domain": domain, "types": types, "primaryType": "Outer", "message": message}


@settings(max_examples=150, deadline=None)
@given(typed_data())
def test_fast_digest_equals_eth_account(typed):
    assert typed_data_digest(typed) == reference_digest(typed)


def test_our_signature_recovers_and_matches_eth_account_signature():
    key = PrivateKey.from_seed("signer")
    typed = {
        "domain": {"name": "HACA", "version": "1"},
        "types": {"EIP712Domain": DOMAIN_TYPE, "Ping": [{"name": "n", "type": "uint256"}]},
        "primaryType": "Ping",
        "message": {"n": 1},
    }
    ours = key.sign_typed_data(typed)
    theirs = bytes(Account.sign_typed_data(key.secret, full_message=typed).signature)
    assert ours == theirs  # RFC 6979 deterministic nonces: the same bytes
    assert recover_signer(typed_data_digest(typed), ours) == key.address
