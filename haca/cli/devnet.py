"""`haca devnet` (a local network) and `haca validator` (one validator of a real network)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from haca.chain.home import ValidatorHome
from haca.chain.supervisor import identity, init_validator, run_validator
from haca.cli.common import HomeOption, JsonOption, cli_command, client_home, console, emit
from haca.devnet.network import Devnet, up

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
