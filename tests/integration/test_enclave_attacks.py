"""Issue 20's attacks on a live devnet: the host (the node's operator, played by this test as dev4)
talks to a real enclave process (`haca enclave serve`, DEV platform with a DEV GPU) and tries to get
a `verified` settlement for something the enclave did not compute. Every attempt is refused and no
honest balance moves; the honest receipt of the same request then settles verified.

- a host that alters the output, the token counts, the model id or the request (input) hash after
  the enclave answered: the enclave's signature no longer covers the receipt;
- enclave operations called directly with a forged receipt or root: there is no op that signs a
  receipt, and a root is signed only over receipts the enclave produced;
- model bytes whose hash is not the model id: refused at load.
"""

from __future__ import annotations

import dataclasses
import shutil
import signal
import time
from collections.abc import Iterator
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest

from haca.client.config import ClientConfig
from haca.client.sdk import Client
from haca.devnet.layout import example_models_dir
from haca.devnet.processes import signal_group, spawn, wait_group_gone
from haca.devnet.services import enclave_command, wait_socket
from haca.enclave.client import AsyncEnclaveClient, EnclaveClient, EnclaveRefusal
from haca.enclave.measure import enclave_measurement
from haca.enclave.runtime import Terms
from haca.node.service import ensure_stake
from haca.proofs.tee.binding import measurement_id
from haca.proofs.tee.claims import Claims
from haca.runtime.llm import smollm2_path
from haca.types import codes
from haca.types.batch import assemble_batch
from haca.types.inference import MsgDeposit, MsgSettle, SettlementItem
from haca.types.payment import PaymentAuthorization, SignedPayment, SpendingAllowance
from haca.types.receipt import Receipt, SignedReceipt
from haca.types.registry import MsgRegisterNode
from haca.types.tee import MsgAttestEnclave, MsgRevokeMeasurement, MsgSetTeePolicy
from tests.integration.test_tee import IRIS_INPUT, MODELS, Net

pytestmark = pytest.mark.devnet
HOST, CLIENT = "dev4", "dev5"


@pytest.fixture(scope="module")
def net(inference_devnet: Any) -> Net:
    return Net(inference_devnet)


@dataclasses.dataclass
class Host:
    enclave: EnclaveClient
    socket: Path
    models: Path
    node: str
    client: str
    ids: dict[str, str]  # model name -> id


@pytest.fixture(scope="module")
def host(net: Net, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    """dev4 registered as a tee node for iris and smollm2, with an enclave process of its own that
    loaded both models itself and whose key dev4 registered with its DEV CPU + DEV GPU evidence."""
    work = tmp_path_factory.mktemp("enclave-host")
    models = work / "models"
    models.mkdir()
    node, client = net.key(HOST).address, net.key(CLIENT).address
    ids = {name: net.chain.query("/registry/model", name.encode())["model_id"] for name in MODELS}
    ids["smollm2"] = net.chain.query("/registry/model", b"smollm2")["model_id"]
    shutil.copy(example_models_dir() / MODELS["iris"]["file"], models / (ids["iris"][7:] + ".onnx"))
    shutil.copy(smollm2_path(), models / (ids["smollm2"][7:] + ".gguf"))
    ensure_stake(net.chain, net.key(HOST), ("tee",))
    net.send(HOST, MsgRegisterNode("http://127.0.0.1:9", ("tee",), ("iris", "smollm2"), 0))
    net.send(CLIENT, MsgDeposit(node, 10**10))
    socket = work / "enclave.sock"
    hub = str(ClientConfig.load(Path(net.home)).extra["hub"])
    platform = Path(net.home) / "devnet" / "enclave0"
    pid = spawn(enclave_command(socket, platform, models, hub), work / "enclave.log")
    wait_socket(socket, pid, "enclave", work / "enclave.log")
    enclave = EnclaveClient(socket)
    enclave.load(ids["iris"], "onnx")
    enclave.load(ids["smollm2"], "gguf", 512, 1)
    height = net.height()
    evidence = enclave.attest(net.chain_id, node, bytes.fromhex(net.chain.rpc.block(height)["block_id"]["hash"]))
    key = enclave.key()["address"]
    cpu = evidence.cpu
    net.send(HOST, MsgAttestEnclave(key, cpu.format, cpu.evidence, cpu.endorsements, height, evidence.gpus))
    record = net.chain.query("/tee/enclave", key.encode())["enclave"]
    assert record["gpus"][0]["format"] == "dev-gpu" and record["gpus"][0]["dev"] is True
    yield Host(enclave, socket, models, node, client, ids)
    enclave.close()
    signal_group(pid, signal.SIGTERM)
    wait_group_gone(pid, time.monotonic() + 10)


def terms(net: Net, host: Host, model: str, n: int) -> tuple[Terms, SignedPayment]:
    manifest = net.chain.query("/registry/model", model.encode())
    request_id = "0x" + sha256(f"{model}-{n}-{time.time()}".encode()).hexdigest()
    price, unit = int(manifest["price"]), manifest["price_unit"]
    completion = int(manifest.get("completion_price", 0))
    budget = 10**8 if unit == "token" else 0
    auth = PaymentAuthorization(
        net.chain_id, host.client, host.node, request_id, host.ids[model], "tee", 10**8, net.height() + 1000
    )
    payment = SignedPayment("request", auth, auth.sign(net.key(CLIENT)))
    height = net.height()
    return (
        Terms(
            net.chain_id,
            host.node,
            host.client,
            request_id,
            height,
            price,
            unit,
            int(manifest["max_rows"]),
            completion,
            budget,
        ),
        payment,
    )


def balances(net: Net, host: Host) -> tuple[int, int, int]:
    return (
        net.chain.balance(host.node),
        net.chain.balance(host.client),
        net.escrow(host.client, host.node),
    )


def generate(host: Host, model_id: str, t: Terms) -> SignedReceipt:
    import asyncio

    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}

    async def run() -> SignedReceipt:
        client = AsyncEnclaveClient(host.socket)
        generation = client.generate(model_id, "chat", body, t, 60.0)
        async for _ in generation:
            pass
        await client.close()
        assert generation.result is not None
        return generation.result.receipt

    return asyncio.run(run())


