"""Issue 8 on a live 4-validator devnet with the DEV attester: a tee inference turns `verified`
(fee paid, settlement fee burned, supply intact), and each way to cheat the tee path is refused
with its code and a readable reason, changing nothing.

node0 runs with its DEV attester (the devnet's). The refusals are performed by dev2 acting as a
second tee node whose "enclave" key is held by the test, with evidence made from the devnet's
DEV platform key: exactly what a dishonest node could send.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from haca.client.errors import TxRejected
from haca.client.sdk import AsyncClient, Client
from haca.crypto.hashing import sha256
from haca.crypto.keys import PrivateKey
from haca.devnet.layout import example_models_dir
from haca.enclave.measure import enclave_measurement
from haca.node.service import ensure_stake
from haca.proofs.tee.binding import key_binding, measurement_id
from haca.proofs.tee.claims import Claims
from haca.proofs.tee.dev import PLATFORM_CERT_FILE, PLATFORM_KEY_FILE, make_dev_evidence
from haca.types import codes
from haca.types.inference import MsgDeposit, MsgSettle, SettlementItem
from haca.types.payment import PaymentAuthorization, SignedPayment
from haca.types.receipt import Receipt, SignedReceipt
from haca.types.registry import MsgRegisterNode
from haca.types.tee import MsgApproveMeasurement, MsgAttestEnclave, MsgRevokeMeasurement, MsgSetTeePolicy
from tests.integration.helpers import assert_devnet_supply_holds, settlement_fee, wait_height

pytestmark = pytest.mark.devnet
MODELS = {m["name"]: m for m in json.loads((example_models_dir() / "manifest.json").read_text())["models"]}
IRIS_INPUT = MODELS["iris"]["example_input"]
HEARTBEAT, NONCE_WINDOW = 16, 10
DEV_MID = measurement_id(Claims("dev", {"measurement": enclave_measurement()}, b"", False, "UpToDate"))


class Net:
    def __init__(self, handle: Any) -> None:
        self.handle, self.home = handle, handle.home
        self.chain = handle.client
        self.chain_id = handle.config.chain_id
        platform = Path(self.home) / "devnet" / "enclave0"
        self.platform_key = (platform / PLATFORM_KEY_FILE).read_bytes()
        self.platform_chain = (platform / PLATFORM_CERT_FILE).read_bytes()

    def key(self, name: str) -> PrivateKey:
        return self.handle.keys.get(name).key

    @property
    def node0(self) -> str:
        return str(self.handle.config.extra["nodes"][0]["address"])

    def height(self) -> int:
        return self.chain.rpc.height()

    def send(self, signer: str, *msgs: Any) -> Any:
        return self.chain.send_msgs(self.key(signer), tuple(msgs))

    def refused(self, signer: str, msg: Any, code: int, log_part: str) -> None:
        """CheckTx refuses `msg` with `code`, naming `log_part`; the signer pays nothing."""
        before = self.chain.balance(self.key(signer).address)
        with pytest.raises(TxRejected) as info:
            self.send(signer, msg)
        assert info.value.abci_code == code, info.value.log
        assert log_part in info.value.log
        assert self.chain.balance(self.key(signer).address) == before

    def attest_msg(
        self, node: str, enclave: PrivateKey, *, nonce_height: int | None = None, bound_key: str | None = None
    ) -> MsgAttestEnclave:
        """Dev evidence registering `enclave` for `node`, bound to the hash of block `nonce_height`
        (default: latest)."""
        height = self.height() if nonce_height is None else nonce_height
        nonce = bytes.fromhex(self.chain.rpc.block(height)["block_id"]["hash"])
        report = key_binding(self.chain_id, node, bound_key or enclave.address, nonce)
        now = int(time.time())
        evidence = make_dev_evidence(self.platform_key, self.platform_chain, enclave_measurement(), report, now)
        return MsgAttestEnclave(enclave.address, "dev", evidence, b"", height)

    def escrow(self, client: str, node: str) -> int:
        return int(self.chain.query("/inference/escrow", f"{client}/{node}".encode())["escrow"])

    def assert_supply_holds(self) -> None:
        assert_devnet_supply_holds(self.handle)

    def settlement_fee(self, fee: int) -> int:
        return settlement_fee(self.chain, fee)


@pytest.fixture(scope="module")
def net(inference_devnet) -> Net:
    n = Net(inference_devnet)
    n.send("dev0", MsgSetTeePolicy({"heartbeat_interval": HEARTBEAT, "nonce_window": NONCE_WINDOW}))
    return n


@pytest.fixture(scope="module")
def rogue(net: Net) -> dict[str, Any]:
    """dev2 registered as a tee node for iris; dev3's escrow for it; the test holds its enclave key."""
    ensure_stake(net.chain, net.key("dev2"), ("tee", "vanilla"))
    net.send("dev2", MsgRegisterNode("http://127.0.0.1:9", ("tee", "vanilla"), ("iris",), 0))
    net.send("dev3", MsgDeposit(net.key("dev2").address, 10**9))
    return {"node": net.key("dev2"), "client": net.key("dev3"), "enclave": PrivateKey.from_seed("rogue enclave")}


