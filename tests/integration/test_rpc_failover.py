"""RPC failover on a real devnet: with validator 0 stopped (the first RPC in every config, the
node's included) paid inferences are still answered and settle; with every validator stopped the
node answers a JSON 503 and serves again once the chain is back."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from haca.client.config import ClientConfig, connect
from haca.client.sdk import Client
from haca.node.chainview import MAX_STALE

from .helpers import wait_height

pytestmark = pytest.mark.devnet
IRIS = [[5.1, 3.5, 1.4, 0.2]]
DEPOSIT = 10**9


def node_url(net) -> str:
    return net.config.extra["nodes"][0]["url"]


def paid_inference_settles(client: Client) -> None:
    result = client.infer("iris", IRIS)
    record = client.wait_settled(result.receipt_id, timeout=90)
    assert record.status == "settled", record


def test_paid_inferences_settle_with_validator_0_stopped(inference_devnet):
    net = inference_devnet
    validators = net.net.load().nodes
    # the node runs on the devnet's home config: it lists every validator's RPC, validator 0 first
    node_config = ClientConfig.load(Path(net.home))
    assert json.loads((Path(net.home) / "config.json").read_text())["rpc"] == node_config.rpc
    assert node_config.rpc == [v.rpc for v in validators] and len(validators) == 4

    with Client.from_home(net.home, "dev2") as warm:
        warm.deposit(DEPOSIT)
        paid_inference_settles(warm)  # the node's and this client's RPC now stick to validator 0
        net.net.stop(validators[0].name)
        try:
            others = [c for c in net.clients() if c.rpc.url != validators[0].rpc]
            wait_height(others[0].rpc, others[0].rpc.height() + 2)  # the other three keep making blocks
            paid_inference_settles(warm)

            with Client.from_home(net.home, "dev3") as fresh:  # a new client, validator 0 first in its config
                fresh.deposit(DEPOSIT)
                paid_inference_settles(fresh)

            proven = connect(node_config)  # light-client checked reads through whichever RPC answers
            try:
                assert proven.proven_balance(net.keys.get("dev3").address) > 0
                assert proven.rpc.url != validators[0].rpc
            finally:
                proven.close()
        finally:
            net.net.start(validators[0].name)
            net.net.wait_ready(2, 120, name=validators[0].name)


def test_with_every_validator_stopped_the_node_answers_503_json_and_recovers(inference_devnet):
    net = inference_devnet
    validators = net.net.load().nodes
    with Client.from_home(net.home, "dev4") as client:
        client.deposit(DEPOSIT)
        for validator in validators:
            net.net.stop(validator.name)
        try:
            # past what the node serves while it cannot refresh (stale-while-revalidate, MAX_STALE)
            time.sleep(MAX_STALE + 1.5)
            # the node's 402 quotes an expiry from the chain height: with no RPC answering, a 503
            response = httpx.post(f"{node_url(net)}/v1/infer", json={"model": "iris", "input": IRIS}, timeout=30)
            assert response.status_code == 503, response.text
            assert response.headers["content-type"].startswith("application/json")
            assert response.json()["error"]["code"] == "chain_unavailable"
            assert httpx.get(f"{node_url(net)}/healthz", timeout=10).status_code == 200
        finally:
            net.net.start()  # the validators again (the hub and node kept running)
        deadline = time.monotonic() + 30
        while True:  # the node's RPC client tries its endpoints again a few seconds after they failed
            try:
                paid_inference_settles(client)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
