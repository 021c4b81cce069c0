"""`haca tx` and `haca query`: talk to the chain through CometBFT RPC."""

from __future__ import annotations

from typing import Annotated, Any

import typer

import haca.types.messages  # noqa: F401  (registers message types)
from haca.cli.common import HomeOption, JsonOption, cli_command, console, emit, keystore, load_config
from haca.client.chain import ChainClient
from haca.client.config import connect
from haca.client.errors import NotFound, RpcError
from haca.client.rpc import b64
from haca.crypto.keys import normalize_address
from haca.types.bank import MsgSend

tx_app = typer.Typer(help="Sign and send transactions.", no_args_is_help=True)
query_app = typer.Typer(help="Query chain state.", no_args_is_help=True)


def _client(home: HomeOption) -> tuple[ChainClient, Any]:
    _, config = load_config(home)
    return connect(config), config


@tx_app.command("send")
@cli_command
def send(
    to: Annotated[str, typer.Option("--to", help="recipient address or key name")],
    amount: Annotated[int, typer.Option("--amount", min=1, help="base units")],
    from_: Annotated[str, typer.Option("--from", help="key name or address (default: the home's default key)")] = "",
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="wait until committed")] = True,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Transfer AMOUNT base units to an address; the tx fee is burned."""
    client, config = _client(home)
    sender = keystore(home).get(from_ or config.default_key)
    result = client.send_msgs(sender.key, (MsgSend(_address_or_key(to, home), amount),), wait=wait)
    if isinstance(result, str):
        emit(json_out, {"hash": result}, lambda: console.print(f"submitted {result}"))
        return
    fee = next(
        (a["value"] for e in result.events if e["type"] == "tx" for a in e["attributes"] if a["key"] == "fee"), "0"
    )
    answer = {"hash": result.hash, "height": result.height, "code": result.code, "fee_burned": int(fee)}
    emit(
        json_out,
        answer,
        lambda: console.print(
            f"sent {amount} {config.denom} in block {result.height}: {result.hash} (fee {fee} burned)"
        ),
    )


@query_app.command("balance")
@cli_command
def balance(
    address: str,
    prove: Annotated[bool, typer.Option("--prove", help="verify a Merkle proof against the signed header")] = False,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Balance of ADDRESS (or a key name)."""
    client, config = _client(home)
    address = _address_or_key(address, home)
    amount = client.proven_balance(address) if prove else client.balance(address)
    emit(
        json_out,
        {"address": address, "denom": config.denom, "balance": amount, "proven": prove},
        lambda: console.print(f"{amount} {config.denom}" + (" (proof verified)" if prove else "")),
    )


@query_app.command("supply")
@cli_command
def supply(home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Circulating supply and the burned total."""
    client, _ = _client(home)
    s = client.supply()
    emit(json_out, s, lambda: console.print(f"total {s['total']} {s['denom']}, burned {s['burned']} {s['denom']}"))


@query_app.command("account")
@cli_command
def account(address: str, home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Nonce and balance of ADDRESS (or a key name)."""
    client, _ = _client(home)
    address = _address_or_key(address, home)
    answer = {"address": address, "nonce": client.nonce(address), "balance": client.balance(address)}
    emit(json_out, answer, lambda: console.print(answer))


@query_app.command("tx")
@cli_command
def query_tx(
    tx_hash: Annotated[str, typer.Argument(metavar="HASH")], home: HomeOption = None, json_out: JsonOption = False
) -> None:
    """A committed tx: height, result code, log, events, and the tx itself."""
    client, _ = _client(home)
    try:
        found = client.rpc.tx(tx_hash)
    except RpcError as exc:
        raise NotFound(f"tx {tx_hash} not found: {exc}") from exc
    except ValueError as exc:
        raise NotFound(f"{tx_hash!r} is not a tx hash") from exc
    result = found["tx_result"]
    answer = {
        "hash": found["hash"],
        "height": int(found["height"]),
        "code": int(result.get("code", 0)),
        "log": result.get("log", ""),
        "events": [
            {"type": e["type"], "attributes": {a["key"]: a["value"] for a in e["attributes"]}}
            for e in result.get("events", [])
        ],
        "tx": b64(found["tx"]).decode(errors="replace"),
    }
    emit(json_out, answer, None)


def _address_or_key(value: str, home: HomeOption) -> str:
    try:
        return normalize_address(value)
    except ValueError:
        return keystore(home).get(value).address
