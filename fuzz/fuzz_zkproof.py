"""Fuzz how a zkml proof is decoded before EZKL's verifier sees it (`haca.proofs.zk.proof`):
`proof_instances` (what the chain compares with the receipt's commitment), `ezkl_proof_json` (what
is handed to `ezkl.verify`) and `instances_commitment`, on HACA's binary encoding (magic HZK\\x01)
and on EZKL's proof JSON (a node's older evidence). Anything either decodes or raises ProofError;
what decodes re-encodes to the same bytes. EZKL's own (Rust) verifier is not fuzzed here.

Seeds: proofs in the wire form and as EZKL JSON of a small circuit's size (a ~3.8 KB transcript,
one row of three field elements), and any proof a local build left under build/ (optional).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import atheris
import fuzzlib

with atheris.instrument_imports(include=["haca"]):
    from haca.proofs.zk.proof import (
        PROOF_MAGIC,
        ProofError,
        decode_proof,
        encode_proof,
        ezkl_proof_json,
        instances_commitment,
        proof_instances,
    )

TRANSCRIPT = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(120))  # 3840 bytes
INSTANCES = (("08" + "11" * 31, "fc" + "00" * 31, "00" * 32),)


@atheris.instrument_func
def test_one_input(data: bytes) -> None:
    try:
        instances = proof_instances(data)
        as_json = ezkl_proof_json(data)
    except ProofError:
        return
    assert instances_commitment(instances).startswith("0x")
    # (EZKL JSON is handed on as it came: its hex may be upper case, the instances read are lower)
    assert [[f.lower() for f in row] for row in json.loads(as_json)["instances"]] == [list(r) for r in instances]
    if data.startswith(PROOF_MAGIC):
        transcript, decoded = decode_proof(data)
        assert decoded == instances and encode_proof(transcript, decoded) == data  # one encoding per proof


def seeds() -> Iterator[bytes]:
    wire = encode_proof(TRANSCRIPT, INSTANCES)
    yield wire
    yield encode_proof(b"\x01", (("00" * 32,), ("01" + "00" * 31, "02" + "00" * 31)))
    yield ezkl_proof_json(wire)
    yield json.dumps({"instances": [list(INSTANCES[0])], "proof": "0x" + TRANSCRIPT.hex()}).encode()
    for path in sorted(fuzzlib.ROOT.glob("build/**/proof*.json"))[:4]:  # a real proof, where one was built
        yield path.read_bytes()


if __name__ == "__main__":
    fuzzlib.main("zkproof", test_one_input, seeds)
