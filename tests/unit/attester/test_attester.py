"""The dev attester over its Unix socket: key, attest and sign_receipt round trips with both clients;
its evidence verifies and binds its key; receipts it signs recover to that key; what it must not sign
is refused with a reason; a bad frame is answered and the connection lives on; concurrency works."""

from __future__ import annotations

import asyncio
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from haca.attester.client import AsyncAttesterClient, AttesterClient, AttesterRefused, AttesterUnavailable
from haca.attester.enclave import DevEnclave
from haca.attester.server import MAX_FRAME, AttesterServer, encode_frame
from haca.crypto.keys import PrivateKey
from haca.proofs.tee.attestation import Attestation, verify_attestation
from haca.proofs.tee.binding import key_binding
from haca.proofs.tee.claims import AttestationError, AttestationPolicy
from haca.proofs.tee.dev import DEV_LABEL, dev_measurement, issue_dev_platform, make_dev_root
from haca.types.receipt import Receipt

CHAIN_ID = "haca-devnet"
NONCE = bytes.fromhex("ab" * 32)
NODE_ADDRESS = "0x" + "5e" * 20  # the node the enclave registers its key for
CLIENT = PrivateKey.from_seed("client")


@dataclass
class Running:
    enclave: DevEnclave
    socket_path: Path
    root_pem: bytes
    platform_dir: Path


def receipt(n: int, mode: str = "tee", chain_id: str = CHAIN_ID) -> Receipt:
    return Receipt(
        chain_id,
        PrivateKey.from_seed("node").address,
        CLIENT.address,
        "0x" + f"{n:064x}",
        "sha256:" + "ab" * 32,
        mode,
        "0x" + "00" * 32,
        "0x" + "11" * 32,
        10 + n,
        100,
        1_700_000_000,
    )


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    base = tmp_path_factory.mktemp("att")  # short: a Unix socket path is at most 107 bytes
    root_pem = make_dev_root(base / "root")
    issue_dev_platform(base / "root", base / "platform")
    enclave = DevEnclave(base / "platform")
    server = AttesterServer(enclave, base / "a.sock")
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(server.close())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(5)
    yield Running(enclave, base / "a.sock", root_pem, base / "platform")
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.fixture(scope="module")
def attested(running: Running) -> Running:
    with AttesterClient(running.socket_path) as client:
        client.attest(CHAIN_ID, NODE_ADDRESS, NONCE)
    return running


def raw_exchange(sock: socket.socket, frame: bytes) -> dict:
    sock.sendall(frame)
    header = sock.recv(4, socket.MSG_WAITALL)
    return orjson.loads(sock.recv(int.from_bytes(header, "big"), socket.MSG_WAITALL))


def test_the_socket_is_private(running: Running) -> None:
    assert stat.S_ISSOCK(running.socket_path.stat().st_mode)
    assert stat.S_IMODE(running.socket_path.stat().st_mode) == 0o600


def test_key_with_both_clients(running: Running) -> None:
    expected = {
        "address": running.enclave.address,
        "format": "dev",
        "measurement": dev_measurement().hex(),
        "dev": True,
        "label": DEV_LABEL,
    }
    with AttesterClient(running.socket_path) as client:
        assert client.key() == expected

    async def main() -> dict:
        async with AsyncAttesterClient(running.socket_path) as client:
            return await client.key()

    assert asyncio.run(main()) == expected


def test_attested_evidence_verifies_and_binds_the_enclave_key(running: Running) -> None:
    now = int(time.time())
    with AttesterClient(running.socket_path) as client:
        att = client.attest(CHAIN_ID, NODE_ADDRESS, NONCE)

    async def main() -> Attestation:
        async with AsyncAttesterClient(running.socket_path) as client:
            return await client.attest("other-chain", NODE_ADDRESS, NONCE)

    async_att = asyncio.run(main())
    for chain_id, a in ((CHAIN_ID, att), ("other-chain", async_att)):
        claims = verify_attestation(a, now, {"dev": running.root_pem})
        assert claims.dev and claims.format == "dev" and claims.debug is False
        assert claims.report_data == key_binding(chain_id, NODE_ADDRESS, running.enclave.address, NONCE)
        assert claims.measurements == {"measurement": dev_measurement()}
        assert abs(claims.time - now) <= 5
        AttestationPolicy().check(claims)
    assert {CHAIN_ID, "other-chain"} <= running.enclave.attested_chains


def test_sign_receipt_recovers_to_the_enclave_with_both_clients(attested: Running) -> None:
    r = receipt(1)
    with AttesterClient(attested.socket_path) as client:
        signature = client.sign_receipt(r)
    assert r.signer(signature) == attested.enclave.address
    assert signature == r.sign(attested.enclave._key)  # the same bytes as Receipt.sign

    async def main() -> bytes:
        async with AsyncAttesterClient(attested.socket_path) as client:
            return await client.sign_receipt(receipt(2))

    assert receipt(2).signer(asyncio.run(main())) == attested.enclave.address