def tee_item(net: Net, rogue: dict[str, Any], n: int, height_hint: int, signer: PrivateKey | None = None) -> Any:
    manifest = net.chain.query("/registry/model", b"iris")
    fee = int(manifest["price"])
    node, client = rogue["node"], rogue["client"]
    receipt = Receipt(
        net.chain_id,
        node.address,
        client.address,
        "0x" + sha256(f"rogue-{n}-{time.time()}".encode()).hex(),
        manifest["model_id"],
        "tee",
        "0x" + sha256(b"in").hex(),
        "0x" + sha256(b"out").hex(),
        fee,
        height_hint,
        int(time.time()),
    )
    auth = PaymentAuthorization(
        net.chain_id, client.address, node.address, receipt.request_id, receipt.model_id, "tee", fee, 10**9
    )
    signature = receipt.sign(signer or rogue["enclave"])
    return SettlementItem(SignedReceipt(receipt, signature), SignedPayment("request", auth, auth.sign(client)), b"")


# --- the honest path: node0 and its DEV attester ----------------------------------------------------


def test_a_tee_inference_settles_verified_labelled_dev_with_the_fee_paid_and_the_settlement_fee_burned(net):
    client_key = net.key("dev1")
    with Client.from_home(net.home, "dev1") as client:
        client.deposit(10**9, net.node0)
        escrow_before, burned_before = net.escrow(client_key.address, net.node0), net.chain.supply()["burned"]
        result = client.infer("iris", IRIS_INPUT, mode="tee")
        assert result.receipt.receipt.mode == "tee"
        verification = client.wait_verified(result.receipt_id, timeout=90)
    assert verification.verified and verification.chain_status == "verified", verification.reason
    assert verification.dev and verification.attestation_format == "dev"

    async def verify_async() -> Any:
        async with AsyncClient.from_home(net.home, "dev1") as aclient:
            return await aclient.verify_receipt(result.receipt_id)

    again = asyncio.run(verify_async())  # the async client reaches the same verdict, proven later
    assert dataclasses.replace(again, proven_height=verification.proven_height) == verification
    assert verification.measurement_id == DEV_MID and verification.enclave_key != net.node0
    record = net.chain.query("/inference/receipt", result.receipt_id.encode())
    fee = int(record["fee"])
    assert record["status"] == "verified" and record["dev"] is True and fee == result.receipt.receipt.fee
    settle_tx = net.chain.rpc.call("tx_search", query=f"settle.receipt_id='{result.receipt_id}'")["txs"][0]
    events = settle_tx["tx_result"]["events"]
    settled = [{a["key"]: a["value"] for a in e["attributes"]} for e in events if e["type"] == "settle"]
    mine = [e for e in settled if e["receipt_id"] == result.receipt_id]
    assert mine[0]["node"] == net.node0 and int(mine[0]["fee"]) == fee and mine[0]["status"] == "verified"
    assert net.escrow(client_key.address, net.node0) == escrow_before - fee - net.settlement_fee(fee)
    assert net.chain.supply()["burned"] >= burned_before + net.settlement_fee(fee)
    net.assert_supply_holds()


