"""The `haca` CLI against a live devnet: every command's --json shape and its error path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.devnet


def haca(devnet, *args: str, ok: bool = True) -> dict | list:
    env = {**os.environ, "HACA_HOME": str(devnet.home)}
    done = subprocess.run(
        [sys.executable, "-m", "haca.cli.main", *args, "--json"], capture_output=True, text=True, env=env, timeout=120
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert (done.returncode == 0) == ok, (done.returncode, done.stdout, done.stderr)
    return json.loads(done.stdout)


def test_keys_list_devnet_gives_ten_deterministic_funded_keys(devnet):
    keys = haca(devnet, "keys", "list", "--devnet")
    assert [k["name"] for k in keys] == [f"dev{i}" for i in range(10)]
    assert keys[0]["address"] == devnet.keys.get("dev0").address
    assert all(devnet.client.balance(k["address"]) > 0 for k in keys)


def test_keys_add_then_show_and_list(devnet):
    added = haca(devnet, "keys", "add", "alice")
    assert haca(devnet, "keys", "show", "alice")["address"] == added["address"]
    assert "alice" in [k["name"] for k in haca(devnet, "keys", "list")]
    assert haca(devnet, "keys", "add", "alice", ok=False)["error"]["message"]


def test_send_then_query_balance_supply_and_tx(devnet):
    recipient = haca(devnet, "keys", "add", "bob")["address"]
    before = haca(devnet, "query", "supply")
    assert set(before) == {"denom", "total", "burned"} and isinstance(before["total"], int)
    sent = haca(devnet, "tx", "send", "--to", recipient, "--amount", "777")
    assert sent["code"] == 0 and sent["fee_burned"] > 0
    balance = haca(devnet, "query", "balance", recipient, "--prove")
    assert balance["balance"] == 777 and balance["proven"] is True
    after = haca(devnet, "query", "supply")
    assert after["burned"] - before["burned"] >= sent["fee_burned"]
    assert after["total"] + after["burned"] == before["total"] + before["burned"]
    tx = haca(devnet, "query", "tx", sent["hash"])
    assert tx["height"] == sent["height"] and tx["code"] == 0
    assert tx["events"][-1] == {
        "type": "transfer",
        "attributes": {"sender": devnet.keys.get("dev0").address, "recipient": recipient, "amount": "777"},
    }


def test_devnet_status_json_lists_validators_with_rpc_height_and_app_hash(devnet):
    status = haca(devnet, "devnet", "status")
    assert status["chain_id"] == devnet.config.chain_id
    assert len(status["validators"]) == 4
    for v in status["validators"]:
        assert v["rpc"].startswith("http://127.0.0.1:") and v["height"] >= 2 and len(v["app_hash"]) == 64


@pytest.mark.parametrize(
    "args",
    [
        ("tx", "send", "--to", "0x000000000000000000000000000000000000dead", "--amount", str(10**40)),
        ("tx", "send", "--to", "not-an-address", "--amount", "1"),
        ("tx", "send", "--from", "nobody", "--to", "0x000000000000000000000000000000000000dead", "--amount", "1"),
        ("query", "tx", "0x" + "00" * 32),
        ("query", "balance", "nobody"),
    ],
)
def test_errors_are_one_json_object_and_nonzero_exit(devnet, args):
    answer = haca(devnet, *args, ok=False)
    assert set(answer) == {"error"} and set(answer["error"]) == {"code", "message"}
    assert answer["error"]["message"]


def test_validator_init_writes_a_home_and_reports_its_identity(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "haca.cli.main",
            "validator",
            "init",
            "--home",
            str(tmp_path / "v"),
            "--moniker",
            "alpha",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    ident = json.loads(done.stdout)
    assert ident["moniker"] == "alpha" and len(ident["node_id"]) == 40
    config = (tmp_path / "v" / "cometbft" / "config" / "config.toml").read_text()
    assert 'moniker = "alpha"' in config and "unix://" in config


def test_gov_the_devnet_authority_changes_a_param_and_anyone_else_is_refused(devnet):
    authority = devnet.keys.get("dev0").address
    assert haca(devnet, "gov", "authorities") == {"authorities": [authority]}
    before = devnet.client.query("/inference/params")
    refused = haca(devnet, "gov", "update-params", "--module", "inference", "--set", "revoke_delay=1", "--from", "dev1",
                   ok=False)  # fmt: skip
    assert refused["error"]["code"] == "tx_rejected" and "not a governance authority" in refused["error"]["message"]
    assert devnet.client.query("/inference/params") == before
    changed = haca(devnet, "gov", "update-params", "--module", "inference", "--set", "revoke_delay=33")
    assert changed["params"] == {**before, "revoke_delay": 33}
    assert devnet.client.query("/inference/params")["revoke_delay"] == 33
