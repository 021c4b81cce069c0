"""`haca chat` and `haca completion` on a live 4-validator devnet whose node serves SmolLM2-135M
(tee through the enclave on the DEV platform, and vanilla): one-shot answers (streamed, or one JSON object), an
interactive conversation on stdin, receipts charging exactly usage x the per-token prices that
settle on chain (tee: verified), and a --max-fee too low for the prompt refused before paying."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from haca.client.sdk import Client
from haca.devnet.services import EXAMPLE_LLM, EXAMPLE_LLM_TERMS

pytestmark = pytest.mark.devnet
PROMPT_PRICE, COMPLETION_PRICE, CONTEXT = EXAMPLE_LLM_TERMS
KEY = "dev2"
MAX_TOKENS = "8"


class Net:
    def __init__(self, handle: Any) -> None:
        self.handle, self.home = handle, handle.home
        self.node = str(handle.config.extra["nodes"][0]["address"])

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HACA_HOME": str(self.home)}
        paying = ("--from", KEY) if args[0] in ("chat", "completion") else ()
        cmd = [sys.executable, "-m", "haca.cli.main", *args, *paying]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, input=stdin or "", timeout=180)
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def json(self, *args: str, stdin: str | None = None) -> dict[str, Any]:
        done = self.run(*args, "--json", stdin=stdin)
        assert done.returncode == 0, done.stdout + done.stderr
        return dict(json.loads(done.stdout))


@pytest.fixture(scope="module")
def net(inference_devnet: Any) -> Net:
    net = Net(inference_devnet)
    with Client.from_home(net.home, KEY) as client:
        client.deposit(10**9, net.node)
    return net


def assert_charges_usage(answer: dict[str, Any], mode: str) -> None:
    usage, receipt = answer["usage"], answer["receipt"]
    assert answer["mode"] == receipt["mode"] == mode
    assert answer["receipt_id"] == receipt["id"] and answer["status"] == "pending"
    assert 0 < usage["completion_tokens"] <= int(MAX_TOKENS) and usage["prompt_tokens"] > 0
    assert (receipt["prompt_tokens"], receipt["completion_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    fee = usage["prompt_tokens"] * PROMPT_PRICE + usage["completion_tokens"] * COMPLETION_PRICE
    assert answer["fee"] == int(receipt["fee"]) == fee
    assert answer["finish_reason"] in ("stop", "length") and isinstance(answer["text"], str)


def test_a_tee_chat_answer_charges_usage_times_the_prices_and_settles_verified(net: Net) -> None:
    args = ("--prompt", "Name a colour.", "--mode", "tee", "--max-tokens", MAX_TOKENS, "--seed", "7")
    answer = net.json("chat", "-m", EXAMPLE_LLM, *args)
    assert_charges_usage(answer, "tee")
    verified = net.json("verify", answer["receipt_id"], "--wait")
    assert verified["verified"] is True and verified["chain_status"] == "verified", verified
    assert verified["dev"] is True and verified["enclave_key"] != net.node
    record = net.handle.client.query("/inference/receipt", answer["receipt_id"].encode())
    assert int(record["fee"]) == answer["fee"]


def test_a_vanilla_chat_answer_charges_usage_times_the_prices_and_settles(net: Net) -> None:
    answer = net.json("chat", "-m", EXAMPLE_LLM, "--prompt", "Say hello.", "--mode", "vanilla", "--max-tokens", "6")
    assert_charges_usage(answer, "vanilla")
    with Client.from_home(net.home, KEY) as client:
        record = client.wait_settled(answer["receipt_id"], timeout=90)
    assert record.status == "settled" and record.fee == answer["fee"]


def test_without_a_mode_the_node_s_preferred_one_tee_is_paid(net: Net) -> None:
    answer = net.json("chat", "-m", EXAMPLE_LLM, "--prompt", "Hi", "--max-tokens", "4")
    assert_charges_usage(answer, "tee")


def test_a_one_shot_chat_streams_the_text_then_a_line_with_the_receipt(net: Net) -> None:
    done = net.run("chat", "-m", EXAMPLE_LLM, "--prompt", "Name a fruit.", "--max-tokens", MAX_TOKENS, "--seed", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.rstrip("\n").split("\n")
    summary = re.fullmatch(
        r"receipt (0x[0-9a-f]{64}) \(checked here\)  mode tee  tokens (\d+) prompt \+ (\d+) completion  fee (\d+)  "
        r"(stop|length)  pending",
        lines[-1],
    )
    assert summary, lines
    prompt_tokens, completion_tokens, fee = (int(summary[i]) for i in (2, 3, 4))
    assert fee == prompt_tokens * PROMPT_PRICE + completion_tokens * COMPLETION_PRICE
    with Client.from_home(net.home, KEY) as client:
        stored = client.node_receipt(summary[1])  # the node holds the receipt the line names
    assert int(stored["receipt"]["fee"]) == fee


def test_interactive_chat_answers_each_line_on_stdin_keeping_the_conversation(net: Net) -> None:
    stdin = "My name is Ada.\nWhat is my name?\n"
    done = net.run("chat", "-m", EXAMPLE_LLM, "--max-tokens", MAX_TOKENS, "--mode", "vanilla", "--json", stdin=stdin)
    assert done.returncode == 0, done.stdout + done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(answers) == 2
    for answer in answers:
        assert_charges_usage(answer, "vanilla")
    first, second = answers
    assert first["receipt_id"] != second["receipt_id"]
    # the second request carries the first exchange: its prompt is the first prompt, the answer and more
    assert second["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"] + first["usage"]["completion_tokens"]


def test_interactive_chat_streams_each_answer_and_stops_at_exit(net: Net) -> None:
    stdin = "Hello!\n\nTell me a colour.\n/exit\nThis line is never sent.\n"
    done = net.run("chat", "-m", EXAMPLE_LLM, "--max-tokens", "4", stdin=stdin)
    assert done.returncode == 0, done.stdout + done.stderr
    summaries = [line for line in done.stdout.splitlines() if line.startswith("receipt 0x")]
    assert len(summaries) == 2, done.stdout


def test_a_completion_is_paid_and_checked_streamed_or_as_json(net: Net) -> None:
    answer = net.json("completion", "-m", EXAMPLE_LLM, "--prompt", "The capital of France is", "--max-tokens", "6")
    assert_charges_usage(answer, "tee")
    args = ("--prompt", "1, 2, 3,", "--max-tokens", "6", "--mode", "vanilla")
    done = net.run("completion", "-m", EXAMPLE_LLM, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^receipt 0x[0-9a-f]{64} \(checked here\)  mode vanilla ", done.stdout, re.M), done.stdout


def test_a_max_fee_too_low_for_the_prompt_is_a_clean_error(net: Net) -> None:
    args = ("--prompt", "Name a colour.", "--max-tokens", MAX_TOKENS, "--max-fee", "500")
    done = net.run("chat", "-m", EXAMPLE_LLM, *args, "--json")
    assert done.returncode == 1
    error = json.loads(done.stdout)
    assert set(error) == {"error"} and error["error"]["code"] == "payment_required"
    assert "more than the max fee 500" in error["error"]["message"]
    human = net.run("completion", "-m", EXAMPLE_LLM, *args)
    assert human.returncode == 1 and "more than the max fee 500" in human.stderr and not human.stdout.strip()


def test_an_unknown_model_is_a_clean_error(net: Net) -> None:
    done = net.run("chat", "-m", "no-such-llm", "--prompt", "Hi", "--json")
    assert done.returncode == 1
    error = json.loads(done.stdout)["error"]
    assert error["code"] == "model_not_found" and "no LLM 'no-such-llm'" in error["message"]