def test_haca_verify_exits_0_for_the_tee_receipt_and_1_for_a_vanilla_one(net):
    with Client.from_home(net.home, "dev1") as client:
        tee = client.infer("iris", IRIS_INPUT, mode="tee")
        vanilla = client.infer("iris", IRIS_INPUT)
        client.wait_settled(tee.receipt_id, 90)
    haca = [sys.executable, "-m", "haca.cli.main"]
    ok = subprocess.run([*haca, "verify", tee.receipt_id, "--home", str(net.home)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "verified (DEV platform: DEV-MODE, NOT FOR PRODUCTION)" in ok.stdout
    no = subprocess.run([*haca, "verify", vanilla.receipt_id, "--home", str(net.home)], capture_output=True, text=True)
    assert no.returncode == 1
    assert "a vanilla receipt carries no evidence" in no.stdout + no.stderr


# --- what a dishonest node tries ------------------------------------------------------------------


def test_report_data_that_does_not_bind_the_key_is_refused(net, rogue):
    other = PrivateKey.from_seed("someone else's key")
    msg = net.attest_msg(rogue["node"].address, rogue["enclave"], bound_key=other.address)
    net.refused("dev2", msg, codes.INVALID_ATTESTATION, "the report data does not bind key")
    assert net.chain.query("/tee/node_enclaves", rogue["node"].address.encode())["enclaves"] == []


def test_a_stale_nonce_is_refused(net, rogue):
    stale = net.height() - NONCE_WINDOW - 1
    net.refused(
        "dev2",
        net.attest_msg(rogue["node"].address, rogue["enclave"], nonce_height=stale),
        codes.INVALID_ATTESTATION,
        "stale nonce",
    )


def test_a_tee_receipt_signed_by_the_node_account_key_is_refused(net, rogue):
    net.send("dev2", net.attest_msg(rogue["node"].address, rogue["enclave"]))
    escrow = net.escrow(rogue["client"].address, rogue["node"].address)
    forged = tee_item(net, rogue, 1, net.height(), signer=rogue["node"])
    net.refused("dev2", MsgSettle((forged,)), codes.INVALID_EVIDENCE, "signed by the node's account key")
    assert net.escrow(rogue["client"].address, rogue["node"].address) == escrow


def test_after_a_missed_heartbeat_receipts_stop_settling(net, rogue):
    net.send("dev2", net.attest_msg(rogue["node"].address, rogue["enclave"]))
    record = net.chain.query("/tee/enclave", rogue["enclave"].address.encode())["enclave"]
    good_until = int(record["good_until"])
    inside = tee_item(net, rogue, 2, net.height())
    net.send("dev2", MsgSettle((inside,)))
    assert net.chain.query("/inference/receipt", inside.receipt.id.encode())["status"] == "verified"
    wait_height(net.chain.rpc, good_until + 2, timeout=60)  # no heartbeat comes
    assert net.chain.query("/tee/enclave", rogue["enclave"].address.encode())["enclave"]["lapsed"] is True
    escrow = net.escrow(rogue["client"].address, rogue["node"].address)
    late = tee_item(net, rogue, 3, good_until + 1)
    net.refused("dev2", MsgSettle((late,)), codes.ENCLAVE_NOT_IN_GOOD_STANDING, "a heartbeat was missed")
    assert net.escrow(rogue["client"].address, rogue["node"].address) == escrow
    net.assert_supply_holds()


def test_a_revoked_measurement_stops_receipts_at_once(net, rogue):
    net.send("dev2", net.attest_msg(rogue["node"].address, rogue["enclave"]))
    signed_before = tee_item(net, rogue, 4, net.height())
    net.send("dev0", MsgRevokeMeasurement(DEV_MID, "*"))
    try:
        escrow = net.escrow(rogue["client"].address, rogue["node"].address)
        net.refused("dev2", MsgSettle((signed_before,)), codes.MEASUREMENT_NOT_APPROVED, "not approved")
        net.refused(
            "dev2",
            net.attest_msg(rogue["node"].address, rogue["enclave"]),
            codes.MEASUREMENT_NOT_APPROVED,
            "not approved",
        )
        assert net.escrow(rogue["client"].address, rogue["node"].address) == escrow
    finally:
        net.send("dev0", MsgApproveMeasurement(DEV_MID, "*"))


def test_dev_evidence_is_refused_once_the_chain_forbids_dev(net, rogue):
    formats = net.chain.query("/tee/policy")["formats"]
    net.send("dev0", MsgSetTeePolicy({"formats": [f for f in formats if f != "dev"]}))
    try:
        msg = net.attest_msg(rogue["node"].address, rogue["enclave"])
        net.refused("dev2", msg, codes.INVALID_ATTESTATION, "the DEV attester is not allowed on this chain")
    finally:
        net.send("dev0", MsgSetTeePolicy({"formats": formats}))


def test_a_tee_policy_message_from_a_non_authority_is_refused_and_changes_nothing(net):
    policy = net.chain.query("/tee/policy")
    net.refused("dev5", MsgSetTeePolicy({"allow_debug": True}), codes.UNAUTHORIZED, "is not a governance authority")
    net.refused("dev5", MsgApproveMeasurement("dev:" + "00" * 32, "*"), codes.UNAUTHORIZED, "not a governance")
    assert net.chain.query("/tee/policy") == policy
