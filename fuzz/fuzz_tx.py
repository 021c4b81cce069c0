"""Fuzz decode_tx: any bytes either decode or raise TxDecodeError. Half the inputs are a valid
signed tx with a slice overwritten, so the fuzzer gets past the JSON parser.

Seeds (a first byte 0: the rest is the tx as it is): signed txs of a bank send, and of enclave
attestations carrying the real Nitro document and SNP report with its VCEK and the NVIDIA GPU
report (tests/fixtures/tee/), so every message type's JSON is reached."""

from __future__ import annotations

from collections.abc import Iterator

import atheris
import fuzzlib

with atheris.instrument_imports(include=["haca"]):
    import haca.types.messages  # noqa: F401
    from haca.crypto.keys import PrivateKey
    from haca.proofs.tee.nvidia import parse_report_text
    from haca.types.bank import MsgSend
    from haca.types.tee import GpuEvidence, MsgAttestEnclave
    from haca.types.tx import Msg, Tx, TxDecodeError, decode_tx

KEY = PrivateKey.from_seed("fuzz")
VALID = Tx("haca-fuzz", KEY.address, 7, 1234, (MsgSend(PrivateKey.from_seed("to").address, 5),)).signed(KEY).encode()
ENCLAVE = PrivateKey.from_seed("fuzz-enclave").address
GPU = GpuEvidence(
    "nvidia",
    parse_report_text(fuzzlib.fixture("nvidia/hopperAttestationReport.txt")),
    fuzzlib.fixture("nvidia/hopperCertChain.txt"),
)
SNP = bytes.fromhex(fuzzlib.fixture("snp/report_milan.hex").decode().strip())
ATTESTATIONS: list[Msg] = [
    MsgAttestEnclave(ENCLAVE, "nitro", fuzzlib.fixture("nitro/nitro_attestation.bin"), b"", 10),
    MsgAttestEnclave(ENCLAVE, "snp", SNP, fuzzlib.fixture("snp/vcek_milan.der"), 10, (GPU,)),
]


@atheris.instrument_func
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


def seeds() -> Iterator[bytes]:
    yield b"\x00" + VALID
    for i, msg in enumerate(ATTESTATIONS):
        yield b"\x00" + Tx("haca-fuzz", KEY.address, 8 + i, 1234, (msg,)).signed(KEY).encode()


if __name__ == "__main__":
    fuzzlib.main("tx", test_one_input, seeds)
