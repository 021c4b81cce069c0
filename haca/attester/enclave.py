"""The dev enclave: the code whose bytes are the dev measurement (see `haca.proofs.tee.dev`).

DEV-MODE, NOT FOR PRODUCTION. It plays the part of a real enclave's signing service: the receipt
key is generated in memory when the enclave starts and never leaves it (there is no export and no
file), so a restart is a new key that must be registered again with fresh evidence. The platform
key it attests with is a file issued by the devnet's DEV root: anyone who can read it can forge dev
evidence, which is why the format is refused outside dev networks.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import coincurve

from haca.crypto.keys import PrivateKey
from haca.proofs.tee.attestation import Attestation
from haca.proofs.tee.binding import key_binding
from haca.proofs.tee.dev import PLATFORM_CERT_FILE, PLATFORM_KEY_FILE, dev_measurement, make_dev_evidence
from haca.types.batch import MsgSettleBatch
from haca.types.modes import Mode
from haca.types.receipt import Receipt


class DevEnclave:
    """A software enclave holding one secp256k1 receipt key, attested with the dev platform key in
    `platform_dir` (``platform.key``, ``platform.pem``). `debug` marks its evidence as from a debug
    enclave, which the default attestation policy refuses."""

    def __init__(self, platform_dir: Path, debug: bool = False) -> None:
        self._platform_key_pem = (platform_dir / PLATFORM_KEY_FILE).read_bytes()
        self._platform_chain_pem = (platform_dir / PLATFORM_CERT_FILE).read_bytes()
        self.debug = debug
        self.measurement = dev_measurement()
        self._key = PrivateKey.generate()
        # Built once: making the libsecp256k1 key object costs more than a signature with it.
        self._signer = coincurve.PrivateKey(self._key.secret)
        self.address = self._key.address
        self._attested_chains: set[str] = set()
        self._lock = threading.Lock()
        # Fail at start, not at the first attest, when the platform files are not a usable pair.
        make_dev_evidence(self._platform_key_pem, self._platform_chain_pem, self.measurement, bytes(64), 0, self.debug)

    @property
    def attested_chains(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._attested_chains)

    def attest(self, chain_id: str, node: str, nonce: bytes, now: int | None = None) -> Attestation:
        """Dev evidence binding this enclave's key to `node` on `chain_id` after `nonce` (a block hash)."""
        if not isinstance(chain_id, str) or not chain_id:
            raise ValueError("chain_id must be a non-empty string")
        report_data = key_binding(chain_id, node, self.address, bytes(nonce))
        evidence = make_dev_evidence(
            self._platform_key_pem,
            self._platform_chain_pem,
            self.measurement,
            report_data,
            int(time.time()) if now is None else now,
            self.debug,
        )
        with self._lock:
            self._attested_chains.add(chain_id)
        return Attestation(format="dev", evidence=evidence, endorsements=b"")

    def sign_receipt(self, receipt: Receipt) -> bytes:
        """`receipt.sign(key)` with the enclave key: 65 bytes r‖s‖v. Only `tee` receipts, and only for
        a chain this enclave made evidence for, so the key signs nothing its registration does not cover."""
        if receipt.mode != Mode.TEE:
            raise ValueError(f"the enclave signs only tee receipts, not {receipt.mode!r} ones")
        if receipt.chain_id not in self._attested_chains:
            raise ValueError(f"the enclave has not attested for chain {receipt.chain_id!r}; call attest first")
        # The same bytes as receipt.sign(self._key) (RFC 6979 nonces), without rebuilding the key object.
        signature = self._signer.sign_recoverable(receipt.digest, hasher=None)
        return signature[:64] + bytes([signature[64] + 27])

    def sign_batch(self, chain_id: str, node: str, batch: MsgSettleBatch) -> bytes:
        """Sign the root of a batch of tee receipts (ReceiptBatch): the enclave hashes every receipt
        itself, so its one signature covers exactly the receipts listed. The same rule as for one
        receipt: tee only, and only for a chain this enclave made evidence for."""
        if batch.mode != Mode.TEE:
            raise ValueError(f"the enclave signs only tee batches, not {batch.mode!r} ones")
        if chain_id not in self.attested_chains:
            raise ValueError(f"the enclave has not attested for chain {chain_id!r}; call attest first")
        header = batch.header(chain_id, node)
        signature = self._signer.sign_recoverable(header.digest, hasher=None)
        return signature[:64] + bytes([signature[64] + 27])
