"""`haca stake`: bond and unbond stake (a node needs the minimum stake of its modes), and see it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

import haca.types.messages  # noqa: F401  (registers message types)
from haca.cli.common import HomeOption, JsonOption, cli_command, client_home, console, emit, keystore, send_msg
from haca.client.config import ClientConfig, connect
from haca.types.staking import MsgBond, MsgUnbond

stake_app = typer.Typer(help="Bond and unbond stake; see an account's stake.", no_args_is_help=True)
KeyOption = Annotated[str | None, typer.Option("--from", help="key name (default: the home's default key)")]


def _send(home: Path | None, from_: str | None, msg: Any) -> dict[str, Any]:
    return send_msg(home, from_, msg, lambda chain, signer: chain.query("/staking/stake", signer.encode()))


@stake_app.command("bond")
@cli_command
def bond(
    amount: Annotated[int, typer.Argument(min=1, help="base units")],
    from_: KeyOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Bond AMOUNT of your balance (slashable for your node's faults)."""
    answer = _send(home, from_, MsgBond(amount))
    emit(json_out, answer, lambda: console.print(f"bonded {amount}; {answer['bonded']} bonded now"))


@stake_app.command("unbond")
@cli_command
def unbond(
    amount: Annotated[int, typer.Argument(min=1, help="base units")],
    from_: KeyOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Start unbonding AMOUNT: paid back after the unbonding period (later while a claim against
    you is pending), slashable until then."""
    answer = _send(home, from_, MsgUnbond(amount))
    last = answer["unbonding"][-1] if answer["unbonding"] else {}
    emit(
        json_out,
        answer,
        lambda: console.print(f"unbonding {amount}: paid back at height {last.get('release_height')}"),
    )


@stake_app.command("show")
@cli_command
def show(
    address: Annotated[str | None, typer.Argument(help="address or key name (default: the home's default key)")] = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """An account's bonded and unbonding stake."""
    config = ClientConfig.load(client_home(home))
    target = (
        address if address and address.startswith("0x") else keystore(home).get(address or config.default_key).address
    )
    chain = connect(config)
    try:
        answer = chain.query("/staking/stake", target.lower().encode())
    finally:
        chain.close()
    emit(
        json_out,
        answer,
        lambda: console.print(f"{answer['address']}: {answer['bonded']} bonded, unbonding {answer['unbonding']}"),
    )