def altered_refused_then_honest_settles(
    net: Net, host: Host, signed: SignedReceipt, altered: Receipt, payment: SignedPayment
) -> None:
    """The altered receipt under the enclave's signature is refused (code 19) and moves nothing;
    the receipt the enclave produced then settles verified and takes exactly its fee."""
    before = balances(net, host)
    net.refused(
        HOST,
        MsgSettle((SettlementItem(SignedReceipt(altered, signed.signature), payment, b""),)),
        codes.INVALID_EVIDENCE,
        "which is not an enclave key attested for node",
    )
    assert balances(net, host) == before
    net.send(HOST, MsgSettle((SettlementItem(signed, payment, b""),)))
    assert net.chain.query("/inference/receipt", signed.id.encode())["status"] == "verified"
    _, client_after, escrow_after = balances(net, host)
    assert client_after == before[1]
    fee = signed.receipt.fee
    assert escrow_after == before[2] - fee - net.settlement_fee(fee)
    net.assert_supply_holds()


ALTERATIONS = {
    "output": lambda r: dataclasses.replace(r, output_hash="0x" + "00" * 32),
    "request_hash": lambda r: dataclasses.replace(r, input_hash="0x" + "11" * 32),
    "fee": lambda r: dataclasses.replace(r, fee=r.fee * 2),
}


@pytest.mark.parametrize("what", [*ALTERATIONS, "model_id"])
def test_a_host_that_alters_a_tensor_answer_gets_no_verified_settlement(net, host, what):
    t, payment = terms(net, host, "iris", 1)
    _, signed = host.enclave.infer(host.ids["iris"], IRIS_INPUT, t)
    receipt = signed.receipt
    if what == "model_id":  # another registered model the node serves, at another price
        altered = dataclasses.replace(receipt, model_id=host.ids["smollm2"])
    else:
        altered = ALTERATIONS[what](receipt)
    altered_refused_then_honest_settles(net, host, signed, altered, payment)


@pytest.mark.parametrize("what", ["completion_tokens", "prompt_tokens", "output"])
def test_a_host_that_alters_an_llm_answers_token_counts_or_text_gets_no_verified_settlement(net, host, what):
    t, payment = terms(net, host, "smollm2", 2)
    signed = generate(host, host.ids["smollm2"], t)
    receipt = signed.receipt
    if what == "output":
        altered = dataclasses.replace(receipt, output_hash="0x" + "22" * 32)
    else:
        altered = dataclasses.replace(receipt, **{what: getattr(receipt, what) + 100})
    altered_refused_then_honest_settles(net, host, signed, altered, payment)


