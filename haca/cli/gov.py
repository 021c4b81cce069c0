"""`haca gov authorities`, `haca gov update-params`: governance by the authorities named in genesis."""

from __future__ import annotations

from typing import Annotated

import typer

import haca.types.messages  # noqa: F401  (registers message types)
from haca.cli.common import HomeOption, JsonOption, cli_command, console, emit, keystore, load_config
from haca.client.chain import TxOutcome
from haca.client.config import connect
from haca.client.errors import HacaError
from haca.types.gov import MsgUpdateParams

gov_app = typer.Typer(help="Governance: params changed by the chain's authorities.", no_args_is_help=True)


@gov_app.command("authorities")
@cli_command
def authorities(home: HomeOption = None, json_out: JsonOption = False) -> None:
    """The accounts genesis names as governance authorities."""
    _, config = load_config(home)
    chain = connect(config)
    try:
        answer = chain.query("/gov/authorities")
    finally:
        chain.close()
    emit(json_out, answer, lambda: console.print("\n".join(answer["authorities"]) or "(none)"))


@gov_app.command("update-params")
@cli_command
def update_params(
    module: Annotated[str, typer.Option("--module", help="auth, inference or registry")],
    settings: Annotated[list[str], typer.Option("--set", help="NAME=VALUE (repeatable)")],
    from_: Annotated[str | None, typer.Option("--from", help="an authority's key (default: the home's)")] = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Change some of a module's params (signed by an authority; anyone else gets `unauthorized`)."""
    changes: dict[str, str] = {}
    for item in settings:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise HacaError(f"--set {item!r}: expected NAME=VALUE")
        changes[name.strip()] = value.strip()
    _, config = load_config(home)
    key = keystore(home).get(from_ or config.default_key).key
    chain = connect(config)
    try:
        outcome = chain.send_msgs(key, (MsgUpdateParams(module, changes),))
        params = chain.query(f"/{module}/params")
    finally:
        chain.close()
    height = outcome.height if isinstance(outcome, TxOutcome) else 0
    emit(json_out, {"module": module, "params": params, "height": height}, lambda: console.print(f"{module}: {params}"))
