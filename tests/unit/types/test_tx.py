import json

import pytest
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haca.crypto.keys import PrivateKey, SignatureError
from haca.types.bank import MsgSend
from haca.types.tx import MAX_MSGS_PER_TX, MAX_TX_BYTES, Tx, TxDecodeError, build_tx, decode_tx

CHAIN_ID = "haca-test"
ALICE = PrivateKey.from_seed("alice")
BOB = PrivateKey.from_seed("bob")
RECIPIENT = "0x" + "22" * 20


def _valid_tx(**overrides) -> Tx:
    fields = {"chain_id": CHAIN_ID, "signer": ALICE.address, "nonce": 0, "fee": 5_000}
    fields.update(overrides)
    msgs = fields.pop("msgs", (MsgSend(RECIPIENT, 7),))
    return Tx(msgs=msgs, **fields).signed(ALICE)


VALID = _valid_tx()
VALID_BODY = json.loads(VALID.encode())


def _raw(body: object) -> bytes:
    return json.dumps(body).encode()


def _with(**changes) -> dict:
    return {**VALID_BODY, **changes}


def _with_msg_value(**changes) -> dict:
    value = {**VALID_BODY["msgs"][0]["value"], **changes}
    return _with(msgs=[{"type": "bank/send", "value": value}])


# --- round trip and signatures -------------------------------------------------------------------


def test_encode_decode_round_trip_preserves_every_field_and_bytes():
    tx = _valid_tx(nonce=41, fee=10**30, msgs=(MsgSend(RECIPIENT, 1), MsgSend(BOB.address, 2**256 - 1)))
    decoded = decode_tx(tx.encode())
    assert decoded == tx
    assert decoded.encode() == tx.encode()
    decoded.verify_signature()


def test_signature_from_hand_written_eip712_with_eth_account_is_accepted():
    account = Account.from_key(ALICE.secret)
    typed = {
        "domain": {"name": "HACA", "version": "1"},
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"}],
            "Tx": [
                {"name": "chainId", "type": "string"},
                {"name": "signer", "type": "address"},
                {"name": "nonce", "type": "uint64"},
                {"name": "fee", "type": "uint256"},
                {"name": "msg0", "type": "MsgSend"},
            ],
            "MsgSend": [{"name": "to", "type": "address"}, {"name": "amount", "type": "uint256"}],
        },
        "primaryType": "Tx",
        "message": {
            "chainId": CHAIN_ID,
            "signer": account.address,
            "nonce": 3,
            "fee": 123_456,
            "msg0": {"to": RECIPIENT, "amount": 500},
        },
    }
    signed = Account.sign_typed_data(account.key, full_message=typed)
    wire = {
        "chain_id": CHAIN_ID,
        "signer": account.address,  # checksummed on the wire: decoding lower-cases it
        "nonce": 3,
        "fee": "123456",
        "msgs": [{"type": "bank/send", "value": {"to": RECIPIENT, "amount": "500"}}],
        "signature": "0x" + bytes(signed.signature).hex(),
    }
    tx = decode_tx(_raw(wire))
    assert tx.digest() == bytes(signed.message_hash)
    tx.verify_signature()
    assert tx.recover_signer() == account.address.lower() == tx.signer


def test_signature_by_another_key_fails_verification():
    forged = Tx(CHAIN_ID, ALICE.address, 0, 5_000, (MsgSend(RECIPIENT, 7),)).signed(BOB)
    tx = decode_tx(forged.encode())
    assert tx.recover_signer() == BOB.address
    with pytest.raises(SignatureError):
        tx.verify_signature()


@pytest.mark.parametrize(
    "body",
    [
        _with(nonce=1),
        _with(fee="5001"),
        _with(chain_id="other-chain"),
        _with_msg_value(amount="8"),
        _with_msg_value(to=BOB.address),
    ],
    ids=["nonce", "fee", "chain_id", "amount", "recipient"],
)
def test_changing_any_signed_field_breaks_the_signature(body):
    with pytest.raises(SignatureError):
        decode_tx(_raw(body)).verify_signature()


# --- stateless rejection -------------------------------------------------------------------------


def _rejects(raw: bytes) -> str:
    with pytest.raises(TxDecodeError) as info:
        decode_tx(raw)
    assert str(info.value), "the reason must be readable"
    return str(info.value)


def test_garbage_bytes_are_rejected():
    for raw in (b"", b"\x00\xff\xfe garbage", b"\x80\x81\x82", b"{not json}", b"0x1234"):
        _rejects(raw)


def test_every_truncation_of_a_valid_tx_is_rejected():
    raw = VALID.encode()
    for end in range(len(raw)):
        _rejects(raw[:end])


@pytest.mark.parametrize("body", [[], [VALID_BODY], "tx", 1, None, True])
def test_non_object_json_is_rejected(body):
    assert "object" in _rejects(_raw(body))


@pytest.mark.parametrize("field", sorted(VALID_BODY))
def test_a_missing_field_is_rejected(field):
    body = dict(VALID_BODY)
    del body[field]
    _rejects(_raw(body))


def test_an_extra_field_is_rejected_at_top_level_and_in_a_message():
    _rejects(_raw(_with(memo="hi")))
    _rejects(_raw(_with_msg_value(memo="hi")))
    _rejects(_raw(_with(msgs=[{**VALID_BODY["msgs"][0], "extra": 1}])))


def test_an_unknown_message_type_is_rejected_and_named():
    reason = _rejects(_raw(_with(msgs=[{"type": "bank/mint", "value": {"to": RECIPIENT, "amount": "1"}}])))
    assert "unknown message type" in reason and "bank/mint" in reason


