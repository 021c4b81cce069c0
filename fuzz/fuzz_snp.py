"""Fuzz the AMD SEV-SNP verifier (`haca.proofs.tee.snp.verify_snp`): a report, its VCEK and the
ASK/ARK chain either verify or raise AttestationError.

The first byte picks what the rest is; the other inputs are the fixture's (tests/fixtures/tee/snp/):
  0  the report, raw (1184 bytes);          1  the report as hex text;
  2  the VCEK certificate (DER);            3  the ASK (DER), sent as the chain PEM with the ARK;
  4  the ARK (DER), after the ASK;          5  the chain PEM text itself;
  6  the report checked against AMD's chain pinned in the package (no chain given);
  7  the report, raw, with the crypto stubbed: the fixture's certificates (parsed once), their
     RSA-PSS chain checks passing and a VCEK key that accepts any signature, so a mutated report
     reaches what is read after the signature (TCB values, fields, claims) and runs several times
     faster than through the P-384 verify that always fails.
"""

from __future__ import annotations

from collections.abc import Iterator

import atheris
import fuzzlib
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

with atheris.instrument_imports(include=["haca"]):
    from haca.proofs.tee import snp
    from haca.proofs.tee.claims import AttestationError
    from haca.proofs.tee.snp import verify_snp

NOW = 1751328000  # 2025-07-01, inside the VCEK's validity
REPORT_HEX = fuzzlib.fixture("snp/report_milan.hex")
REPORT = bytes.fromhex(REPORT_HEX.decode().strip())
VCEK = fuzzlib.fixture("snp/vcek_milan.der")
CHAIN = fuzzlib.fixture("snp/cert_chain_milan")
ASK, ARK = (c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(CHAIN))
VCEK_CERT = snp._load_der(VCEK, "VCEK")
CHAIN_CERTS = snp._load_chain(CHAIN, "ASK/ARK chain")
STUBS = {
    "_load_der": lambda der, what: VCEK_CERT,
    "_load_chain": lambda pem, what: CHAIN_CERTS,
    "_public_key": lambda cert, what: fuzzlib.AcceptingKey(ec.SECP384R1()),
    "_check_pss": lambda cert, issuer, what: None,
}


def pem(der: bytes) -> bytes:
    import base64
    import textwrap

    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n".encode()


@atheris.instrument_func
def inputs(mode: int, rest: bytes) -> tuple[bytes, bytes, bytes | None]:
    """(report, vcek, chain_pem) for `mode`."""
    if mode in (0, 1, 7):
        return rest, VCEK, CHAIN
    if mode == 2:
        return REPORT, rest, CHAIN
    if mode == 3:
        return REPORT, VCEK, pem(rest) + pem(ARK)
    if mode == 4:
        return REPORT, VCEK, pem(ASK) + pem(rest)
    if mode == 5:
        return REPORT, VCEK, rest
    return rest, VCEK, None


@atheris.instrument_func
def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode = data[0] % 8
    report, vcek, chain = inputs(mode, data[1:])
    try:
        if mode == 7:
            with fuzzlib.patched(snp, **STUBS):
                claims = verify_snp(report, vcek, NOW, chain)
        else:
            claims = verify_snp(report, vcek, NOW, chain)
    except AttestationError as exc:
        assert exc.step in ("format", "chain", "expired", "signature"), exc.step
        return
    assert claims.format == "snp" and len(claims.report_data) == 64
    claims.to_json()


def seeds() -> Iterator[bytes]:
    yield b"\x00" + REPORT
    yield b"\x01" + REPORT_HEX
    yield b"\x02" + VCEK
    yield b"\x03" + ASK
    yield b"\x04" + ARK
    yield b"\x05" + CHAIN
    yield b"\x06" + REPORT
    yield b"\x07" + REPORT


if __name__ == "__main__":
    fuzzlib.main("snp", test_one_input, seeds)
