"""Fuzz the DEV attestation verifiers a devnet's chain runs on evidence from its dev enclaves and
DEV GPUs: `haca.proofs.tee.dev.verify_dev` (CPU evidence) and `haca.proofs.tee.dev_gpu.verify_dev_gpu`
(GPU evidence, with `haca.types.tee.GpuEvidence.from_json` as a tx carries it). Anything either
verifies or raises AttestationError (from_json: ValueError, as the tx decoder refuses it).

The DEV root and platform are made on the first run in <tmp>/haca-fuzz-dev/ and reused (they are per
devnet; there is no fixture to seed from), and the seeds are evidence they sign. The first byte picks what the rest is:
  0  a dev attestation document (CBOR [payload, signature]);
  1  its payload (CBOR map), sent with the seed's signature;
  2  a DEV GPU report (CBOR), with the platform chain;
  3  the DEV GPU report's chain (PEM), with the seed's report;
  4  GPU evidence as JSON ({"format", "report", "chain"}), read as a tx does and verified.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import atheris
import cbor2
import fuzzlib

with atheris.instrument_imports(include=["haca"]):
    from haca.proofs.tee.claims import AttestationError
    from haca.proofs.tee.dev import issue_dev_platform, make_dev_evidence, make_dev_root, verify_dev
    from haca.proofs.tee.dev_gpu import DEV_GPU_DRIVER_VERSION, DEV_GPU_MEASUREMENTS, make_dev_gpu_report
    from haca.proofs.tee.gpu import verify_gpu
    from haca.types.tee import GpuEvidence

BASE = Path(tempfile.gettempdir()) / "haca-fuzz-dev"  # kept: the same DEV root (and seeds) on every run
ROOT_PEM = make_dev_root(BASE / "root")  # (both reuse the keys and certificates they find)
issue_dev_platform(BASE / "root", BASE / "platform")
KEY_PEM = (BASE / "platform" / "platform.key").read_bytes()
CHAIN_PEM = (BASE / "platform" / "platform.pem").read_bytes()
NOW = int(time.time())
NONCE = bytes(range(32))
DOCUMENT = make_dev_evidence(KEY_PEM, CHAIN_PEM, bytes([7]) * 32, bytes([9]) * 64, NOW)
PAYLOAD, SIGNATURE = cbor2.loads(DOCUMENT)
GPU = make_dev_gpu_report(KEY_PEM, CHAIN_PEM, NONCE, DEV_GPU_MEASUREMENTS, DEV_GPU_DRIVER_VERSION)
ROOTS = {"dev": ROOT_PEM}
STEPS = ("format", "chain", "expired", "signature", "binding")


@atheris.instrument_func
def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 5, data[1:]
    try:
        if mode in (0, 1):
            document = rest if mode == 0 else cbor2.dumps([rest, SIGNATURE])
            claims = verify_dev(document, NOW, ROOT_PEM)
            assert claims.format == "dev" and claims.dev
            claims.to_json()
            return
        if mode == 4:
            try:
                evidence = GpuEvidence.from_json(json.loads(rest))
            except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError and from_json's own
                return
        else:
            evidence = (
                GpuEvidence("dev-gpu", rest, GPU.chain) if mode == 2 else GpuEvidence("dev-gpu", GPU.report, rest)
            )
        report = verify_gpu(evidence, NOW, ROOTS, NONCE)
    except AttestationError as exc:
        assert exc.step in STEPS, exc.step
        return
    assert report.nonce == NONCE and report.dev
    report.to_json()


def seeds() -> Iterator[bytes]:
    yield b"\x00" + DOCUMENT
    yield b"\x01" + PAYLOAD
    yield b"\x02" + GPU.report
    yield b"\x03" + GPU.chain
    yield b"\x04" + json.dumps(GPU.to_json()).encode()


if __name__ == "__main__":
    fuzzlib.main("dev", test_one_input, seeds)
