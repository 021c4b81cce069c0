"""The `haca` command."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from haca.cli.attestation import attestation_app
from haca.cli.chain import query_app, tx_app
from haca.cli.demo import demo
from haca.cli.devnet import devnet_app, validator_app
from haca.cli.enclave import enclave_app
from haca.cli.explorer import explorer
from haca.cli.gov import gov_app
from haca.cli.hub import hub_app
from haca.cli.inference import allowance_app, deposit, escrow, infer, node_app, receipt_app, verify, withdraw
from haca.cli.keys import app as keys_app
from haca.cli.llm import chat, completion
from haca.cli.model import model_app
from haca.cli.network import network_app
from haca.cli.staking import stake_app
from haca.cli.validators import validator_create  # noqa: F401  (adds create/edit/leave/list to validator_app)

app = typer.Typer(
    name="haca",
    help="HACA: verifiable AI inference, settled on CometBFT.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def root(
    home: Annotated[
        Path | None, typer.Option("--home", help="client home for every subcommand (env HACA_HOME)")
    ] = None,
) -> None:
    """HACA: verifiable AI inference, settled on CometBFT."""
    if home is not None:
        os.environ["HACA_HOME"] = str(home)


app.add_typer(keys_app, name="keys")
app.add_typer(tx_app, name="tx")
app.add_typer(query_app, name="query")
app.add_typer(devnet_app, name="devnet")
app.add_typer(validator_app, name="validator")
app.add_typer(network_app, name="network")
app.add_typer(model_app, name="model")
app.add_typer(hub_app, name="hub")
app.add_typer(node_app, name="node")
app.add_typer(receipt_app, name="receipt")
app.add_typer(allowance_app, name="allowance")
app.add_typer(stake_app, name="stake")
app.add_typer(gov_app, name="gov")
app.add_typer(attestation_app, name="attestation")
app.add_typer(enclave_app, name="enclave")
app.command("deposit")(deposit)
app.command("withdraw")(withdraw)
app.command("escrow")(escrow)
app.command("infer")(infer)
app.command("verify")(verify)
app.command("chat")(chat)
app.command("completion")(completion)
app.command("demo")(demo)
app.command("explorer")(explorer)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
