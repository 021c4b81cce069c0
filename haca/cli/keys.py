"""`haca keys`: named secp256k1 keys in the client home."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from haca.cli.common import HomeOption, JsonOption, cli_command, console, emit, keystore
from haca.devnet.accounts import dev_keys

app = typer.Typer(help="Manage keys (secp256k1, Ethereum addresses).", no_args_is_help=True)


@app.command("add")
@cli_command
def add(name: str, home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Create a new key named NAME."""
    stored = keystore(home).add(name)
    emit(
        json_out,
        {"name": stored.name, "address": stored.address},
        lambda: console.print(f"added key [bold]{stored.name}[/bold] {stored.address}"),
    )


@app.command("list")
@cli_command
def list_keys(
    home: HomeOption = None,
    devnet: Annotated[bool, typer.Option("--devnet", help="list the deterministic devnet keys, with secrets")] = False,
    json_out: JsonOption = False,
) -> None:
    """List keys (names and addresses)."""
    if devnet:
        rows = [{"name": n, "address": k.address, "private_key": k.hex} for n, k in dev_keys()]
    else:
        rows = [{"name": s.name, "address": s.address} for s in keystore(home).list()]

    def table() -> None:
        t = Table("name", "address", *(["private key"] if devnet else []))
        for row in rows:
            t.add_row(*row.values())
        console.print(t)

    emit(json_out, rows, table)


@app.command("show")
@cli_command
def show(name: str, home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Show one key's address."""
    stored = keystore(home).get(name)
    emit(json_out, {"name": stored.name, "address": stored.address}, lambda: console.print(stored.address))
