"""`haca demo`: start a 4-validator devnet and run the main job end to end, saying what happened."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

import haca.types.messages  # noqa: F401  (registers message types)
from haca.cli.common import HomeOption, cli_command, client_home, console
from haca.client.chain import ChainClient
from haca.client.config import ClientConfig, KeyStore, connect
from haca.devnet.network import Devnet, up
from haca.types.bank import MsgSend


@cli_command
def demo(
    home: HomeOption = None,
    keep: Annotated[bool, typer.Option("--keep", help="leave the network running afterwards")] = False,
    validators: Annotated[int, typer.Option("--validators", min=1)] = 4,
) -> None:
    """Start a local devnet, send transfers, verify state proofs, show the fees burned."""
    home_dir = client_home(home)
    with console.status(f"starting a {validators}-validator devnet in {home_dir}…"):
        net = up(home_dir, validators)
    status = net.status()
    console.print(f"[bold]1.[/bold] devnet [cyan]{status['chain_id']}[/cyan] is up:")
    for v in status["validators"]:
        console.print(f"   {v['name']}  {v['rpc']}  height {v['height']}  app hash {v['app_hash'][:16]}…")
    config = ClientConfig.load(home_dir)
    keys = KeyStore(home_dir)
    client = connect(config)
    try:
        _transfers(client, keys, config.denom)
    finally:
        client.close()
        if keep:
            h = f"haca --home {home_dir}"
            console.print(
                f"\nThe network keeps running. Try:\n  {h} query supply\n  {h} devnet status\n"
                f"  {h} tx send --to {keys.get('dev2').address} --amount 5\n  {h} keys list\n"
                f"Stop it with: {h} devnet down"
            )
        else:
            Devnet(home_dir).stop()
            console.print("\ndevnet stopped (its data stays in place; `make demo` again resumes it).")


def _transfers(client: ChainClient, keys: KeyStore, denom: str) -> None:
    before = client.supply()
    console.print(f"[bold]2.[/bold] supply {before['total']} {denom}, burned so far {before['burned']} {denom}")
    senders = [keys.get(f"dev{i}") for i in range(3)]
    recipient = keys.get("dev9")
    table = Table("from", "to", "amount", "block", "fee burned", "tx hash", title="3. transfers, each signed EIP-712")
    start_balance = client.balance(recipient.address)
    for i, sender in enumerate(senders):
        amount = 1_000 * (i + 1)
        outcome = client.send_msgs(sender.key, (MsgSend(recipient.address, amount),))
        assert not isinstance(outcome, str)
        fee = next(
            a["value"] for e in outcome.events if e["type"] == "burn" for a in e["attributes"] if a["key"] == "amount"
        )
        table.add_row(sender.name, recipient.name, str(amount), str(outcome.height), fee, outcome.hash[:16] + "…")
    console.print(table)
    proven = client.proven_balance(recipient.address)
    console.print(
        f"[bold]4.[/bold] {recipient.name} balance {proven} {denom} (+{proven - start_balance}); "
        "Merkle proof verified against the app hash in the next signed header"
    )
    after = client.supply()
    burned = after["burned"] - before["burned"]
    console.print(
        f"[bold]5.[/bold] supply {after['total']} {denom}: fell by {before['total'] - after['total']}, "
        f"burned {burned} {denom} in tx fees; supply + burned = {after['total'] + after['burned']} "
        "(unchanged since genesis)"
    )
