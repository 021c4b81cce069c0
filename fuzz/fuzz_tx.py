"""Fuzz decode_tx: any bytes either decode or raise TxDecodeError. Half the inputs are a valid
signed tx with a slice overwritten, so the fuzzer gets past the JSON parser."""

import sys

import atheris

with atheris.instrument_imports():
    import haca.types.messages  # noqa: F401
    from haca.crypto.keys import PrivateKey
    from haca.types.bank import MsgSend
    from haca.types.tx import Tx, TxDecodeError, decode_tx

KEY = PrivateKey.from_seed("fuzz")
VALID = Tx("haca-fuzz", KEY.address, 7, 1234, (MsgSend(PrivateKey.from_seed("to").address, 5),)).signed(KEY).encode()


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():
        at = fdp.ConsumeIntInRange(0, len(VALID))
        patch = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
        raw = VALID[:at] + patch + VALID[at + fdp.ConsumeIntInRange(0, 40) :]
    else:
        raw = fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        tx = decode_tx(raw)
    except TxDecodeError:
        return
    assert decode_tx(tx.encode()) == tx  # what decodes re-encodes to the same tx


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
