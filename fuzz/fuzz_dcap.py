"""Fuzz the Intel DCAP quote verifier (`haca.proofs.tee.dcap.verify_dcap`: our quote and collateral
decoding, dcap-qvl's parse and verify, then our reading of the verified quote) at the fixture's
pinned time: anything either verifies or raises AttestationError (a Rust panic in dcap-qvl would
surface as pyo3's PanicException, a BaseException: a crash here).

The first byte picks what the rest is; the other input is the fixture's (tests/fixtures/tee/tdx/):
  0  the quote, raw;   1  the quote as hex text;   2  the collateral JSON;
  3  the quote, raw, with dcap-qvl's verification stubbed (it answers the fixture's verified report),
     so a mutated quote reaches what verify_dcap reads after it: dcap-qvl's parse_quote and our
     reading of the header, the TD or enclave report and the certificate chain; several times
     faster than a verification that always fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import atheris
import dcap_qvl
import fuzzlib

with atheris.instrument_imports(include=["haca"]):
    from haca.proofs.tee import dcap
    from haca.proofs.tee.claims import AttestationError
    from haca.proofs.tee.dcap import verify_dcap

NOW = 1751328000  # 2025-07-01T00:00:00Z, the fixture's pinned time
QUOTE = fuzzlib.fixture("tdx/tdx_quote")
COLLATERAL = fuzzlib.fixture("tdx/tdx_quote_collateral.json")
STEPS = ("expired", "format", "debug", "chain", "signature", "tcb_status", "dcap")
VERIFIED = dcap_qvl.verify(QUOTE, dcap_qvl.QuoteCollateralV3.from_json(COLLATERAL.decode()), NOW)
STUBBED_QVL = SimpleNamespace(
    verify=lambda raw, collateral, now: VERIFIED,
    parse_quote=dcap_qvl.parse_quote,
    QuoteCollateralV3=dcap_qvl.QuoteCollateralV3,
)


@atheris.instrument_func
def inputs(mode: int, rest: bytes) -> tuple[bytes, bytes]:
    if mode in (0, 1, 3):
        return rest, COLLATERAL
    return QUOTE, rest


@atheris.instrument_func
def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode = data[0] % 4
    quote, collateral = inputs(mode, data[1:])
    try:
        if mode == 3:
            with fuzzlib.patched(dcap, dcap_qvl=STUBBED_QVL, _tcb_level=lambda raw, collateral, now: {}):
                claims = verify_dcap(quote, collateral, NOW)
        else:
            claims = verify_dcap(quote, collateral, NOW)
    except AttestationError as exc:
        assert exc.step in STEPS, exc.step
        return
    assert claims.format in ("tdx", "sgx") and len(claims.report_data) == 64
    claims.to_json()


def seeds() -> Iterator[bytes]:
    yield b"\x00" + QUOTE
    yield b"\x01" + QUOTE.hex().encode()
    yield b"\x02" + COLLATERAL
    yield b"\x03" + QUOTE


if __name__ == "__main__":
    fuzzlib.main("dcap", test_one_input, seeds)
