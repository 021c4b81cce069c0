"""The explorer in a real browser (Debian's headless Chromium driven by Playwright) against a running
devnet: the page follows the chain, a new tee receipt appears and is verified, the burn chart has
data, search finds the receipt, and the in-browser light client says "verified here"; the tee
receipt's page shows where it was computed (platform dev, its DEV GPU, the DEV label) and checks the
enclave's measurement is approved for the receipt's model, and the nodes page shows each node's
enclave platform and GPUs; with an RPC answer tampered in transit (Playwright intercepts the page's
/rpc calls) it names the check that failed. Bad search input shows "not found". Screenshots go to
build/test-artifacts/explorer/."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect, sync_playwright

from haca.client.sdk import Client
from haca.types.inference import MsgClaim
from haca.types.payment import SignedPayment
from haca.types.receipt import SignedReceipt
from tests.integration.test_zkml import EXAMPLE as ZK_EXAMPLE

pytestmark = [pytest.mark.devnet, pytest.mark.browser]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("HACA_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts")) / "explorer"
CHROMIUM = "/usr/bin/chromium"
IRIS_INPUT = [[5.1, 3.5, 1.4, 0.2]]
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def explorer_url(inference_devnet) -> str:
    url = inference_devnet.net.status()["explorer"]
    assert url, "the devnet runs an explorer"
    return url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert Path(CHROMIUM).exists(), "make test installs Debian's chromium"
    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    errors: list[str] = []  # uncaught exceptions in the page: there must be none
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert errors == []


@pytest.fixture(scope="module")
def receipt_id(inference_devnet) -> str:
    """A tee inference, settled `verified` by the node."""
    with Client.from_home(inference_devnet.home, "dev2") as client:
        client.deposit(10**9)
        result = client.infer("iris", IRIS_INPUT, mode="tee")
        assert client.wait_settled(result.receipt_id, 90).status == "verified"
        return result.receipt_id


def shot(pg: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_the_page_follows_the_chain_and_a_new_receipt_turns_verified(page, explorer_url, inference_devnet):
    """A zkml answer is in the trust gap while the node proves it (seconds); its client claims it,
    which puts it on chain: the page shows it claimed, then verified once the proof settles."""
    page.goto(explorer_url)
    page.wait_for_function("Number(document.getElementById('height')?.textContent) > 2", timeout=WAIT_MS)
    with Client.from_home(inference_devnet.home, "dev3") as client:
        client.deposit(10**9)
        rid = client.infer("mlp-regressor", ZK_EXAMPLE, mode="zkml").receipt_id
        stored = client.node_receipt(rid)
        signed, payment = SignedReceipt.from_json(stored["receipt"]), SignedPayment.from_json(stored["payment"])
        client.chain.send_msgs(client.key, (MsgClaim(signed, payment),))
    row = page.locator("#receipts tr", has=page.locator(f'a[href="#/receipt/{rid}"]'))
    status = row.locator("td").nth(2)
    expect(status).to_have_text("claimed", timeout=WAIT_MS)
    assert row.locator("td").nth(3).inner_text().startswith("open")  # in the trust gap
    shot(page, "overview-claimed")
    expect(status).to_have_text("verified", timeout=3 * WAIT_MS)
    assert row.locator("td").nth(1).inner_text() == "zkml"
    gap = row.locator("td").nth(3).inner_text()  # the trust gap, answer → settled: the proving time
    assert gap.endswith(" s") and not gap.startswith("<"), gap
    # the settlement fee was burned: the chart's last point is above zero
    chart = page.locator("#burn-chart")
    page.wait_for_function("Number(document.getElementById('burn-chart').dataset.lastBurned) > 0", timeout=WAIT_MS)
    assert int(chart.get_attribute("data-points")) >= 2
    shot(page, "overview")


def test_search_finds_the_receipt_and_the_browser_verifies_it(page, explorer_url, receipt_id):
    page.goto(explorer_url)
    page.fill("#search-input", receipt_id)
    page.press("#search-input", "Enter")
    page.wait_for_url(f"**#/receipt/{receipt_id}", timeout=WAIT_MS)
    check = page.locator("#check")
    check.wait_for(timeout=WAIT_MS)
    assert check.get_attribute("data-result") == "verified"
    assert check.inner_text().startswith("verified here")
    assert page.locator("#receipt-status .status").inner_text() == "verified"
    assert page.locator("ol.steps li.bad").count() == 0
    assert page.locator("ol.steps li.ok").count() == 5  # trusted set, answer + proof, header, MPT, value
    # where it was computed, and the enclave's approval for its model, checked from proven state
    enclave = page.locator("#enclave-check")
    expect(enclave).to_have_attribute("data-result", "verified", timeout=WAIT_MS)
    assert enclave.inner_text() == (
        "verified here: computed and signed inside an enclave whose measurement is approved for model iris"
        " (DEV platform)"
    )
    platform = page.locator("#enclave-platform")
    assert platform.get_attribute("data-dev") == "true"
    assert platform.locator(".platform").get_attribute("data-platform") == "dev"
    assert "DEV platform: DEV-MODE, NOT FOR PRODUCTION" in platform.inner_text()
    gpu = platform.locator("li.gpu")
    assert gpu.count() == 1 and gpu.get_attribute("data-dev") == "true"
    assert gpu.inner_text().startswith("GPU HACA-DEV-GPU, driver haca-dev-1.0 (dev-gpu)")
    assert "DEV GPU: DEV-MODE, NOT FOR PRODUCTION" in gpu.inner_text()
    assert page.locator("ol.tee-steps li.ok").count() == 4  # model, enclave record, approval, GPU rule
    assert page.locator("ol.tee-steps li.bad").count() == 0
    assert "DEV platform" in page.locator("#receipt-status").inner_text()
    shot(page, "receipt-verified")


def test_the_nodes_page_shows_each_enclave_s_platform_and_gpus(page, explorer_url, inference_devnet, receipt_id):
    node0 = inference_devnet.net.status()["nodes"][0]["address"]
    page.goto(f"{explorer_url}/#/nodes")
    row = page.locator("#nodes tr", has=page.locator(f'a[href="#/address/{node0}"]'))
    enclave = row.locator(".enclave").first
    enclave.wait_for(timeout=WAIT_MS)
    assert enclave.locator(".platform").get_attribute("data-platform") == "dev"
    assert "DEV platform: DEV-MODE, NOT FOR PRODUCTION" in enclave.inner_text()
    assert enclave.locator("li.gpu").first.inner_text().startswith("GPU HACA-DEV-GPU, driver haca-dev-1.0")
    shot(page, "nodes")


def _tamper_value(result: dict[str, Any]) -> None:
    """The receipt record as the RPC answers it, its fee raised: the proof still shows the real one."""
    response = result["response"]
    record = json.loads(base64.b64decode(response["value"]))
    if "fee" not in record:  # another proven read (the enclave check's): only the receipt's is tampered
        return
    record["fee"] = str(int(record["fee"]) * 10)
    response["value"] = base64.b64encode(json.dumps(record, separators=(",", ":")).encode()).decode()


def _tamper_signatures(result: dict[str, Any]) -> None:
    for sig in result["signed_header"]["commit"]["signatures"]:
        if sig.get("signature"):
            raw = bytearray(base64.b64decode(sig["signature"]))
            raw[0] ^= 1
            sig["signature"] = base64.b64encode(bytes(raw)).decode()


def _tamper_app_hash(result: dict[str, Any]) -> None:
    header = result["signed_header"]["header"]
    header["app_hash"] = "00" * 32


TAMPERINGS: dict[str, tuple[str, Callable[[dict[str, Any]], None], str]] = {
    # name: (the RPC method whose answer is changed, how, the step the page must name)
    "answer": ("abci_query", _tamper_value, "answer"),
    "signatures": ("commit", _tamper_signatures, "signatures"),
    "app hash": ("commit", _tamper_app_hash, "header hash"),
}


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_an_rpc_answer_tampered_in_transit_is_caught_at_its_step(page, explorer_url, receipt_id, name):
    method, tamper, step = TAMPERINGS[name]
    tampered = []

    def intercept(route: Any) -> None:
        call = json.loads(route.request.post_data or "{}")
        if call.get("method") != method or (method == "abci_query" and not call["params"].get("prove")):
            route.continue_()
            return
        answer = route.fetch().json()
        if "result" in answer:  # (a commit not made yet is an error the page retries: passed on as is)
            tamper(answer["result"])
            tampered.append(method)
        route.fulfill(status=200, content_type="application/json", body=json.dumps(answer))

    page.route("**/rpc", intercept)
    page.goto(f"{explorer_url}/#/receipt/{receipt_id}")
    check = page.locator("#check")
    check.wait_for(timeout=WAIT_MS)
    assert tampered, "the page asked the tampered method"
    assert check.get_attribute("data-result") == "failed"
    assert check.get_attribute("data-step") == step
    assert check.inner_text().startswith("NOT verified: the check failed at")
    assert page.locator("ol.steps li.bad").count() == 1
    shot(page, f"receipt-tampered-{name.replace(' ', '-')}")


def test_a_server_that_swaps_the_trusted_validator_set_is_caught(page, explorer_url, receipt_id):
    """The page pins the trusted set's hash on first use; a config.json with another set (a
    server that would sign its own headers) fails the check at "trusted set"."""
    page.goto(f"{explorer_url}/#/receipt/{receipt_id}")
    expect(page.locator("#check")).to_have_attribute("data-result", "verified", timeout=WAIT_MS)

    def swapped(route: Any) -> None:
        config = route.fetch().json()
        config["validators"][0]["voting_power"] = "1000"
        route.fulfill(status=200, content_type="application/json", body=json.dumps(config))

    page.route("**/config.json", swapped)
    page.reload()
    check = page.locator("#check")
    expect(check).to_have_attribute("data-result", "failed", timeout=WAIT_MS)
    assert check.get_attribute("data-step") == "trusted set"
    shot(page, "receipt-swapped-validator-set")


@pytest.mark.parametrize(
    "text",
    ["not-a-thing<script>alert(1)</script>", "0x" + "ab" * 32, "0x1234", "99999999999"],
    ids=["garbage", "unknown-id", "short-hex", "future-block"],
)
def test_bad_search_input_shows_not_found(page, explorer_url, text):
    page.goto(explorer_url)
    page.locator("#height").wait_for(timeout=WAIT_MS)
    page.fill("#search-input", text)
    page.press("#search-input", "Enter")
    notice = page.locator("#view .notfound")
    notice.wait_for(timeout=WAIT_MS)
    assert notice.inner_text().startswith("Not found:")
    assert page.locator("#view .error").count() == 0
    shot(page, f"search-{text[:12].replace('<', '_').replace('/', '_')}")
