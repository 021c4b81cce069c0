"""The dev attester's evidence: made with a per-devnet DEV root, it verifies with the facts it was made
with; a flipped byte in the payload, the signature or the leaf certificate, another root, a time outside
validity or a wrong label fails at the named step; debug evidence is refused by the default policy."""

from __future__ import annotations

import base64
import datetime as dt
import stat
from dataclasses import dataclass
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from haca.crypto.keys import PrivateKey
from haca.enclave.evidence import DevPlatform
from haca.enclave.measure import enclave_measurement
from haca.proofs.tee.attestation import Attestation, verify_attestation
from haca.proofs.tee.binding import key_binding, measurement_id
from haca.proofs.tee.claims import AttestationError, AttestationPolicy
from haca.proofs.tee.dev import (
    DEV_LABEL,
    ROOT_COMMON_NAME,
    TCB_STATUS_FILE,
    issue_dev_platform,
    make_dev_evidence,
    make_dev_root,
    measure_sources,
    verify_dev,
)
from haca.proofs.tee.policy import TeePolicy

CHAIN_ID = "haca-devnet"
NONCE = bytes(range(32))
KEY = PrivateKey.from_seed("dev-enclave")
REPORT_DATA = key_binding(CHAIN_ID, "0x" + "5e" * 20, KEY.address, NONCE)
MEASUREMENT = bytes([7]) * 32


@dataclass(frozen=True)
class Devnet:
    root_dir: Path
    platform_dir: Path
    root_pem: bytes
    now: int

    @property
    def key_pem(self) -> bytes:
        return (self.platform_dir / "platform.key").read_bytes()

    @property
    def chain_pem(self) -> bytes:
        return (self.platform_dir / "platform.pem").read_bytes()

    def evidence(self, debug: bool = False, measurement: bytes = MEASUREMENT) -> bytes:
        return make_dev_evidence(self.key_pem, self.chain_pem, measurement, REPORT_DATA, self.now, debug)


def make_devnet(base: Path) -> Devnet:
    root_pem = make_dev_root(base / "root")
    issue_dev_platform(base / "root", base / "platform")
    return Devnet(base / "root", base / "platform", root_pem, int(dt.datetime.now(dt.UTC).timestamp()))


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Devnet:
    return make_devnet(tmp_path_factory.mktemp("devnet"))


def step_of(document: bytes, devnet: Devnet, now: int | None = None, root_pem: bytes | None = None) -> str:
    with pytest.raises(AttestationError) as e:
        verify_dev(document, devnet.now if now is None else now, devnet.root_pem if root_pem is None else root_pem)
    return e.value.step


def split(document: bytes) -> tuple[dict, bytes, bytes]:
    payload_raw, signature = cbor2.loads(document)
    return cbor2.loads(payload_raw), payload_raw, signature


