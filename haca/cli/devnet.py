"""`haca devnet` (a local network) and `haca validator` (one validator of a real network)."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from haca.chain.home import ValidatorHome
from haca.chain.supervisor import identity, init_validator, run_validator
from haca.cli.common import HomeOption, JsonOption, cli_command, client_home, console, emit, err_console
from haca.devnet.chaos import SCENARIOS, ChaosOptions, ChaosReport, run_chaos
from haca.devnet.network import Devnet, up
from haca.logs import configure_logging

devnet_app = typer.Typer(help="Run a local multi-validator devnet on loopback.", no_args_is_help=True)
validator_app = typer.Typer(help="Run one validator (CometBFT + HACA app) of a network.", no_args_is_help=True)
NodeArg = Annotated[
    str | None,
    typer.Argument(
        metavar="NODE", help="val0…valN, hub, enclave0, node0 or explorer (default: all)", show_default=False
    ),
]


@devnet_app.command("up")
@cli_command
def devnet_up(
    validators: Annotated[int, typer.Option("--validators", min=1, max=16)] = 4,
    chain_id: Annotated[str, typer.Option("--chain-id")] = "haca-devnet",
    block_time: Annotated[str, typer.Option("--block-time", help="CometBFT timeout_commit")] = "500ms",
    inference: Annotated[bool, typer.Option("--inference/--no-inference", help="also run a hub and node0")] = True,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Create (first time) and start the devnet: validators (height >= 2), a model hub with the
    example models registered, and one inference node."""
    with console.status("starting devnet…", spinner="dots") if not json_out else contextlib.nullcontext():
        net = up(client_home(home), validators, chain_id, block_time, inference)
    _print_status(net, json_out)


