"""The wire form of a zkml proof (issue 19): a compact, strictly decoded binary encoding of EZKL's
proof transcript and public instances. It round-trips, and every malformed encoding is refused
with a ProofError that says what is wrong (no EZKL needed: these are checks on bytes)."""

from __future__ import annotations

import json

import pytest

from haca.proofs.zk.proof import (
    BN254_R,
    MAX_INSTANCE_ROWS,
    MAX_PROOF_BYTES,
    PROOF_MAGIC,
    ProofError,
    decode_proof,
    encode_ezkl_proof,
    encode_proof,
    ezkl_proof_json,
    proof_instances,
)

TRANSCRIPT = bytes(range(256)) * 15  # the size of a small circuit's proof (~3.8 KB)
INSTANCES = (("08" + "11" * 31, "fc" + "00" * 31, "00" * 32),)
GOOD = encode_proof(TRANSCRIPT, INSTANCES)


def test_the_encoding_round_trips_and_is_the_documented_layout() -> None:
    assert decode_proof(GOOD) == (TRANSCRIPT, INSTANCES) and proof_instances(GOOD) == INSTANCES
    felts = b"".join(bytes.fromhex(f) for f in INSTANCES[0])
    layout = PROOF_MAGIC + len(TRANSCRIPT).to_bytes(4, "big") + TRANSCRIPT + b"\x00\x01" + b"\x00\x00\x00\x03" + felts
    assert layout == GOOD


def test_ezkl_json_converts_both_ways() -> None:
    doc = json.loads(ezkl_proof_json(GOOD))
    assert doc == {"instances": [list(INSTANCES[0])], "proof": list(TRANSCRIPT)}
    ezkl_written = {**doc, "hex_proof": "0x" + TRANSCRIPT.hex(), "pretty_public_inputs": {}, "version": "23"}
    assert encode_ezkl_proof(json.dumps(ezkl_written).encode()) == GOOD


def _felt(value: int) -> bytes:
    return value.to_bytes(32, "little")


def _with_felt(raw: bytes) -> bytes:
    return PROOF_MAGIC + b"\x00\x00\x00\x01x" + b"\x00\x01" + b"\x00\x00\x00\x01" + raw


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"HZK\x02" + GOOD[4:], "not in HACA's binary proof encoding"),
        (GOOD[:3], "not in HACA's binary proof encoding"),
        (PROOF_MAGIC + b"\x00\x00", "cut short: proof length"),
        (PROOF_MAGIC + b"\x00\x00\x00\x00" + b"\x00\x01", "transcript length 0"),
        (PROOF_MAGIC + (MAX_PROOF_BYTES + 1).to_bytes(4, "big"), f"not 1 to {MAX_PROOF_BYTES}"),
        (GOOD[:100], "cut short: proof transcript"),
        (GOOD[: 8 + len(TRANSCRIPT)], "cut short: instance row count"),
        (PROOF_MAGIC + b"\x00\x00\x00\x01x\x00\x00", "0 rows of instances"),
        (PROOF_MAGIC + b"\x00\x00\x00\x01x" + (MAX_INSTANCE_ROWS + 1).to_bytes(2, "big"), "rows of instances"),
        (GOOD[:-1], "cut short: instance row 0"),
        (PROOF_MAGIC + b"\x00\x00\x00\x01x\x00\x01\xff\xff\xff\xff", "cut short: instance row 0"),
        (GOOD + b"\x00", "1 bytes follow the proof's last instance"),
        (_with_felt(_felt(BN254_R)), "not a field element"),
        (_with_felt(b"\xff" * 32), "not a field element"),
    ],
    ids=[
        "bad_magic",
        "shorter_than_magic",
        "no_length",
        "empty_transcript",
        "oversized_transcript",
        "truncated_transcript",
        "no_row_count",
        "zero_rows",
        "too_many_rows",
        "truncated_instance",
        "huge_declared_row",
        "trailing_byte",
        "felt_equal_to_modulus",
        "felt_above_modulus",
    ],
)
def test_a_malformed_encoding_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ProofError, match=reason):
        decode_proof(data)


def test_the_largest_field_element_is_accepted_and_the_encoder_refuses_what_the_decoder_would() -> None:
    top = _felt(BN254_R - 1)
    assert decode_proof(_with_felt(top)) == (b"x", ((top.hex(),),))
    with pytest.raises(ProofError, match="not a field element"):
        encode_proof(b"x", ((_felt(BN254_R).hex(),),))
    with pytest.raises(ProofError, match="rows of instances"):
        encode_proof(b"x", ())
    with pytest.raises(ProofError, match="transcript is 1 to"):
        encode_proof(b"", INSTANCES)


def test_proof_json_with_an_integer_too_long_to_convert_is_a_proof_error() -> None:
    """Found while writing fuzz/fuzz_zkproof.py: json.loads refuses an integer of more than 4300
    digits with a plain ValueError (not a JSONDecodeError), which escaped `proof_instances`."""
    evidence = b'{"instances": [["' + b"00" * 32 + b'"]], "proof": [' + b"1" * 5000 + b"]}"
    with pytest.raises(ProofError, match="neither HACA's binary proof encoding nor EZKL proof JSON"):
        proof_instances(evidence)
    with pytest.raises(ProofError, match="EZKL proof JSON"):
        ezkl_proof_json(evidence)
