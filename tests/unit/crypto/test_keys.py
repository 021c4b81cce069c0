from eth_account import Account

from haca.crypto.keys import PrivateKey, SignatureError, recover_signer, typed_data_digest

TYPED = {
    "domain": {"name": "HACA", "version": "1"},
    "types": {
        "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"}],
        "Ping": [{"name": "n", "type": "uint256"}],
    },
    "primaryType": "Ping",
    "message": {"n": 7},
}


def test_address_matches_eth_account():
    key = PrivateKey.from_seed("x")
    assert key.address == Account.from_key(key.secret).address.lower()


def test_signature_recovers_to_signer_and_not_to_another_key():
    key, other = PrivateKey.from_seed("a"), PrivateKey.from_seed("b")
    sig = key.sign_typed_data(TYPED)
    assert recover_signer(typed_data_digest(TYPED), sig) == key.address
    assert recover_signer(typed_data_digest(TYPED), sig) != other.address


def test_recover_rejects_malformed_signatures():
    digest = typed_data_digest(TYPED)
    for bad in (b"", b"\x00" * 64, b"\x01" * 64 + b"\x05"):
        try:
            recover_signer(digest, bad)
        except SignatureError:
            continue
        raise AssertionError(f"accepted {bad!r}")
