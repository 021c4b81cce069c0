"""Fuzz the AWS Nitro attestation verifier (`haca.proofs.tee.nitro.verify_nitro`) at the fixture's
pinned time: anything either verifies or raises AttestationError.

The first byte picks what the rest is (seeds from tests/fixtures/tee/nitro/):
  0  the whole document (the framed fixture file, the bare COSE_Sign1, tagged, base64 text);
  1  the COSE payload (a CBOR map), put back into the fixture's COSE_Sign1;
  2  the protected header, likewise;
  3  the leaf certificate (DER), put back into the fixture's payload.
Modes 1-3 reach the payload, header and certificate checks that a mutated length would otherwise
stop at the outer CBOR. The signature never verifies for a changed payload: that is the point.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import atheris
import cbor2
import fuzzlib

with atheris.instrument_imports(include=["haca"]):
    from haca.proofs.tee.claims import AttestationError
    from haca.proofs.tee.nitro import verify_nitro

NOW = 1766668537  # the document's own timestamp (2025-12-25T13:15:37Z): the chain is valid then
DOCUMENT = fuzzlib.fixture("nitro/nitro_attestation.bin")


def _cose(raw: bytes) -> list[Any]:
    at = raw.find(b"\x84\x44")
    item = cbor2.CBORDecoder(io.BytesIO(raw[at:])).decode()
    assert isinstance(item, list)
    return item


COSE = _cose(DOCUMENT)
PAYLOAD: dict[str, Any] = cbor2.loads(COSE[2])


@atheris.instrument_func
def document_of(mode: int, rest: bytes) -> bytes:
    if mode == 0:
        return rest
    cose = list(COSE)
    if mode == 1:
        cose[2] = rest
    elif mode == 2:
        cose[0] = rest
    else:
        cose[2] = cbor2.dumps({**PAYLOAD, "certificate": rest})
    return cbor2.dumps(cose)


@atheris.instrument_func
def test_one_input(data: bytes) -> None:
    if not data:
        return
    try:
        claims = verify_nitro(document_of(data[0] % 4, data[1:]), NOW)
    except AttestationError as exc:
        assert exc.step in ("format", "payload", "expired", "chain", "signature"), exc.step
        return
    assert claims.format == "nitro"
    claims.to_json()


def seeds() -> Iterator[bytes]:
    bare = cbor2.dumps(COSE)
    yield b"\x00" + DOCUMENT
    yield b"\x00" + bare
    yield b"\x00" + cbor2.dumps(cbor2.CBORTag(18, COSE))
    yield b"\x00" + base64.b64encode(bare)
    yield b"\x01" + COSE[2]
    yield b"\x02" + COSE[0]
    yield b"\x03" + PAYLOAD["certificate"]


if __name__ == "__main__":
    fuzzlib.main("nitro", test_one_input, seeds)