def test_enclave_operations_with_a_forged_receipt_or_root_are_refused(net, host):
    t, _ = terms(net, host, "iris", 3)
    _, signed = host.enclave.infer(host.ids["iris"], IRIS_INPUT, t)
    before = balances(net, host)
    with pytest.raises(EnclaveRefusal, match="unknown op 'sign_receipt'"):
        host.enclave.call({"op": "sign_receipt", "receipt": dataclasses.replace(signed.receipt, fee=1).to_json()})
    allowance = SpendingAllowance(net.chain_id, host.client, host.node, 10**9, 10**6, 1)
    payment = SignedPayment("allowance", allowance, allowance.sign(net.key(CLIENT)))
    forged = dataclasses.replace(signed.receipt, output_hash="0x" + "33" * 32)
    batch, _ = assemble_batch(net.chain_id, host.node, "tee", [(signed.receipt, payment), (forged, payment)])
    with pytest.raises(EnclaveRefusal, match=r"item 1 .* is not a receipt this enclave produced"):
        host.enclave.sign_batch(net.chain_id, host.node, batch)
    honest, _ = assemble_batch(net.chain_id, host.node, "tee", [(signed.receipt, payment)])
    signature = host.enclave.sign_batch(net.chain_id, host.node, honest)  # its own receipts: signed
    assert honest.header(net.chain_id, host.node).signer(signature) == host.enclave.key()["address"]
    assert balances(net, host) == before


def test_model_bytes_that_do_not_hash_to_the_model_id_are_refused_at_load(net, host):
    # the host puts iris's bytes where the enclave looks for mlp-regressor's
    wrong = host.models / (host.ids["mlp-regressor"][7:] + ".onnx")
    shutil.copy(example_models_dir() / MODELS["iris"]["file"], wrong)
    with pytest.raises(EnclaveRefusal, match=f"hash to {host.ids['iris']}, not {host.ids['mlp-regressor']}"):
        host.enclave.load(host.ids["mlp-regressor"], "onnx")
    assert host.ids["mlp-regressor"] not in host.enclave.key()["models"]


# --- GPU evidence required (last: it changes the module devnet's TEE policy) -----------------------------


def test_with_gpu_evidence_required_only_an_enclave_attested_with_a_gpu_report_settles_verified(net, host, tmp_path):
    net.send("dev0", MsgSetTeePolicy({"gpu_required": ["iris"]}))
    # node0's enclave (DEV platform + DEV GPU) keeps serving iris verified, end to end through the node
    with Client.from_home(net.home, "dev6") as client:
        client.deposit(10**9, net.node0)
        result = client.infer("iris", IRIS_INPUT, mode="tee")
        verification = client.wait_verified(result.receipt_id, timeout=90)
    assert verification.verified and verification.chain_status == "verified", verification.reason
    # an enclave of the same code without GPU evidence, registered by dev4: its iris receipt is refused
    socket = tmp_path / "nogpu.sock"
    platform = Path(net.home) / "devnet" / "enclave0"
    pid = spawn(enclave_command(socket, platform, host.models, "", gpu="none"), tmp_path / "nogpu.log")
    try:
        wait_socket(socket, pid, "enclave", tmp_path / "nogpu.log")
        with EnclaveClient(socket) as plain:
            plain.load(host.ids["iris"], "onnx")
            height = net.height()
            nonce = bytes.fromhex(net.chain.rpc.block(height)["block_id"]["hash"])
            evidence = plain.attest(net.chain_id, host.node, nonce)
            assert evidence.gpus == ()
            cpu = evidence.cpu
            key = plain.key()["address"]
            net.send(HOST, MsgAttestEnclave(key, cpu.format, cpu.evidence, cpu.endorsements, height))
            t, payment = terms(net, host, "iris", 9)
            _, signed = plain.infer(host.ids["iris"], IRIS_INPUT, t)
    finally:
        signal_group(pid, signal.SIGTERM)
        wait_group_gone(pid, time.monotonic() + 10)
    before = balances(net, host)
    net.refused(
        HOST,
        MsgSettle((SettlementItem(signed, payment, b""),)),
        codes.MEASUREMENT_NOT_APPROVED,
        "requires GPU evidence",
    )
    assert balances(net, host) == before
    net.assert_supply_holds()


def test_a_resumed_devnet_approves_the_enclave_code_of_its_tree(net):
    """`make demo` resumes a devnet whose genesis approved the code of its day: after the code
    changes (here: the approval revoked), starting the node approves what its enclave runs."""
    from haca.devnet.services import approve_enclave_code

    mid = measurement_id(Claims("dev", {"measurement": enclave_measurement()}, b"", False, "UpToDate", dev=True))
    net.send("dev0", MsgRevokeMeasurement(mid, "*"))
    socket = net.handle.net.enclave_socket("enclave0")
    assert approve_enclave_code(Path(net.home), socket) == mid
    approvals = net.chain.query("/tee/measurements")["approvals"]
    assert [a["model"] for a in approvals if a["measurement_id"] == mid] == ["*"]
    assert approve_enclave_code(Path(net.home), socket) is None  # already approved: nothing sent