def resign(devnet: Devnet, payload: dict) -> bytes:
    """A document with `payload` as given, signed properly by the platform key."""
    key = serialization.load_pem_private_key(devnet.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    raw = cbor2.dumps(payload)
    return cbor2.dumps([raw, key.sign(raw, ec.ECDSA(hashes.SHA256()))])


def flip(data: bytes, offset: int) -> bytes:
    b = bytearray(data)
    b[offset] ^= 0x01
    return bytes(b)


def test_root_and_platform_files_are_private_labelled_and_reused(tmp_path: Path) -> None:
    net = make_devnet(tmp_path)
    for path in (net.root_dir / "dev_root.key", net.platform_dir / "platform.key"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    root = x509.load_pem_x509_certificate(net.root_pem)
    assert ROOT_COMMON_NAME in root.subject.rfc4514_string()
    assert root.not_valid_after_utc - root.not_valid_before_utc > dt.timedelta(days=9 * 365)
    chain = x509.load_pem_x509_certificates(net.chain_pem)
    assert [c.subject.rfc4514_string() for c in chain] == [
        "CN=HACA DEV PLATFORM,O=HACA devnet",
        root.subject.rfc4514_string(),
    ]
    # Idempotent: the same files, byte for byte.
    assert make_dev_root(net.root_dir) == net.root_pem
    before = net.key_pem, net.chain_pem
    issue_dev_platform(net.root_dir, net.platform_dir)
    assert (net.key_pem, net.chain_pem) == before
    # A platform of another root is refused, not replaced.
    make_dev_root(tmp_path / "other")
    with pytest.raises(ValueError, match="not issued by"):
        issue_dev_platform(tmp_path / "other", net.platform_dir)
    with pytest.raises(FileNotFoundError):
        issue_dev_platform(tmp_path / "nowhere", tmp_path / "p2")


def test_the_platform_reports_the_tcb_status_in_its_directory_and_a_policy_ranks_it(devnet: Devnet) -> None:
    """The DEV platform can fall behind a chain's minimum TCB and be patched again (the chaos
    campaign's `raise-min-tcb`, issue 23): the status is signed in the evidence, absent = UpToDate."""
    platform = DevPlatform(devnet.platform_dir, MEASUREMENT)
    status_file = devnet.platform_dir / TCB_STATUS_FILE
    try:
        status_file.write_text("SWHardeningNeeded\n")
        claims = verify_dev(platform.attest(REPORT_DATA, devnet.now).evidence, devnet.now, devnet.root_pem)
        assert claims.tcb_status == "SWHardeningNeeded"
        TeePolicy(formats=("dev",), min_tcb_status="SWHardeningNeeded").check_claims(claims, devnet.now)
        with pytest.raises(AttestationError, match="worse than the policy's 'UpToDate'") as refused:
            TeePolicy(formats=("dev",)).check_claims(claims, devnet.now)
        assert refused.value.step == "tcb_status"
        status_file.write_text("UpToDate")  # patched
        patched = verify_dev(platform.attest(REPORT_DATA, devnet.now).evidence, devnet.now, devnet.root_pem)
        assert patched.tcb_status == "UpToDate"
        status_file.write_text("Patched, honest")
        with pytest.raises(ValueError, match="a dev TCB status is one of"):
            platform.attest(REPORT_DATA, devnet.now)
    finally:
        status_file.unlink(missing_ok=True)
    # Signed but unknown: refused at the format step (a policy could not rank it).
    payload, _, _ = split(devnet.evidence())
    assert step_of(resign(devnet, {**payload, "tcb_status": "Fine"}), devnet) == "format"
    assert step_of(resign(devnet, {**payload, "tcb_status": 1}), devnet) == "format"


def test_evidence_verifies_with_the_facts_it_was_made_with(devnet: Devnet) -> None:
    claims = verify_dev(devnet.evidence(), devnet.now, devnet.root_pem)
    assert claims.format == "dev" and claims.dev is True
    assert claims.measurements == {"measurement": MEASUREMENT}
    assert claims.report_data == REPORT_DATA
    assert claims.debug is False and claims.tcb_status == "UpToDate" and claims.time == devnet.now
    assert claims.extra == {"label": DEV_LABEL}
    assert claims.signer_chain == (
        "CN=HACA DEV PLATFORM,O=HACA devnet",
        f"CN={ROOT_COMMON_NAME},O=HACA devnet",
    )
    AttestationPolicy().check(claims)
    # The same through the one entry point, and as base64 text.
    att = Attestation("dev", devnet.evidence())
    assert verify_attestation(att, devnet.now, {"dev": devnet.root_pem}) == claims
    assert verify_dev(base64.b64encode(devnet.evidence()).decode(), devnet.now, devnet.root_pem) == claims
    with pytest.raises(AttestationError) as e:
        verify_attestation(att, devnet.now)
    assert e.value.step == "chain"


def test_a_flipped_byte_in_the_payload_fails_the_signature(devnet: Devnet) -> None:
    _, payload_raw, signature = split(devnet.evidence())
    at = payload_raw.index(REPORT_DATA)
    assert step_of(cbor2.dumps([flip(payload_raw, at + 5), signature]), devnet) == "signature"


def test_a_flipped_byte_in_the_signature_fails_the_signature(devnet: Devnet) -> None:
    _, payload_raw, signature = split(devnet.evidence())
    assert step_of(cbor2.dumps([payload_raw, flip(signature, len(signature) - 3)]), devnet) == "signature"


def test_a_flipped_byte_in_the_leaf_certificate_fails_the_chain(devnet: Devnet) -> None:
    payload, _, _ = split(devnet.evidence())
    leaf = payload["certificate"]
    for offset in (len(leaf) // 2, len(leaf) - 5):  # inside the signed part, inside the issuer's signature
        assert step_of(resign(devnet, {**payload, "certificate": flip(leaf, offset)}), devnet) == "chain"


def test_a_leaf_whose_subject_does_not_parse_fails_the_chain(devnet: Devnet) -> None:
    """Found by fuzz/fuzz_dev.py: the leaf's subject CN typed as a BIT STRING. The certificate loads
    (cryptography parses names when first read) and reading its subject raised a bare TypeError out
    of verify_dev, in the refusal naming it."""
    payload, _, _ = split(devnet.evidence())
    cn = b"\x06\x03\x55\x04\x03\x0c\x11HACA DEV PLATFORM"  # CN, UTF8String of 17 characters
    assert cn in payload["certificate"]
    leaf = payload["certificate"].replace(cn, cn[:5] + b"\x03" + cn[6:])  # the same bytes as a BIT STRING
    with pytest.raises(AttestationError, match="leaf certificate does not parse") as refused:
        verify_dev(resign(devnet, {**payload, "certificate": leaf}), devnet.now, devnet.root_pem)
    assert refused.value.step == "chain"


def test_a_cabundle_certificate_with_a_key_of_unknown_type_fails_the_chain(devnet: Devnet) -> None:
    """Found by fuzz/fuzz_dev.py: a leaf the root did not sign, and a cabundle entry whose key type
    is unknown (id-ecPublicKey 1.2.840.10045.2.1 changed to 1.2.840.1853.2.1): checking the leaf
    against it raised UnsupportedAlgorithm (not a ValueError) out of verify_dev."""
    payload, _, _ = split(devnet.evidence())
    assert len(payload["cabundle"]) == 1
    ec_key = bytes.fromhex("06072a8648ce3d0201")
    assert ec_key in payload["cabundle"][0]
    unknown = payload["cabundle"][0].replace(ec_key, bytes.fromhex("06072a86488e3d0201"), 1)
    leaf = flip(payload["certificate"], len(payload["certificate"]) - 5)  # no longer signed by the root
    with pytest.raises(AttestationError, match="cabundle\\[0\\] did not issue") as refused:
        verify_dev(resign(devnet, {**payload, "certificate": leaf, "cabundle": [unknown]}), devnet.now, devnet.root_pem)
    assert refused.value.step == "chain"


def test_a_cabundle_certificate_with_a_duplicate_extension_fails_the_chain(devnet: Devnet) -> None:
    """Found by fuzz/fuzz_dev.py: one bit of a cabundle entry's KeyUsage OID (2.5.29.15) flipped
    makes it a second SubjectKeyIdentifier (2.5.29.14); reading its extensions (is it a CA?) raised
    x509.DuplicateExtension (not a ValueError) out of verify_dev."""
    payload, _, _ = split(devnet.evidence())
    key_usage = b"\x06\x03\x55\x1d\x0f"
    assert key_usage in payload["cabundle"][0]
    duplicate = payload["cabundle"][0].replace(key_usage, b"\x06\x03\x55\x1d\x0e", 1)
    leaf = flip(payload["certificate"], len(payload["certificate"]) - 5)  # no longer signed by the root
    document = resign(devnet, {**payload, "certificate": leaf, "cabundle": [duplicate]})
    with pytest.raises(AttestationError, match="cabundle\\[0\\] did not issue") as refused:
        verify_dev(document, devnet.now, devnet.root_pem)
    assert refused.value.step == "chain"


def test_another_root_fails_the_chain_even_with_its_copy_in_the_cabundle(devnet: Devnet, tmp_path: Path) -> None:
    other = make_devnet(tmp_path)
    document = other.evidence()
    assert step_of(document, devnet) == "chain"
    assert verify_dev(document, other.now, other.root_pem).report_data == REPORT_DATA
    # A root in the cabundle is no anchor, not even the right one: only the supplied root is.
    other_payload, _, _ = split(document)
    real_root_der = x509.load_pem_x509_certificate(devnet.root_pem).public_bytes(serialization.Encoding.DER)
    forged = resign(other, {**other_payload, "cabundle": [*other_payload["cabundle"], real_root_der]})
    assert step_of(forged, devnet) == "chain"
    payload, _, _ = split(devnet.evidence())
    assert step_of(resign(devnet, {**payload, "cabundle": []}), devnet, root_pem=other.root_pem) == "chain"
    # With the right root, the copy in the cabundle is not needed.
    assert verify_dev(resign(devnet, {**payload, "cabundle": []}), devnet.now, devnet.root_pem).dev


def test_a_time_outside_validity_is_expired(devnet: Devnet) -> None:
    root = x509.load_pem_x509_certificate(devnet.root_pem)
    document = devnet.evidence()
    assert step_of(document, devnet, now=int(root.not_valid_before_utc.timestamp()) - 1) == "expired"
    assert step_of(document, devnet, now=int(root.not_valid_after_utc.timestamp()) + 1) == "expired"


def test_a_wrong_label_or_shape_is_format(devnet: Devnet) -> None:
    payload, payload_raw, signature = split(devnet.evidence())
    assert step_of(resign(devnet, {**payload, "label": "PRODUCTION"}), devnet) == "format"
    assert step_of(resign(devnet, {**payload, "format": "haca-dev/2"}), devnet) == "format"
    assert step_of(resign(devnet, {**payload, "measurement": bytes(31)}), devnet) == "format"
    assert step_of(resign(devnet, {**payload, "report_data": bytes(32)}), devnet) == "format"
    assert step_of(resign(devnet, {**payload, "debug": 0}), devnet) == "format"
    assert step_of(resign(devnet, {**payload, "time": True}), devnet) == "format"
    assert step_of(resign(devnet, {**payload, "extra": 1}), devnet) == "format"
    assert step_of(resign(devnet, {k: v for k, v in payload.items() if k != "time"}), devnet) == "format"
    assert step_of(cbor2.dumps([payload_raw, signature]) + b"\x00", devnet) == "format"
    assert step_of(cbor2.dumps([payload_raw + b"\x00", signature]), devnet) == "format"
    assert step_of(cbor2.dumps({"payload": payload_raw}), devnet) == "format"
    assert step_of(b"\x82\x41", devnet) == "format"
    assert step_of(b"not base64 !", devnet) == "format"


def test_debug_evidence_is_claimed_and_refused_by_the_default_policy(devnet: Devnet) -> None:
    claims = verify_dev(devnet.evidence(debug=True), devnet.now, devnet.root_pem)
    assert claims.debug is True
    with pytest.raises(AttestationError) as e:
        AttestationPolicy().check(claims)
    assert e.value.step == "debug"
    AttestationPolicy(allow_debug=True).check(claims)


def test_measurement_id_is_stable_and_follows_the_code(devnet: Devnet) -> None:
    first = measurement_id(verify_dev(devnet.evidence(), devnet.now, devnet.root_pem))
    assert first == measurement_id(verify_dev(devnet.evidence(debug=True), devnet.now, devnet.root_pem))
    assert first.startswith("dev:") and len(first) == 4 + 64
    assert enclave_measurement() == enclave_measurement() and len(enclave_measurement()) == 32
    other = measurement_id(verify_dev(devnet.evidence(measurement=enclave_measurement()), devnet.now, devnet.root_pem))
    assert other != first
    sources = {"haca/enclave/runtime.py": b"code", "haca/proofs/tee/dev.py": b"more"}
    assert measure_sources(sources) == measure_sources(dict(reversed(sources.items())))
    assert measure_sources(sources) != measure_sources({**sources, "haca/proofs/tee/dev.py": b"more "})
    # Length framing: moving bytes from one file to the next is a different measurement.
    assert measure_sources(sources) != measure_sources(
        {"haca/enclave/runtime.py": b"codem", "haca/proofs/tee/dev.py": b"ore"}
    )


def test_evidence_inputs_are_checked(devnet: Devnet) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        make_dev_evidence(devnet.key_pem, devnet.chain_pem, bytes(31), REPORT_DATA, devnet.now)
    with pytest.raises(ValueError, match="64 bytes"):
        make_dev_evidence(devnet.key_pem, devnet.chain_pem, MEASUREMENT, bytes(63), devnet.now)