@devnet_app.command("status")
@cli_command
def devnet_status(home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Height and app hash of every validator."""
    _print_status(Devnet(client_home(home)), json_out)


@devnet_app.command("stop")
@cli_command
def devnet_stop(node: NodeArg = None, home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Stop a node (SIGTERM to its app and CometBFT), or all."""
    Devnet(client_home(home)).stop(node)
    emit(json_out, {"stopped": node or "all"}, lambda: console.print(f"stopped {node or 'all nodes'}"))


@devnet_app.command("kill")
@cli_command
def devnet_kill(node: NodeArg = None, home: HomeOption = None, json_out: JsonOption = False) -> None:
    """SIGKILL a node's app and CometBFT processes at once (crash testing), or all nodes'."""
    Devnet(client_home(home)).stop(node, kill=True)
    emit(json_out, {"killed": node or "all"}, lambda: console.print(f"killed {node or 'all nodes'}"))


@devnet_app.command("start")
@cli_command
def devnet_start(node: NodeArg = None, home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Start a stopped node (or all), and wait until it serves RPC again."""
    net = Devnet(client_home(home))
    net.start(node)
    net.wait_ready(1, 90, name=node)
    emit(json_out, {"started": node or "all"}, lambda: console.print(f"started {node or 'all nodes'}"))


@devnet_app.command("down")
@cli_command
def devnet_down(
    purge: Annotated[bool, typer.Option("--purge", help="also delete the devnet's chain data")] = False,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Stop every node; with --purge, delete the network so the next `up` starts from genesis."""
    net = Devnet(client_home(home))
    net.stop()
    if purge:
        shutil.rmtree(net.dir)
    emit(
        json_out, {"down": True, "purged": purge}, lambda: console.print("devnet down" + (", purged" if purge else ""))
    )


@devnet_app.command("chaos")
@cli_command
def devnet_chaos(
    scenario: Annotated[str, typer.Option("--scenario", help=f"one of: {', '.join(SCENARIOS)}")] = "all",
    duration: Annotated[float, typer.Option("--duration", min=1, help="seconds of load and faults")] = 300,
    out: Annotated[Path | None, typer.Option("--out", help="also write the JSON report here")] = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Faults under load (CometBFT e2e style): validators killed (whole, app only, CometBFT only),
    paused and disconnected; node, batching node, enclave, provers and hub killed; a TEE
    measurement revoked and an attestation let expire. Then checks: txs and receipts lost,
    receipts settled twice, app hashes at every height, the supply invariant. Uses the devnet at
    --home (created, and stopped afterwards, when there is none). Exit status 1 if a check fails."""
    if scenario not in SCENARIOS:
        raise ValueError(f"no scenario {scenario!r}; scenarios: {', '.join(SCENARIOS)}")
    configure_logging()  # the steps' structured logs go to stderr: stdout is the report
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would bury them

    def progress(text: str) -> None:
        if not json_out:
            err_console.print(f"[dim]{text}[/dim]", highlight=False)

    report = run_chaos(ChaosOptions(scenario, duration, client_home(home)), progress)
    document = report.to_json()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(document, indent=2) + "\n")
    emit(json_out, document, lambda: _print_chaos(report))
    if not report.ok:
        sys.exit(1)  # (typer.Exit is a RuntimeError: cli_command would print it as an error)


def _print_chaos(report: ChaosReport) -> None:
    doc = report.to_json()
    checks = Table("check", "value", "ok", title=f"chaos {report.scenario} ({doc['duration_s']}s)")
    rows = [
        (
            "txs sent / accepted / committed",
            f"{doc['txs_sent']} / {doc['txs_accepted']} / {doc['txs_committed']}",
            True,
        ),
        ("txs lost", str(doc["txs_lost"]), doc["txs_lost"] == 0),
        ("receipts served / settled", f"{doc['receipts_served']} / {doc['receipts_settled']}", True),
        ("receipts lost", str(doc["receipts_lost"]), doc["receipts_lost"] == 0),
        ("receipts settled twice", str(doc["receipts_double_settled"]), doc["receipts_double_settled"] == 0),
        ("receipts refused (outside cause)", str(doc["receipts_refused_outside_cause"]), True),
        (
            "app hashes agree",
            f"heights {doc['app_hash_heights'][0]}..{doc['app_hash_heights'][1]}",
            doc["app_hash_agree"],
        ),
        ("largest block gap", f"{doc['largest_block_gap_s']}s at {doc['largest_block_gap_height']}", True),
        ("supply invariant", "", doc["supply_invariant_ok"]),
    ]
    for name, value, ok in rows:
        checks.add_row(name, value, "[green]yes[/green]" if ok else "[red]NO[/red]")
    console.print(checks)
    steps = Table("perturbation", "target", "recovery (s)", "error", title="perturbations")
    for step in report.steps:
        recovery = "-" if step.recovery_s is None else f"{step.recovery_s:.2f}"
        steps.add_row(step.name, step.target, recovery, step.error)
    console.print(steps)
    for failure in report.failures():
        console.print(f"[red]FAILED[/red] {failure}")


def _print_status(net: Devnet, json_out: bool) -> None:
    status = net.status()

    def table() -> None:
        t = Table("validator", "rpc", "running", "height", "app hash", title=f"chain {status['chain_id']}")
        for v in status["validators"]:
            t.add_row(v["name"], v["rpc"], "yes" if v["running"] else "no", str(v["height"]), v["app_hash"][:16])
        console.print(t)
        if status["hub"]:
            console.print(f"hub {status['hub']}")
        if status.get("explorer"):
            console.print(f"explorer {status['explorer']}")
        for n in status["nodes"]:
            console.print(f"node {n['name']} {n['url']} {n['address']} running={'yes' if n['running'] else 'no'}")
        console.print(f"use it: haca --home {status['home']} … (e.g. haca query supply --home {status['home']})")

    emit(json_out, status, table)


@validator_app.command("init")
@cli_command
def validator_init(
    home: Annotated[Path, typer.Option("--home", help="validator home directory")],
    moniker: Annotated[str, typer.Option("--moniker")],
    json_out: JsonOption = False,
) -> None:
    """Create a validator's keys and config; prints what the genesis and peers need."""
    ident = init_validator(home, moniker)
    answer = {
        "moniker": moniker,
        "node_id": ident.node_id,
        "address": ident.address,
        "pub_key": ident.pub_key,
        "genesis": str(ValidatorHome(home).genesis),
        "config": str(ValidatorHome(home).config_toml),
    }
    emit(json_out, answer, None)


@validator_app.command("show")
@cli_command
def validator_show(home: Annotated[Path, typer.Option("--home")], json_out: JsonOption = False) -> None:
    """The validator's node id and consensus key."""
    ident = identity(ValidatorHome(home))
    emit(json_out, {"node_id": ident.node_id, "address": ident.address, "pub_key": ident.pub_key}, None)


@validator_app.command("run")
@cli_command
def validator_run(home: Annotated[Path, typer.Option("--home", help="validator home directory")]) -> None:
    """Run the HACA app and CometBFT together in the foreground until interrupted."""
    console.print(f"running validator at {home}; logs in {ValidatorHome(home).logs}")
    raise typer.Exit(run_validator(home))
