"""LLM receipts on chain: a gguf model priced per token settles a receipt whose fee covers its
token counts at the manifest's prices; one charging less, counting more tokens than the model
allows, or counting tokens for a model not priced per token is refused with its code, changing
nothing. Manifests: a gguf model must be priced per token with empty schemas and no zkml."""

from __future__ import annotations

import dataclasses

import pytest

from haca.chain import errors
from haca.chain.genesis import AppGenesis, GenesisAccount
from haca.chain.modules.inference.keeper import InferenceParams
from haca.types.inference import MsgDeposit, MsgSettle
from haca.types.registry import MsgRegisterModel, MsgRegisterNode
from tests.unit.chain import apphelpers
from tests.unit.chain.apphelpers import FEES, Node
from tests.unit.chain.test_inference import CLIENT, IRIS, NODE, OWNER, item, make_receipt, model_id

FUNDS = 10**12
GENESIS = AppGenesis(
    fees=FEES,
    inference=InferenceParams(withdraw_delay=5, revoke_delay=4, settlement_fee=100, settlement_fee_bps=500),
    accounts=tuple(GenesisAccount(k.address, FUNDS) for k in (CLIENT, NODE, OWNER)),
)
PROMPT_PRICE, COMPLETION_PRICE, CONTEXT = 3, 11, 512
LLM = MsgRegisterModel(
    "tiny-llm", model_id("tiny-llm"), {}, {}, ("tee", "vanilla"), PROMPT_PRICE, "token", CONTEXT, None, "gguf", 11
)


@pytest.fixture
def chain(tmp_path):
    n = Node(tmp_path / "state.db")
    n.init(GENESIS)
    n.block()
    results = list(n.block([n.tx(OWNER, LLM), n.tx(OWNER, IRIS, offset=1)]).tx_results)
    results += n.block(
        [
            n.tx(NODE, MsgRegisterNode("http://node", ("vanilla",), ("iris", "tiny-llm"), 0)),
            n.tx(CLIENT, MsgDeposit(NODE.address, 10**6)),
        ]
    ).tx_results
    assert [r.code for r in results] == [0] * 4, [r.log for r in results]
    yield n
    n.close()


def llm_receipt(request: int, prompt: int, completion: int, fee: int | None = None, model: str = LLM.model_id):
    base = make_receipt(request, model=model, height_hint=3)
    exact = prompt * PROMPT_PRICE + completion * COMPLETION_PRICE
    return dataclasses.replace(
        base, fee=exact if fee is None else fee, prompt_tokens=prompt, completion_tokens=completion
    )


def refused(chain: Node, raw: bytes, code: int, log_part: str) -> None:
    supply = 3 * FUNDS
    apphelpers.assert_rejected_without_state_change(chain, NODE, raw, code, log_part, supply)


def test_a_receipt_charging_its_tokens_at_the_manifests_prices_settles(chain):
    receipt = llm_receipt(1, prompt=30, completion=20)
    result = chain.deliver(NODE, MsgSettle((item(receipt),)))
    assert result.code == 0, result.log
    record = chain.answer("/inference/receipt", receipt.id.encode())
    assert record["fee"] == str(30 * PROMPT_PRICE + 20 * COMPLETION_PRICE)


def test_a_receipt_charging_less_than_its_tokens_cost_is_refused(chain):
    raw = chain.tx(NODE, MsgSettle((item(llm_receipt(2, prompt=30, completion=20, fee=30 * 3 + 20 * 11 - 1)),)))
    refused(chain, raw, errors.InvalidPayment.code, "below the price 310 of 30 prompt + 20 completion tokens")


def test_a_receipt_counting_more_tokens_than_the_model_allows_is_refused(chain):
    raw = chain.tx(NODE, MsgSettle((item(llm_receipt(3, prompt=500, completion=13)),)))
    refused(chain, raw, errors.InvalidPayment.code, "receipt counts 513 tokens; the model allows 512")


def test_a_receipt_counting_tokens_for_a_model_not_priced_per_token_is_refused(chain):
    raw = chain.tx(NODE, MsgSettle((item(llm_receipt(4, prompt=1, completion=1, fee=2000, model=IRIS.model_id)),)))
    refused(chain, raw, errors.InvalidPayment.code, "is not priced per token")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"price_unit": "request"}, "a gguf model is priced per token"),
        ({"input_schema": {"x": {"dtype": "float32", "shape": [1]}}}, "a gguf model takes text"),
        (
            {"modes": ["zkml"], "circuit": {"settings_hash": "sha256:" + "00" * 32, "vk_hash": "sha256:" + "00" * 32}},
            "cannot be offered in zkml",
        ),
        ({"kind": "safetensors"}, "kind: expected one of"),
    ],
)
def test_a_gguf_manifest_must_be_priced_per_token_with_empty_schemas_and_no_zkml(changes, message):
    doc = {**LLM.to_json(), **changes}
    with pytest.raises(ValueError, match=message):
        MsgRegisterModel.from_json(doc)


def test_an_onnx_manifest_cannot_be_priced_per_token():
    with pytest.raises(ValueError, match="only a gguf model is priced per token"):
        MsgRegisterModel.from_json({**IRIS.to_json(), "price_unit": "token"})
    assert MsgRegisterModel.from_json(LLM.to_json()) == LLM
    legacy = {k: v for k, v in IRIS.to_json().items() if k not in ("kind", "completion_price")}
    assert MsgRegisterModel.from_json(legacy) == IRIS  # manifests from before kinds are ONNX
