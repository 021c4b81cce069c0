"""The enclave on its own: it loads only bytes that hash to the model id, computes and signs the
receipt itself from the request it received, signs a batch root only over receipts it produced,
offers no operation that signs what the host built, and measures the code and runtime it runs."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from haca.enclave.client import AsyncEnclaveClient, EnclaveClient, EnclaveRefusal
from haca.enclave.evidence import DevPlatform
from haca.enclave.measure import enclave_measurement, measured_files
from haca.enclave.models import ModelRefused, ModelStore
from haca.enclave.runtime import Enclave, EnclaveRefused, Terms
from haca.proofs.tee.attestation import verify_attestation
from haca.proofs.tee.binding import key_binding
from haca.proofs.tee.dev import ROOT_CERT_FILE, issue_dev_platform, make_dev_root
from haca.runtime.llm import ContextExceeded, smollm2_path
from haca.types.batch import assemble_batch
from haca.types.llm import parse_request, text_hash
from haca.types.payment import SignedPayment, SpendingAllowance
from haca.types.tensor import tensors_hash
from tests.unit.enclave.serving import serving
from tests.unit.node.nodehelpers import CHAIN_ID, CLIENT, HEIGHT, NODE, allowance_payment
from tests.unit.node.test_api import INPUT, build_double

MEASUREMENT = b"\x07" * 32
NONCE = b"\x01" * 32


@dataclasses.dataclass
class Setup:
    base: Path
    model_id: str
    runtime: Enclave


def make_enclave(base: Path, produced_limit: int = 1 << 10) -> Setup:
    if not (base / "root").exists():
        make_dev_root(base / "root")
        issue_dev_platform(base / "root", base / "platform")
        (base / "models").mkdir()
    model_id = build_double(base / "double.onnx")
    shutil.copy(base / "double.onnx", base / "models" / (model_id.removeprefix("sha256:") + ".onnx"))
    store = ModelStore(base / "models", private_dir=base / f"private-{produced_limit}")
    runtime = Enclave(DevPlatform(base / "platform", MEASUREMENT), MEASUREMENT, store, produced_limit=produced_limit)
    runtime.load(model_id, "onnx", 0, 1)
    runtime.attest(CHAIN_ID, NODE.address, NONCE)
    return Setup(base, model_id, runtime)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return make_enclave(tmp_path)


def terms(request_id: int = 1, unit_price: int = 5, price_unit: str = "row") -> Terms:
    return Terms(
        CHAIN_ID, NODE.address, CLIENT.address, f"0x{request_id:064x}", HEIGHT, unit_price, price_unit, 8, 0, 0
    )


def test_the_enclave_computes_every_field_of_the_receipt_from_the_request_it_received(setup):
    rows = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    outputs, signed = setup.runtime.infer(setup.model_id, rows, terms(unit_price=5, price_unit="row"))
    receipt = signed.receipt
    prepared = setup.runtime.models.get(setup.model_id).runtime.prepare(rows)  # type: ignore[union-attr]
    assert receipt.input_hash == tensors_hash(prepared)
    assert receipt.output_hash == tensors_hash(outputs)
    assert outputs["y"].values == (2.0, 4.0, 6.0, 8.0, 10.0, 12.0)  # it ran the model: y = 2x
    assert receipt.fee == 15  # 3 rows at 5 a row, from the terms
    assert (receipt.mode, receipt.model_id, receipt.node) == ("tee", setup.model_id, NODE.address)
    assert receipt.signer(signed.signature) == setup.runtime.address


def test_the_enclave_serves_only_a_node_and_chain_it_attested_for(setup):
    other = dataclasses.replace(terms(), node="0x" + "33" * 20)
    with pytest.raises(EnclaveRefused, match="has not attested for node"):
        setup.runtime.infer(setup.model_id, INPUT, other)


def test_model_bytes_that_do_not_hash_to_the_model_id_are_refused_at_load(tmp_path):
    (tmp_path / "models").mkdir()
    model_id = build_double(tmp_path / "double.onnx")
    claimed = "sha256:" + "ab" * 32
    shutil.copy(tmp_path / "double.onnx", tmp_path / "models" / ("ab" * 32 + ".onnx"))  # the host lies about the name
    store = ModelStore(tmp_path / "models", private_dir=tmp_path / "private")
    with pytest.raises(ModelRefused, match=f"hash to {model_id}, not {claimed}: refused, not loaded"):
        store.load(claimed, "onnx")
    assert store.loaded == []


def test_a_batch_root_is_signed_only_over_receipts_the_enclave_produced(setup):
    produced = [setup.runtime.infer(setup.model_id, INPUT, terms(n))[1] for n in (1, 2)]
    allowance = SpendingAllowance(CHAIN_ID, CLIENT.address, NODE.address, 10**9, 10**6, 1)
    payment = _allowance_payment(allowance)

    def batch(receipts):  # type: ignore[no-untyped-def]
        msg, _ = assemble_batch(CHAIN_ID, NODE.address, "tee", [(r, payment) for r in receipts])
        return msg

    good = batch([s.receipt for s in produced])
    signature = setup.runtime.sign_batch(CHAIN_ID, NODE.address, good)
    assert good.header(CHAIN_ID, NODE.address).signer(signature) == setup.runtime.address
    # a receipt the host built (here: a produced one with its output changed) is refused, whole
    forged = dataclasses.replace(produced[1].receipt, output_hash="0x" + "00" * 32)
    with pytest.raises(EnclaveRefused, match=r"item 1 .* is not a receipt this enclave produced"):
        setup.runtime.sign_batch(CHAIN_ID, NODE.address, batch([produced[0].receipt, forged]))


def test_after_a_restart_older_receipts_are_not_in_any_root(setup):
    _, signed = setup.runtime.infer(setup.model_id, INPUT, terms(7))
    restarted = make_enclave(setup.base, produced_limit=1 << 11).runtime  # a new process: a new key, no memory
    allowance = SpendingAllowance(CHAIN_ID, CLIENT.address, NODE.address, 10**9, 10**6, 1)
    msg, _ = assemble_batch(CHAIN_ID, NODE.address, "tee", [(signed.receipt, _allowance_payment(allowance))])
    with pytest.raises(EnclaveRefused, match="item 0"):
        restarted.sign_batch(CHAIN_ID, NODE.address, msg)


def test_the_dev_evidence_binds_the_enclave_key_to_the_node(setup):
    bundle = setup.runtime.attest(CHAIN_ID, NODE.address, NONCE)
    root = (setup.base / "root" / ROOT_CERT_FILE).read_bytes()
    claims = verify_attestation(bundle.cpu, claims_time(bundle.cpu.evidence), {"dev": root})
    assert claims.report_data == key_binding(CHAIN_ID, NODE.address, setup.runtime.address, NONCE)
    assert claims.measurements == {"measurement": MEASUREMENT}


def claims_time(evidence: bytes) -> int:
    import cbor2

    payload = cbor2.loads(cbor2.loads(evidence)[0])
    return int(payload["time"])


# --- the socket: no operation signs what the host built ---------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    setup = make_enclave(tmp_path_factory.mktemp("served"))
    with serving(setup.runtime, setup.base / "e.sock"):
        yield setup


@pytest.mark.parametrize("op", ["sign_receipt", "sign_receipts", "sign"])
def test_there_is_no_operation_that_signs_a_receipt_the_host_built(served, op):
    forged = {"chain_id": CHAIN_ID, "node": NODE.address, "mode": "tee", "output_hash": "0x" + "00" * 32}
    with EnclaveClient(served.base / "e.sock") as client:
        with pytest.raises(EnclaveRefusal, match=f"unknown op '{op}'"):
            client.call({"op": op, "receipt": forged, "receipts": [forged]})
        assert client.key()["address"] == served.runtime.address  # the connection is still usable


def test_a_forged_batch_over_the_socket_is_refused(served):
    forged = dataclasses.replace(
        served.runtime.infer(served.model_id, INPUT, terms(40))[1].receipt, fee=1
    )  # the host lowers (or raises) the fee
    allowance = SpendingAllowance(CHAIN_ID, CLIENT.address, NODE.address, 10**9, 10**6, 1)
    msg, _ = assemble_batch(CHAIN_ID, NODE.address, "tee", [(forged, _allowance_payment(allowance))])
    with EnclaveClient(served.base / "e.sock") as client, pytest.raises(EnclaveRefusal, match="not a receipt this"):
        client.sign_batch(CHAIN_ID, NODE.address, msg)


def test_infer_over_the_socket_returns_what_the_enclave_computed(served):
    with EnclaveClient(served.base / "e.sock") as client:
        output, signed = client.infer(served.model_id, INPUT, terms(41, unit_price=9, price_unit="request"))
    assert output["y"]["data"] == [[3.0, -4.0]]
    assert signed.receipt.fee == 9 and served.runtime.produced(signed.receipt.digest)


def test_a_bad_input_is_refused_with_its_code(served):
    with EnclaveClient(served.base / "e.sock") as client, pytest.raises(EnclaveRefusal) as refused:
        client.infer(served.model_id, [[1.0, 2.0, 3.0]], terms(42))
    assert refused.value.code == "invalid_input"


# --- a language model in the enclave ----------------------------------------------------------------------


def test_an_llm_streams_from_the_enclave_and_ends_with_the_receipt_it_signed(served):
    llm_id = "sha256:" + _sha256(smollm2_path())
    shutil.copy(smollm2_path(), served.base / "models" / (llm_id.removeprefix("sha256:") + ".gguf"))
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8}
    body |= {"logprobs": True, "top_logprobs": 1}  # computed in the enclave, returned with the outcome
    llm_terms = Terms(CHAIN_ID, NODE.address, CLIENT.address, "0x" + "77" * 32, HEIGHT, 3, "token", 512, 7, 10**6)
    with EnclaveClient(served.base / "e.sock") as sync:
        sync.load(llm_id, "gguf", 512, 1)

    async def run():  # type: ignore[no-untyped-def]
        client = AsyncEnclaveClient(served.base / "e.sock")
        generation = client.generate(llm_id, "chat", body, llm_terms, 60.0)
        pieces = [piece async for piece in generation]
        await client.close()
        return pieces, generation.result

    pieces, result = asyncio.run(run())
    receipt = result.receipt.receipt
    assert "".join(pieces) == result.text and result.completion_tokens >= 1
    assert result.logprobs is not None and "".join(e["token"] for e in result.logprobs) == result.text
    assert receipt.input_hash == parse_request(body, "chat").hash(llm_id)
    assert receipt.output_hash == text_hash(result.text)
    assert receipt.fee == 3 * result.prompt_tokens + 7 * result.completion_tokens
    assert (receipt.prompt_tokens, receipt.completion_tokens) == (result.prompt_tokens, result.completion_tokens)
    assert receipt.signer(result.receipt.signature) == served.runtime.address


# --- the measurement --------------------------------------------------------------------------------------


def test_the_measurement_covers_the_enclaves_code_and_its_native_runtimes():
    files = measured_files()
    assert {"haca/enclave/runtime.py", "haca/runtime/onnx.py", "haca/runtime/llm.py", "haca/types/receipt.py"} <= set(
        files
    )
    assert any(name.startswith("onnxruntime/") for name in files)
    assert any(name.startswith("llama_cpp/") for name in files)
    assert "haca/node/api.py" not in files and "haca/chain/app.py" not in files  # the host's code is not in it
    assert "haca/client/sdk.py" not in files  # haca's lazily exported SDK is not imported by importing haca


def test_the_same_tree_and_wheels_give_the_same_measurement_in_another_process():
    fresh = subprocess.run(
        [sys.executable, "-m", "haca.enclave", "measure"], capture_output=True, text=True, check=True, timeout=120
    )
    assert fresh.stdout.strip().splitlines()[-1] == enclave_measurement().hex()


def _allowance_payment(allowance: SpendingAllowance) -> SignedPayment:
    return allowance_payment(allowance)


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- one answer per request; the terms' token limit ----------------------------------------------------


@pytest.fixture(scope="module")
def llm_setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    setup = make_enclave(tmp_path_factory.mktemp("llm"))
    llm_id = "sha256:" + _sha256(smollm2_path())
    shutil.copy(smollm2_path(), setup.base / "models" / (llm_id.removeprefix("sha256:") + ".gguf"))
    setup.runtime.load(llm_id, "gguf", 512, 1)
    return dataclasses.replace(setup, model_id=llm_id)


CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "Name a fruit."}], "max_tokens": 12}


def llm_terms(request: int, max_rows: int = 512) -> Terms:
    request_id = f"0x{request:064x}"
    return Terms(CHAIN_ID, NODE.address, CLIENT.address, request_id, HEIGHT, 3, "token", max_rows, 7, 10**6)


def test_a_request_id_is_run_once_so_the_host_cannot_pick_among_several_answers(llm_setup):
    runtime = llm_setup.runtime
    runtime.generate(llm_setup.model_id, CHAT, "chat", llm_terms(1), lambda piece: None)
    with pytest.raises(EnclaveRefused, match="was already run here"):
        runtime.generate(llm_setup.model_id, CHAT, "chat", llm_terms(1), lambda piece: None)
    onnx_id = next(m for m in runtime.models.loaded if m != llm_setup.model_id)
    runtime.infer(onnx_id, INPUT, terms(5))
    with pytest.raises(EnclaveRefused, match="was already run here"):  # a tensor request likewise
        runtime.infer(onnx_id, INPUT, terms(5))


def test_without_a_client_seed_the_enclave_samples_with_one_fixed_by_the_request(llm_setup, tmp_path):
    """Temperature 1 and no seed: the same request run again — here by a restarted enclave, which
    remembers nothing — samples the same text, so there is nothing to re-roll."""
    body = {**CHAT, "temperature": 1.0, "max_tokens": 16}
    first, _ = llm_setup.runtime.generate(llm_setup.model_id, body, "chat", llm_terms(2), lambda piece: None)
    again = make_enclave(tmp_path)
    shutil.copy(smollm2_path(), tmp_path / "models" / (llm_setup.model_id[7:] + ".gguf"))
    again.runtime.load(llm_setup.model_id, "gguf", 512, 1)
    second, _ = again.runtime.generate(llm_setup.model_id, body, "chat", llm_terms(2), lambda piece: None)
    assert second.text == first.text


def test_an_llm_receipt_never_counts_more_tokens_than_the_terms_allow(llm_setup):
    runtime = llm_setup.runtime
    outcome, signed = runtime.generate(
        llm_setup.model_id, {**CHAT, "max_tokens": 64}, "chat", llm_terms(3, max_rows=40), lambda piece: None
    )
    assert outcome.prompt_tokens + outcome.completion_tokens <= 40 and outcome.finish_reason == "length"
    assert signed.receipt.prompt_tokens + signed.receipt.completion_tokens <= 40
    with pytest.raises(ContextExceeded, match="allow 10 tokens a request"):
        runtime.generate(llm_setup.model_id, CHAT, "chat", llm_terms(4, max_rows=10), lambda piece: None)
