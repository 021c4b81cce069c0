"""Fuzz the NVIDIA GPU report verifier (`haca.proofs.tee.nvidia.verify_nvidia_report`: the SPDM
GET_MEASUREMENTS request and MEASUREMENTS response, its measurement blocks and opaque data, the
GPU's certificate chain): anything either verifies or raises AttestationError.

The first byte picks what the rest is; the other inputs are the fixture's (tests/fixtures/tee/nvidia/):
  0  the report, raw bytes;          1  the report as hex text (as NVIDIA's tools write it);
  2  the certificate chain PEM;      3  the leaf certificate (DER), in front of the fixture's others;
  4  the report, raw, with the crypto stubbed: the leaf's key accepts any signature and the chain
     check passes (the fixture's chain, parsed once), so a mutated report reaches what is read
     after the signature (binding, opaque fields, VBIOS version, chip) and runs ~10x faster than
     through a P-384 verify that always fails.
"""

from __future__ import annotations

import base64
import textwrap
from collections.abc import Iterator

import atheris
import fuzzlib
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

with atheris.instrument_imports(include=["haca"]):
    from haca.proofs.tee import nvidia
    from haca.proofs.tee.claims import AttestationError
    from haca.proofs.tee.nvidia import parse_report_text, verify_nvidia_report

AT = 1_800_000_000  # every certificate is valid until 9999
REPORT_TEXT = fuzzlib.fixture("nvidia/hopperAttestationReport.txt")
REPORT = parse_report_text(REPORT_TEXT)
CHAIN = fuzzlib.fixture("nvidia/hopperCertChain.txt")
CERTS = [c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(CHAIN)]
NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
LOADED = x509.load_pem_x509_certificates(CHAIN)
SUBJECTS = tuple(c.subject.rfc4514_string() for c in LOADED)


class StubLeaf:
    """The fixture's leaf with a key that accepts any signature (mode 4)."""

    subject = LOADED[0].subject

    def public_key(self) -> fuzzlib.AcceptingKey:
        return fuzzlib.AcceptingKey(ec.SECP384R1())


def stub_chain(pem: bytes) -> list[object]:
    return [StubLeaf(), *LOADED[1:]]


def stub_check_chain(certs: object, root_pem: bytes, now: int) -> tuple[str, ...]:
    return SUBJECTS


def pem(der: bytes) -> bytes:
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n".encode()


@atheris.instrument_func
def inputs(mode: int, rest: bytes) -> tuple[bytes, bytes]:
    if mode in (0, 1, 4):
        return rest, CHAIN
    if mode == 2:
        return REPORT, rest
    return REPORT, b"".join(pem(der) for der in [rest, *CERTS[1:]])


@atheris.instrument_func
def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode = data[0] % 5
    report, chain = inputs(mode, data[1:])
    stubs = fuzzlib.patched(nvidia, load_chain=stub_chain, _check_chain=stub_check_chain) if mode == 4 else None
    try:
        if stubs is None:
            verified = verify_nvidia_report(report, chain, AT, NONCE)
        else:
            with stubs:
                verified = verify_nvidia_report(report, chain, AT, NONCE)
    except AttestationError as exc:
        assert exc.step in ("format", "signature", "chain", "expired", "binding"), exc.step
        return
    assert verified.nonce == NONCE
    verified.to_json()
    verified.summary()


def seeds() -> Iterator[bytes]:
    yield b"\x00" + REPORT
    yield b"\x01" + REPORT_TEXT
    yield b"\x02" + CHAIN
    yield b"\x03" + CERTS[0]
    yield b"\x04" + REPORT


if __name__ == "__main__":
    fuzzlib.main("nvidia", test_one_input, seeds)