def test_what_the_enclave_must_not_sign_is_refused_with_a_reason(attested: Running) -> None:
    with AttesterClient(attested.socket_path) as client:
        with pytest.raises(AttesterRefused, match="only tee receipts") as e:
            client.sign_receipt(receipt(3, mode="vanilla"))
        assert "vanilla" in e.value.reason
        with pytest.raises(AttesterRefused, match="has not attested for chain 'elsewhere'"):
            client.sign_receipt(receipt(3, chain_id="elsewhere"))
        # The connection is still good after a refusal.
        assert receipt(3).signer(client.sign_receipt(receipt(3))) == attested.enclave.address

    async def main() -> None:
        async with AsyncAttesterClient(attested.socket_path) as client:
            with pytest.raises(AttesterRefused, match="only tee receipts"):
                await client.sign_receipt(receipt(4, mode="zkml"))

    asyncio.run(main())


def test_a_malformed_frame_is_answered_and_the_connection_still_works(attested: Running) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(attested.socket_path))
        for body in (b"not json", b"[1, 2]", b"", b'{"op": "launch"}', b'{"op": "attest", "chain_id": 5}'):
            answer = raw_exchange(sock, len(body).to_bytes(4, "big") + body)
            assert set(answer) == {"error"} and answer["error"]
        bad_receipt = {"op": "sign_receipt", "receipt": {**receipt(5).to_json(), "fee": "lots"}}
        assert "error" in raw_exchange(sock, encode_frame(bad_receipt))
        assert raw_exchange(sock, encode_frame({"op": "key"}))["address"] == attested.enclave.address
        # Two requests in one write are answered in order.
        sock.sendall(encode_frame({"op": "key"}) + encode_frame({"op": "nope"}))
        first = orjson.loads(sock.recv(int.from_bytes(sock.recv(4, socket.MSG_WAITALL), "big"), socket.MSG_WAITALL))
        second = orjson.loads(sock.recv(int.from_bytes(sock.recv(4, socket.MSG_WAITALL), "big"), socket.MSG_WAITALL))
        assert "address" in first and "error" in second


def test_a_frame_over_1_mib_is_refused_and_the_connection_closed(running: Running) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(running.socket_path))
        answer = raw_exchange(sock, (MAX_FRAME + 1).to_bytes(4, "big") + b"{")
        assert "refused" in answer["error"]
        assert sock.recv(1) == b""


def test_32_concurrent_async_sign_receipts_all_succeed(attested: Running) -> None:
    receipts = [receipt(100 + i) for i in range(32)]

    async def main() -> list[bytes]:
        async with AsyncAttesterClient(attested.socket_path, pool_size=8) as client:
            signatures = await asyncio.gather(*(client.sign_receipt(r) for r in receipts))
            assert len(client._idle) <= 8
            return signatures

    for r, signature in zip(receipts, asyncio.run(main()), strict=True):
        assert r.signer(signature) == attested.enclave.address


def test_the_sync_client_reconnects_once_and_reports_an_absent_attester(attested: Running, tmp_path: Path) -> None:
    with AttesterClient(attested.socket_path) as client:
        assert client.key()["dev"] is True
        assert client._sock is not None
        client._sock.shutdown(socket.SHUT_RDWR)  # the connection breaks under the client
        assert client.key()["dev"] is True
    with pytest.raises(AttesterUnavailable, match="cannot connect"):
        AttesterClient(tmp_path / "none.sock").key()

    async def main() -> None:
        async with AsyncAttesterClient(tmp_path / "none.sock") as client:
            await client.key()

    with pytest.raises(AttesterUnavailable, match="cannot connect"):
        asyncio.run(main())


def test_the_async_client_replaces_a_broken_pooled_connection(attested: Running) -> None:
    async def main() -> None:
        async with AsyncAttesterClient(attested.socket_path, pool_size=2) as client:
            await client.key()
            client._idle[0].writer.transport.abort()  # broken while idle
            assert (await client.key())["address"] == attested.enclave.address

    asyncio.run(main())


def test_each_enclave_start_is_a_new_key_and_debug_is_claimed(running: Running) -> None:
    a, b = DevEnclave(running.platform_dir), DevEnclave(running.platform_dir, debug=True)
    assert a.address != b.address and a.measurement == b.measurement == dev_measurement()
    assert a.attested_chains == frozenset()
    claims = verify_attestation(
        b.attest(CHAIN_ID, NODE_ADDRESS, NONCE, now=1_800_000_000), 1_800_000_000, {"dev": running.root_pem}
    )
    assert claims.debug is True and claims.time == 1_800_000_000
    with pytest.raises(AttestationError) as e:
        AttestationPolicy().check(claims)
    assert e.value.step == "debug"
    with pytest.raises(ValueError, match="has not attested"):
        a.sign_receipt(receipt(1))
