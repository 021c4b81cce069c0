"""`haca demo`: start a 4-validator devnet with a model hub and an inference node, then run the main
job end to end — pay for inferences, check receipts, watch them settle — saying what happened."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

import haca.types.messages  # noqa: F401  (registers message types)
from haca.cli.common import HomeOption, cli_command, client_home, console
from haca.client import records
from haca.client.config import ClientConfig
from haca.client.sdk import Client
from haca.client.tee import ReceiptVerification, describe_gpu, gpu_architecture
from haca.devnet.layout import example_models_dir
from haca.devnet.network import Devnet, up
from haca.proofs.tee.dev import DEV_LABEL
from haca.types.bank import MsgSend
from haca.types.registry import PriceUnit

DEPOSIT = 10_000_000


@cli_command
def demo(
    home: HomeOption = None,
    keep: Annotated[bool, typer.Option("--keep", help="leave the network running afterwards")] = False,
    validators: Annotated[int, typer.Option("--validators", min=1)] = 4,
) -> None:
    """Start a local devnet (validators, hub, node), pay for inferences, verify and settle them."""
    home_dir = client_home(home)
    with console.status(f"starting a {validators}-validator devnet, model hub and inference node in {home_dir}…"):
        net = up(home_dir, validators)
    try:
        _show_network(net.status())
        with Client.from_home(home_dir) as client:  # the home's default key, as the CLI uses
            _run(client, ClientConfig.load(home_dir).denom)
    finally:
        if keep:
            h = f"haca --home {home_dir}"
            console.print(
                f"\nThe network keeps running. Try:\n  {h} devnet status\n  {h} model list\n"
                f"  {h} infer -m iris --input '[[5.1, 3.5, 1.4, 0.2]]'\n  {h} query supply\n"
                f"  {h} allowance create --node {net.status()['nodes'][0]['address']} --max 1000000\n"
                f"Watch it in the explorer: {net.status().get('explorer') or f'{h} explorer'}\n"
                f"Stop it with: {h} devnet down\n"
                "(haca is .venv/bin/haca: `source .venv/bin/activate` puts it on your PATH)"
            )
        else:
            Devnet(home_dir).stop()
            console.print("\ndevnet stopped (its data stays in place; `make demo` again resumes it).")


def _show_network(status: dict[str, Any]) -> None:
    console.print(f"[bold]1.[/bold] devnet [cyan]{status['chain_id']}[/cyan] is up:")
    for v in status["validators"]:
        console.print(f"   {v['name']}  {v['rpc']}  height {v['height']}  app hash {v['app_hash'][:16]}…")
    console.print(f"   model hub {status['hub']}")
    if status.get("explorer"):
        console.print(f"   explorer {status['explorer']} (open it in a browser: it checks each receipt there)")
    for n in status["nodes"]:
        console.print(f"   inference node {n['name']} {n['url']} ({n['address']}), modes {', '.join(n['modes'])}")


def _run(client: Client, denom: str) -> None:
    chain = client.chain
    node = records.node_registrations(chain)[0].address
    console.print("[bold]2.[/bold] models registered on chain (bytes in the hub, addressed by sha256):")
    for m in records.manifests(chain):
        if m.price_unit == PriceUnit.TOKEN:
            terms = (
                f"{m.price} {denom} per prompt token, {m.completion_price} per completion token"
                f" ({m.kind} LLM, context {m.max_rows} tokens)"
            )
        else:
            terms = f"{m.price} {denom} per {m.price_unit.value} (at most {m.max_rows} rows a request)"
        console.print(f"   {m.name:<14} v{m.version}  {m.model_id[:23]}…  {terms}")

    supply_before, node_before = chain.supply(), chain.balance(node)
    client.deposit(DEPOSIT, node)
    escrow_before = client.escrow()
    console.print(
        f"[bold]3.[/bold] {client.key.address[:10]}… (key dev0) deposited {DEPOSIT} {denom} into escrow "
        f"for node {node[:10]}… (only that node is paid from it; escrow now {escrow_before})"
    )

    examples = {m["name"]: m for m in json.loads((example_models_dir() / "manifest.json").read_text())["models"]}
    table = Table("model", "output", "fee", "receipt", "status", title="4. paid inferences (x402), receipts checked")
    results = []
    for name in ("iris", "mlp-regressor", "digits-cnn"):
        result = client.infer(name, examples[name]["example_input"])
        results.append(result)
        table.add_row(
            name,
            _summary(name, result.output),
            str(result.receipt.receipt.fee),
            result.receipt_id[:18] + "…",
            result.status,
        )
    console.print(table)
    console.print(
        "   each receipt: signed by the node (EIP-712), commits to input and output hashes and charges exactly"
        " the quoted fee the client signed — verified here"
    )

    with console.status("waiting for the node to settle the receipts on chain…"):
        settled = [client.wait_settled(r.receipt_id) for r in results]
    fees = sum(r.receipt.receipt.fee for r in results)
    burned_settlement = sum(r.record.settlement_fee if r.record else 0 for r in settled)
    console.print(
        f"[bold]5.[/bold] settled in block(s) {sorted({r.height for r in settled})}: "
        f"status {settled[0].status} (vanilla: signed, not independently verified)"
    )

    supply_after = chain.supply()
    console.print(
        f"[bold]6.[/bold] inference fees to node {node[:10]}…: {fees} {denom} "
        f"(its balance {chain.balance(node) - node_before:+} after paying its settlement tx fees)"
    )
    console.print(f"   escrow {escrow_before} → {client.escrow()} (fees + settlement fees {burned_settlement} burned)")
    console.print(
        f"   supply {supply_before['total']} → {supply_after['total']} {denom}; burned "
        f"{supply_before['burned']} → {supply_after['burned']} (settlement fees + tx fees)"
    )
    console.print(
        f"   invariant: supply + burned = {supply_after['total'] + supply_after['burned']} "
        f"(genesis {supply_before['total'] + supply_before['burned']})"
    )

    recipient = "0x000000000000000000000000000000000000dead"
    client.chain.send_msgs(client.key, (MsgSend(recipient, 1_000),))
    proven = client.chain.proven_balance(recipient)
    console.print(
        f"[bold]7.[/bold] a transfer to {recipient[:10]}…: balance {proven}, Merkle proof checked against the "
        "app hash in the next header, signed by > 2/3 of validators"
    )
    _tee_step(client, examples["iris"]["example_input"])
    _zkml_step(client, examples["mlp-regressor"]["example_input"])
    _llm_step(client, denom)
    _agent_steps(client)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}, "country": {"type": "string", "maxLength": 40}},
    "required": ["city", "country"],
    "additionalProperties": False,
}


def _agent_steps(client: Client) -> None:
    """What agents need, on the same small model: a tool call and an answer in a JSON schema, each
    generated under a grammar, receipted (the receipt commits to the tools or the schema) and
    verified on chain."""
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    call = client.chat("smollm2", question, mode="tee", max_tokens=40, temperature=0.0, tools=[WEATHER_TOOL],
                       tool_choice="required")  # fmt: skip
    (made,) = call.tool_calls
    console.print(
        f"[bold]11.[/bold] tool calling: asked {question[0]['content']!r} with a get_weather tool, the model calls"
        f" {made.name}({made.arguments}); the receipt commits to the tools and to that call"
    )
    schema = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True}}
    structured = client.chat(
        "smollm2", [{"role": "user", "content": "Name a famous city."}], mode="tee", max_tokens=48,
        temperature=0.0, response_format=schema,
    )  # fmt: skip
    console.print(
        f"    structured output under a JSON schema: {structured.text}"
        f" (parses: {sorted(json.loads(structured.text))}); the receipt commits to the schema"
    )
    with console.status("waiting for both receipts to settle…"):
        checks = [client.wait_verified(r.receipt_id) for r in (call, structured)]
    console.print(f"    both settled [bold]{checks[0].chain_status}[/bold] and {checks[1].chain_status}")


def _llm_step(client: Client, denom: str) -> None:
    """An LLM chat, streamed from the node's OpenAI-compatible route, run and signed inside the
    enclave, charged per token used, verified on chain."""
    question = "In one sentence, what is a blockchain?"
    console.print(f"[bold]10.[/bold] LLM chat on smollm2 (SmolLM2-135M, llama.cpp) in tee mode: {question!r}")
    console.print("    ", end="")
    stream = client.chat_stream(
        "smollm2", [{"role": "user", "content": question}], mode="tee", max_tokens=48, temperature=0.0
    )
    for piece in stream:
        console.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
    console.print()
    result = stream.result
    assert result is not None
    usage = result.usage
    console.print(
        f"    streamed over SSE; receipt {result.receipt_id[:18]}… charges {usage['prompt_tokens']} prompt +"
        f" {usage['completion_tokens']} completion tokens = {result.fee} {denom}, checked here against this"
        " request and exactly this text"
    )
    with console.status("waiting for the LLM receipt to settle…"):
        verification = client.wait_verified(result.receipt_id)
    console.print(
        f"    settled [bold]{verification.chain_status}[/bold]: the model ran, and its answer and receipt were"
        f" computed and signed inside the enclave (platform {_platform(verification)}){_dev_label(verification)}"
    )
    console.print(
        "    Any OpenAI client works: openai.OpenAI(base_url=NODE_URL + '/v1', api_key=<haca allowance create>)"
    )


def _zkml_step(client: Client, example: Any) -> None:
    """A zkml inference: answered at once, proved by the node in the background, verified on chain."""
    started = time.monotonic()
    result = client.infer("mlp-regressor", example, mode="zkml")
    answered = time.monotonic() - started
    with console.status("the node proves the inference with EZKL; validators verify the proof…"):
        record = client.wait_settled(result.receipt_id, timeout=180)
    gap = time.monotonic() - started
    verification = client.verify_receipt(result.receipt_id)
    console.print(
        f"[bold]9.[/bold] zkml inference on mlp-regressor: {_summary('mlp-regressor', result.output)}, answered in"
        f" {answered * 1000:.0f} ms ({result.status}); proof verified on chain → [bold]{record.status}[/bold]"
        f" after {gap:.1f} s (the trust gap)"
    )
    verdict = "verifies" if verification.verified else f"does NOT verify: {verification.reason}"
    console.print(
        f"   `haca verify {result.receipt_id[:10]}…`: the EZKL proof, checked locally against the circuit and SRS"
        f" pinned on chain (vk {verification.claims.get('vk_hash', '?')[:23]}…), {verdict}"
    )


def _tee_step(client: Client, example: Any) -> None:
    """A tee inference: run inside the node's enclave (`haca enclave serve`, on the devnet the DEV
    platform), computed and signed there, settled as verified, re-verified here."""
    result = client.infer("iris", example, mode="tee")
    with console.status("waiting for the tee receipt to settle and re-verifying it from proven chain state…"):
        verification = client.wait_verified(result.receipt_id)
    console.print(
        f"[bold]8.[/bold] tee inference on iris: {_summary('iris', result.output)}, receipt "
        f"{result.receipt_id[:18]}… status [bold]{verification.chain_status}[/bold]{_dev_label(verification)}"
    )
    console.print(
        f"   computed and signed inside the enclave (platform {_platform(verification)}) by enclave key"
        f" {verification.enclave_key[:10]}… (not the node's account key), attested with"
        f" {verification.attestation_format} evidence, measurement {verification.measurement_id[:24]}…"
    )
    for i, gpu in enumerate(verification.gpus):
        console.print(f"   GPU {i} attested with it ({gpu.get('format', '?')}): {describe_gpu(gpu)}", markup=False)
    verdict = "verifies" if verification.verified else f"does NOT verify: {escape(verification.reason)}"
    console.print(
        f"   `haca verify {result.receipt_id[:10]}…`: the attestation, its GPU reports, the measurement's approval"
        f" for {verification.model or 'the model'} and the receipt signature, checked locally against"
        f" Merkle-proven chain state, {verdict}"
    )


def _platform(verification: ReceiptVerification) -> str:
    """The platform and GPUs on one line: "dev, GPU HACA-DEV-GPU driver haca-dev-1.0 (DEV)",
    "tdx, GPU GH100 (Hopper) driver 550.54.15"."""
    text = verification.platform or verification.attestation_format or "?"
    for gpu in verification.gpus:
        chip = str(gpu.get("chip") or "unknown chip")
        arch = gpu_architecture(chip)
        text += f", GPU {chip}" + (f" ({arch})" if arch else "")
        if gpu.get("driver_version"):
            text += f" driver {gpu['driver_version']}"
        if gpu.get("dev"):
            text += " (DEV)"
    return escape(text)


def _dev_label(verification: ReceiptVerification) -> str:
    if not verification.dev:
        return ""
    return f" — [bold red]DEV platform: {DEV_LABEL}[/bold red]"


def _summary(name: str, output: dict[str, Any]) -> str:
    if name == "iris":
        return f"class {output['label']['data'][0]}"
    if name == "digits-cnn":
        row = output[next(iter(output))]["data"][0]
        return f"digit {row.index(max(row))}"
    value = output[next(iter(output))]["data"]
    while isinstance(value, list):
        value = value[0]
    return f"{value:.2f}"
