"""AWS Nitro Enclaves: the real fixture reports exactly the facts in the fixtures README at its pinned time,
whatever form it is given in; a flipped byte in the payload, the signature or a certificate, a time outside
the leaf's validity, another root or garbage fails at the named step. A document built here under a
generated root (debug PCRs, public_key and nonce present) verifies the same way."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from haca.proofs.receipt import EvidenceError
from haca.proofs.tee.claims import AttestationError, AttestationPolicy, Claims
from haca.proofs.tee.nitro import pinned_root, verify_nitro

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "tee" / "nitro"
FRAMED = (FIX / "nitro_attestation.bin").read_bytes()
FIXTURE_ROOT_PEM = (FIX / "AWS_NitroEnclaves_Root-G1.pem").read_bytes()
COSE = FRAMED[4:4531]  # the untagged COSE_Sign1, bytes 4..4530 of the framed file
NOW = 1766668537  # the document's own timestamp, 1766668537578 ms
LEAF_NOT_BEFORE = 1766668534  # 2025-12-25T13:15:34Z
LEAF_NOT_AFTER = 1766679337  # 2025-12-25T16:15:37Z
ROOT_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"

MODULE_ID = "i-0827e799ec9232d44-enc019b55a68bd2ed4b"
PCR0 = "5cb702954321826d7939d6da829a940d787fcf32357beb8eae1ddf33c28c17d36f3ac3ba6828fdf7edeed02889702da6"
PCR1 = "0343b056cd8485ca7890ddd833476d78460aed2aa161548e4e26bedf321726696257d623e8805f3f605946b3d8b0c6aa"
PCR2 = "743ea12db9aba9440a8197f7ac9aeda43cfbb1587473ff7577415ac5be116bc026dfa836db6713930474d1aa0d06b049"
PCR4 = "7b3574ad9b7e88ec8335e8ce967315fac77218441e97eea9795de704d7f2678d0b298ecda39b544c1689669f48cba5e8"
SIGNER_CHAIN = (
    "CN=i-0827e799ec9232d44-enc019b55a68bd2ed4b.us-east-1.aws,OU=AWS,O=Amazon,L=Seattle,ST=Washington,C=US",
    "CN=i-0827e799ec9232d44.us-east-1.aws.nitro-enclaves,OU=AWS,O=Amazon,L=Seattle,ST=Washington,C=US",
    "L=Seattle,ST=WA,C=US,O=Amazon,OU=AWS,CN=db5d852a812a3d1e.zonal.us-east-1.aws.nitro-enclaves",
    "CN=d3c9df74fdeb2ba5.us-east-1.aws.nitro-enclaves,OU=AWS,O=Amazon,C=US",
    "CN=aws.nitro-enclaves,OU=AWS,O=Amazon,C=US",
)


def _payload() -> dict[str, Any]:
    payload: dict[str, Any] = cbor2.loads(cbor2.loads(COSE)[2])
    return payload


def _flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


def _fails(document: bytes | str, step: str, part: str, now: int = NOW, root_pem: bytes | None = None) -> None:
    with pytest.raises(AttestationError) as info:
        verify_nitro(document, now, root_pem)
    assert info.value.step == step, str(info.value)
    assert part in str(info.value), str(info.value)
    assert str(info.value).startswith(f"{step}: ")


# -- the real fixture --------------------------------------------------------------------------------------


def test_fixture_layout_is_the_readme_one() -> None:
    assert len(FRAMED) == 4682 and FRAMED[:4] == bytes.fromhex("0002bd46")
    assert COSE[:2] == b"\x84\x44" and len(COSE) == 4527
    protected, unprotected, payload, signature = cbor2.loads(COSE)
    assert protected == bytes.fromhex("a1013822") and unprotected == {}
    assert len(payload) == 4419 and len(signature) == 96
    assert FRAMED[4531:4596] == bytes(65) and b'"os_image_hash"' in FRAMED[4596:]


def test_pinned_root_is_aws_published_one() -> None:
    (root,) = pinned_root()
    assert hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest() == ROOT_SHA256
    assert root.subject.rfc4514_string() == "CN=aws.nitro-enclaves,OU=AWS,O=Amazon,C=US"
    assert x509.load_pem_x509_certificate(FIXTURE_ROOT_PEM) == root


def test_fixture_reports_the_readme_facts_at_its_pinned_time() -> None:
    claims = verify_nitro(FRAMED, NOW)
    assert isinstance(claims, Claims)
    assert claims.format == "nitro"
    assert sorted(claims.measurements) == sorted(f"pcr{i}" for i in range(16))
    assert all(len(v) == 48 for v in claims.measurements.values())
    assert claims.measurements["pcr0"].hex() == PCR0
    assert claims.measurements["pcr1"].hex() == PCR1
    assert claims.measurements["pcr2"].hex() == PCR2
    assert claims.measurements["pcr4"].hex() == PCR4
    assert claims.measurements["pcr8"] == bytes(48)  # unsigned enclave image
    assert {k for k, v in claims.measurements.items() if any(v)} == {"pcr0", "pcr1", "pcr2", "pcr4"}
    assert claims.report_data == bytes(64)  # user_data: 64 zero bytes
    assert claims.public_key == b""  # absent
    assert claims.extra["nonce"] is None  # absent
    assert claims.extra["module_id"] == MODULE_ID
    assert claims.extra["digest"] == "SHA384"
    assert claims.extra["timestamp_ms"] == 1766668537578
    assert claims.extra["user_data_present"] is True and claims.extra["public_key_present"] is False
    assert claims.time == 1766668537  # 2025-12-25T13:15:37Z
    assert claims.debug is False
    assert claims.tcb_status == "UpToDate" and claims.advisory_ids == ()
    assert claims.signer_chain == SIGNER_CHAIN
    assert claims.dev is False
    AttestationPolicy().check(claims)  # not debug, up to date: the default policy holds
    as_json = claims.to_json()
    assert as_json["measurements"]["pcr0"] == PCR0 and as_json["extra"]["nonce"] is None


def test_same_root_supplied_explicitly_verifies_the_same() -> None:
    assert verify_nitro(FRAMED, NOW, FIXTURE_ROOT_PEM) == verify_nitro(FRAMED, NOW)


@pytest.mark.parametrize(
    "form",
    [
        "framed",
        "untagged",
        "tagged",
        "bytearray",
        "base64-text",
        "base64-bytes",
        "base64-wrapped",
        "base64url-unpadded",
        "base64-framed",
        "trailing-bytes-altered",
    ],
)
def test_the_same_document_in_every_accepted_form_verifies_the_same(form: str) -> None:
    tagged = b"\xd2" + COSE  # CBOR tag 18 (COSE_Sign1)
    b64 = base64.b64encode(COSE).decode()
    forms: dict[str, bytes | bytearray | str] = {
        "framed": FRAMED,
        "untagged": COSE,
        "tagged": tagged,
        "bytearray": bytearray(COSE),
        "base64-text": b64,
        "base64-bytes": b64.encode(),
        "base64-wrapped": "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76)) + "\n",
        "base64url-unpadded": base64.urlsafe_b64encode(tagged).decode().rstrip("="),
        "base64-framed": base64.b64encode(FRAMED).decode(),
        # The bytes after the COSE_Sign1 are not signed and never read: changing them changes nothing.
        "trailing-bytes-altered": FRAMED[:4531] + b"\xff" * 151,
    }
    document = forms[form]
    assert verify_nitro(document, NOW) == verify_nitro(FRAMED, NOW)  # type: ignore[arg-type]


def test_the_trailing_os_image_hash_is_not_reported() -> None:
    claims = verify_nitro(FRAMED, NOW)
    assert "e0e742bd6228" not in repr(claims.to_json())


# -- flipped bytes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 17, 47])
def test_a_flipped_byte_in_pcr0_fails_the_signature(index: int) -> None:
    at = FRAMED.index(bytes.fromhex(PCR0)) + index
    tampered = _flip(FRAMED, at)
    assert cbor2.loads(cbor2.loads(tampered[4:])[2])["pcrs"][0] != bytes.fromhex(PCR0)  # still parses
    _fails(tampered, "signature", "ES384 signature does not verify with the leaf key")


@pytest.mark.parametrize("index", [0, 47, 48, 95])
def test_a_flipped_byte_in_the_signature_fails(index: int) -> None:
    signature = cbor2.loads(COSE)[3]
    at = COSE.rindex(signature) + index
    _fails(_flip(COSE, at), "signature", "ES384 signature does not verify with the leaf key")


def test_a_flipped_byte_in_user_data_fails_the_signature() -> None:
    at = FRAMED.index(b"\x69user_data") + len(b"\x69user_data") + 2 + 10  # bstr header 58 40, then data
    _fails(_flip(FRAMED, at), "signature", "ES384 signature does not verify")


@pytest.mark.parametrize("which", [1, 2, 3])
def test_a_flipped_byte_in_a_cabundle_certificate_fails_the_chain(which: int) -> None:
    der = _payload()["cabundle"][which]
    at = FRAMED.index(der) + len(der) - 1  # the last byte of the issuer's signature
    _fails(_flip(FRAMED, at), "chain", "does not verify to the trusted root: validation failed")


@pytest.mark.parametrize("which", [1, 3])
def test_a_flipped_byte_in_a_cabundle_public_key_fails_the_chain(which: int) -> None:
    der = _payload()["cabundle"][which]
    at = FRAMED.index(der) + len(der) // 2
    _fails(_flip(FRAMED, at), "chain", "does not verify to the trusted root")


def test_a_cabundle_certificate_that_no_longer_parses_fails_the_chain() -> None:
    der = _payload()["cabundle"][2]
    _fails(_flip(FRAMED, FRAMED.index(der)), "chain", "the cabundle[2] certificate does not parse")


def test_a_flipped_byte_in_the_leaf_certificate_fails() -> None:
    der = _payload()["certificate"]
    _fails(_flip(FRAMED, FRAMED.index(der) + len(der) - 1), "chain", "does not verify to the trusted root")


def test_the_root_copy_in_the_cabundle_is_never_trusted() -> None:
    # cabundle[0] is dropped from the chain; altering it still breaks the COSE signature over the payload.
    der = _payload()["cabundle"][0]
    _fails(_flip(FRAMED, FRAMED.index(der) + len(der) - 1), "signature", "ES384 signature does not verify")


# -- time --------------------------------------------------------------------------------------------------


def test_the_chain_holds_exactly_over_the_leaf_validity() -> None:
    assert verify_nitro(FRAMED, LEAF_NOT_BEFORE).time == NOW
    assert verify_nitro(FRAMED, LEAF_NOT_AFTER).time == NOW


@pytest.mark.parametrize(
    ("now", "part"),
    [
        (LEAF_NOT_BEFORE - 1, "the leaf certificate is not valid before 1766668534"),
        (0, "the leaf certificate is not valid before 1766668534 (now 0)"),
        (LEAF_NOT_AFTER + 1, "the leaf certificate expired at 1766679337"),
        (1780272000, "the leaf certificate expired at 1766679337 (now 1780272000)"),  # 2026-06-01
    ],
)
def test_a_time_outside_the_leaf_validity_fails_expired(now: int, part: str) -> None:
    _fails(FRAMED, "expired", part, now=now)


def test_now_must_be_unix_seconds() -> None:
    with pytest.raises(TypeError, match="unix seconds"):
        verify_nitro(FRAMED, dt.datetime(2025, 12, 25, 14, tzinfo=dt.UTC))  # type: ignore[arg-type]


# -- roots -------------------------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    ca: bool,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.Certificate:
    issuer_name, issuer_key = (subject, key) if issuer is None else issuer
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if ca:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if ca and issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA384())


def _self_signed_root(cn: str = "aws.nitro-enclaves") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    root = _cert(
        cn, key, None, True, dt.datetime(2019, 10, 28, tzinfo=dt.UTC), dt.datetime(2049, 10, 28, tzinfo=dt.UTC)
    )
    return root, key


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def test_another_root_fails_the_chain() -> None:
    root, _ = _self_signed_root()  # same subject as AWS's root, another key
    _fails(FRAMED, "chain", "does not verify to the trusted root", root_pem=_pem(root))


def test_the_cabundle_root_copy_as_the_supplied_root_still_verifies() -> None:
    root_copy = x509.load_der_x509_certificate(_payload()["cabundle"][0])
    assert verify_nitro(FRAMED, NOW, _pem(root_copy)).signer_chain == SIGNER_CHAIN


def test_a_root_that_does_not_parse_fails_the_chain() -> None:
    _fails(
        FRAMED, "chain", "the supplied root", root_pem=b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    _fails(FRAMED, "chain", "the supplied root", root_pem=b"no certificate here")


# -- format and payload ------------------------------------------------------------------------------------


def _cose(protected: dict[int, Any], payload: bytes, signature: bytes = bytes(96), tag: bool = False) -> bytes:
    item: Any = [cbor2.dumps(protected), {}, payload, signature]
    return cbor2.dumps(cbor2.CBORTag(18, item) if tag else item)


@pytest.mark.parametrize(
    "document",
    [
        b"",
        "",
        b"garbage",
        "not base64 at all!",
        bytes(range(256)),
        b"\x84\x44\x01",  # the array start, then nothing
        cbor2.dumps({"not": "a COSE_Sign1"}),
        cbor2.dumps([b"\xa1\x01\x38\x22", {}, b"payload"]),  # three items
        cbor2.dumps(cbor2.CBORTag(18, [b"\xa1\x01\x38\x22", {}, None, bytes(96)])),  # detached payload
        cbor2.dumps(cbor2.CBORTag(98, [b"\xa0", {}, b"payload", [[b"", {}, b""]]])),  # COSE_Sign, not COSE_Sign1
        COSE[: len(COSE) // 2],  # truncated
        base64.b64encode(b"garbage").decode(),
    ],
)
def test_garbage_fails_format(document: bytes | str) -> None:
    _fails(document, "format", "not a COSE_Sign1")


def test_a_document_of_another_type_fails_format() -> None:
    _fails(12345, "format", "not int")  # type: ignore[arg-type]


@pytest.mark.parametrize("alg", [-7, -36, -37, None])
def test_another_alg_fails_format(alg: int | None) -> None:
    protected = {} if alg is None else {1: alg}
    _fails(_cose(protected, cbor2.loads(COSE)[2]), "format", f"alg is {alg!r}, not ES384 (-35)")


def test_the_failure_is_evidence_error() -> None:
    with pytest.raises(EvidenceError, match=r"^format: "):
        verify_nitro(b"garbage", NOW)


@pytest.mark.parametrize(
    ("change", "part"),
    [
        (lambda p: p.update(digest="SHA256"), "digest is 'SHA256', not 'SHA384'"),
        (lambda p: p.pop("module_id"), "module_id is missing"),
        (lambda p: p.update(timestamp=-1), "timestamp -1 is not a positive integer"),
        (lambda p: p.update(pcrs={}), "pcrs is missing or not a map of 1..32 entries"),
        (lambda p: p["pcrs"].update({0: b"short"}), "PCR0 is not a byte string of 32/48/64"),
        (lambda p: p["pcrs"].update({40: bytes(48)}), "PCR index 40 is not an integer in 0..31"),
        (lambda p: p.pop("certificate"), "certificate is missing"),
        (lambda p: p.update(cabundle=[]), "cabundle is missing or not a non-empty array"),
        (lambda p: p.update(user_data="text"), "user_data is str, not bytes or null"),
        (lambda p: p.update(nonce=bytes(513)), "nonce is 513 bytes (allowed 0..512)"),
        (lambda p: p.update(public_key=b""), "public_key is 0 bytes (allowed 1..1024)"),
    ],
)
def test_a_malformed_payload_fails_payload(change: Any, part: str) -> None:
    payload = _payload()
    change(payload)
    _fails(_cose({1: -35}, cbor2.dumps(payload)), "payload", part)


def test_a_payload_that_is_not_one_cbor_map_fails_payload() -> None:
    _fails(_cose({1: -35}, cbor2.dumps([1, 2])), "payload", "not a map")
    _fails(_cose({1: -35}, cbor2.loads(COSE)[2] + b"\x00"), "payload", "1 bytes after its CBOR map")
    _fails(_cose({1: -35}, b"\xa1"), "payload", "the payload is not valid CBOR")


# -- a document built here, under a generated root ---------------------------------------------------------


def _build_document(pcrs: dict[int, bytes], **fields: Any) -> tuple[bytes, bytes]:
    """A Nitro-shaped document signed by a generated leaf <- intermediate <- root; returns (COSE, root PEM)."""
    t0 = dt.datetime.fromtimestamp(NOW - 3600, tz=dt.UTC)
    t1 = dt.datetime.fromtimestamp(NOW + 3600, tz=dt.UTC)
    root, root_key = _self_signed_root("test root")
    inter_key, leaf_key = _key(), _key()
    inter = _cert("test intermediate", inter_key, ("test root", root_key), True, t0, t1)
    leaf = _cert("test enclave", leaf_key, ("test intermediate", inter_key), False, t0, t1)
    der = serialization.Encoding.DER
    payload = {
        "module_id": "i-test-enc0",
        "digest": "SHA384",
        "timestamp": NOW * 1000 + 5,
        "pcrs": pcrs,
        "certificate": leaf.public_bytes(der),
        "cabundle": [root.public_bytes(der), inter.public_bytes(der)],
        "public_key": None,
        "user_data": None,
        "nonce": None,
        **fields,
    }
    protected = cbor2.dumps({1: -35})
    payload_bytes = cbor2.dumps(payload)
    der_sig = leaf_key.sign(cbor2.dumps(["Signature1", protected, b"", payload_bytes]), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der_sig)
    signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload_bytes, signature])), _pem(root)


def test_a_debug_enclave_document_verifies_and_is_refused_by_the_default_policy() -> None:
    document, root_pem = _build_document({i: bytes(48) for i in range(16)}, public_key=b"\x04" + bytes(96))
    claims = verify_nitro(document, NOW, root_pem)
    assert claims.debug is True
    assert claims.signer_chain == ("CN=test enclave", "CN=test intermediate", "CN=test root")
    assert claims.report_data == b"" and claims.extra["user_data_present"] is False
    assert claims.public_key == b"\x04" + bytes(96) and claims.extra["public_key_present"] is True
    assert claims.time == NOW and claims.extra["module_id"] == "i-test-enc0"
    with pytest.raises(AttestationError) as info:
        AttestationPolicy().check(claims)
    assert info.value.step == "debug" and "debug enclave" in str(info.value)
    AttestationPolicy(allow_debug=True).check(claims)
    _fails(document, "chain", "does not verify to the trusted root")  # not under the pinned AWS root


def test_a_document_with_nonce_and_user_data_reports_them() -> None:
    pcrs = {0: b"\x01" * 48, 1: bytes(48), 2: bytes(48)}
    document, root_pem = _build_document(pcrs, user_data=b"bound key hash", nonce=b"n" * 32)
    claims = verify_nitro(base64.b64encode(document).decode(), NOW, root_pem)
    assert claims.debug is False
    assert claims.measurements == {"pcr0": b"\x01" * 48, "pcr1": bytes(48), "pcr2": bytes(48)}
    assert claims.report_data == b"bound key hash"
    assert claims.extra["nonce"] == b"n" * 32
    assert claims.to_json()["extra"]["nonce"] == (b"n" * 32).hex()
    _fails(document, "expired", "the leaf certificate expired", now=NOW + 3601, root_pem=root_pem)