@pytest.mark.parametrize(
    "body",
    [
        _with_msg_value(amount=1.5),
        _with_msg_value(amount=7.0),
        _with_msg_value(amount="7.0"),
        _with_msg_value(amount="1e3"),
        _with(fee=5000.0),
        _with(nonce=0.0),
        _with_msg_value(amount=-7),
        _with_msg_value(amount="-7"),
        _with(fee="-1"),
        _with(nonce=-1),
        _with_msg_value(amount="07"),
        _with_msg_value(amount="00"),
        _with(fee="05000"),
        _with(nonce="00"),
        _with_msg_value(amount=" 7"),
        _with_msg_value(amount="+7"),
        _with_msg_value(amount="\u0667"),  # a non-ASCII digit
        _with_msg_value(amount=True),
        _with_msg_value(amount=None),
        _with_msg_value(amount=2**256),
        _with(nonce=2**64),
    ],
)
def test_non_canonical_negative_float_or_out_of_range_numbers_are_rejected(body):
    _rejects(_raw(body))


@pytest.mark.parametrize("amount", [0, "0"])
def test_a_zero_amount_is_rejected(amount):
    assert "positive" in _rejects(_raw(_with_msg_value(amount=amount)))


@pytest.mark.parametrize(
    "body",
    [
        _with(signer="0x1234"),
        _with(signer="0x" + "zz" * 20),
        _with(signer=12345),
        _with(signer=None),
        _with_msg_value(to="0x" + "22" * 19),
        _with_msg_value(to="0x" + "22" * 21),
        _with_msg_value(to="0x" + "gg" * 20),
        _with_msg_value(to=["0x" + "22" * 20]),
        _with_msg_value(to=""),
    ],
)
def test_a_bad_address_is_rejected(body):
    _rejects(_raw(body))


def test_an_address_without_0x_is_rejected_or_normalised_to_0x_form():
    body = _with_msg_value(to="22" * 20)
    try:
        tx = decode_tx(_raw(body))
    except TxDecodeError:
        return
    assert tx.msgs[0].to == "0x" + "22" * 20


@pytest.mark.parametrize(
    "body",
    [_with(signature="abcd"), _with(signature="0xzz"), _with(signature=None), _with(chain_id=""), _with(chain_id=7)],
)
def test_malformed_signature_or_chain_id_is_rejected(body):
    _rejects(_raw(body))


def test_an_oversize_tx_is_rejected_before_parsing():
    raw = VALID.encode()
    padded = raw[:-1] + b" " * (MAX_TX_BYTES + 1 - len(raw)) + b"}"  # still valid JSON
    assert len(padded) == MAX_TX_BYTES + 1
    assert json.loads(padded) == VALID_BODY
    assert str(MAX_TX_BYTES) in _rejects(padded)
    decode_tx(raw[:-1] + b" " * (MAX_TX_BYTES - len(raw)) + b"}")  # exactly at the limit: accepted


def test_more_than_the_maximum_messages_is_rejected_and_the_maximum_is_accepted():
    msg = VALID_BODY["msgs"][0]
    assert len(decode_tx(_raw(_with(msgs=[msg] * MAX_MSGS_PER_TX))).msgs) == MAX_MSGS_PER_TX
    _rejects(_raw(_with(msgs=[msg] * (MAX_MSGS_PER_TX + 1))))


def test_an_empty_or_non_list_msgs_is_rejected():
    for msgs in ([], {}, "bank/send", [None], [{"type": "bank/send", "value": []}], [{"type": ["x"], "value": {}}]):
        _rejects(_raw(_with(msgs=msgs)))


def test_a_huge_integer_literal_is_a_decode_error():
    with pytest.raises(TxDecodeError):
        decode_tx(b'{"nonce": ' + b"1" * 5000 + b"}")


# --- properties ----------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = sorted(VALID_BODY)


def _decodes_or_raises_decode_error(raw: bytes) -> None:
    try:
        tx = decode_tx(raw)
    except TxDecodeError:
        return
    assert isinstance(tx, Tx)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_decode_of_arbitrary_bytes_only_raises_tx_decode_error(raw):
    _decodes_or_raises_decode_error(raw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), JSON_VALUES, max_size=8)
    | st.fixed_dictionaries({name: JSON_VALUES for name in FIELDS})  # every field present, any values
)
def test_decode_of_arbitrary_json_objects_only_raises_tx_decode_error(body):
    _decodes_or_raises_decode_error(json.dumps(body).encode())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([*FIELDS, "msgs.type", "msgs.value", "msgs.value.to", "msgs.value.amount"]),
    JSON_VALUES,
)
def test_decode_of_a_valid_tx_with_one_field_replaced_only_raises_tx_decode_error(path, value):
    body = json.loads(VALID.encode())
    if path.startswith("msgs."):
        target = body["msgs"][0]
        for part in path.split(".")[1:-1]:
            target = target[part]
        target[path.rsplit(".", 1)[1]] = value
    else:
        body[path] = value
    _decodes_or_raises_decode_error(json.dumps(body).encode())


# --- build_tx ------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(fee_base=st.integers(0, 10**24), fee_per_byte=st.integers(0, 10**9), nonce=st.integers(0, 2**64 - 1))
def test_build_tx_fee_is_exactly_base_plus_per_byte_times_encoded_length(fee_base, fee_per_byte, nonce):
    tx = build_tx(ALICE, CHAIN_ID, nonce, (MsgSend(RECIPIENT, 1),), fee_base, fee_per_byte)
    assert tx.fee == fee_base + fee_per_byte * len(tx.encode())
    assert decode_tx(tx.encode()) == tx
    tx.verify_signature()
