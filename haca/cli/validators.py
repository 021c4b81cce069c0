"""`haca validator create|edit|leave|list`: join, rename and leave the validator set by stake (the
operator's account signs; the consensus key comes from the validator's home)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

import haca.types.messages  # noqa: F401  (registers message types)
from haca.chain.home import ValidatorHome
from haca.chain.supervisor import configure_state_sync, identity
from haca.cli.common import HomeOption, JsonOption, cli_command, client_home, console, emit, keystore, send_msg
from haca.cli.devnet import validator_app
from haca.client.config import ClientConfig, connect
from haca.crypto.consensus import consensus_seed, sign_possession
from haca.types.staking import (
    GenesisValidator,
    MsgCreateValidator,
    MsgEditValidator,
    MsgLeaveValidator,
    MsgUnjail,
)

KeyOption = Annotated[str | None, typer.Option("--from", help="the operator's key (default: the home's default key)")]


def _possession(validator_home: Path, chain_id: str, operator: str) -> tuple[bytes, bytes]:
    """The validator's consensus public key and its proof of possession for `operator` on `chain_id`."""
    key = json.loads((ValidatorHome(validator_home).cometbft / "config" / "priv_validator_key.json").read_text())
    return sign_possession(consensus_seed(key), chain_id, operator)


def _send(home: Path | None, from_: str | None, msg: Any) -> dict[str, Any]:
    return send_msg(home, from_, msg, lambda chain, signer: {"operator": signer})


@validator_app.command("create")
@cli_command
def validator_create(
    validator_home: Annotated[Path, typer.Option("--validator-home", help="the validator's home (its consensus key)")],
    moniker: Annotated[str, typer.Option("--moniker")],
    self_bond: Annotated[int, typer.Option("--self-bond", min=0, help="bond this much more first (base units)")] = 0,
    from_: KeyOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Make your account the operator of the validator at --validator-home: its power is your
    bonded stake (in the chain's power units); it joins the set two blocks after this tx when that
    puts it among the most powerful, with at least the minimum stake."""

    def msg(chain_id: str, operator: str) -> MsgCreateValidator:
        pub_key, possession = _possession(validator_home, chain_id, operator)  # signed for this operator
        return MsgCreateValidator(pub_key, moniker, self_bond, possession)

    answer = _send(home, from_, msg)
    emit(json_out, answer, lambda: console.print(f"validator {moniker} created at height {answer['height']}"))


@validator_app.command("edit")
@cli_command
def validator_edit(
    moniker: Annotated[str, typer.Option("--moniker")],
    from_: KeyOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Rename your validator."""
    answer = _send(home, from_, MsgEditValidator(moniker))
    emit(json_out, answer, lambda: console.print(f"renamed to {moniker}"))


@validator_app.command("leave")
@cli_command
def validator_leave(from_: KeyOption = None, home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Take your validator out of the set (power 0 two blocks later); unbond with `haca stake unbond`."""
    answer = _send(home, from_, MsgLeaveValidator())
    emit(json_out, answer, lambda: console.print(f"left the set at height {answer['height']}"))


@validator_app.command("join")
@cli_command
def validator_join(
    validator_home: Annotated[Path, typer.Option("--validator-home", help="the new validator's (empty) home")],
    rpc: Annotated[
        str, typer.Option("--rpc", help="the chain's RPC endpoints, URL,URL (default: the client home's)")
    ] = "",
    back: Annotated[int, typer.Option("--back", min=1, help="trust a header this many blocks below the latest")] = 300,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Make the validator at --validator-home start from a snapshot instead of replaying from
    genesis: a header some blocks back is verified by the light client (from your client home's
    trust anchor) and set as CometBFT's state-sync trust height and hash. Then `haca validator run`."""
    config = ClientConfig.load(client_home(home))
    if rpc:
        config = dataclasses.replace(config, rpc=[u.strip() for u in rpc.split(",") if u.strip()])
    chain = connect(config)
    try:
        height = max(1, chain.verify_latest() - back)
        trust_hash = chain.verified_header_hash(height)
    finally:
        chain.close()
    configure_state_sync(ValidatorHome(validator_home), config.rpc, height, trust_hash, config.trusting_period)
    answer = {"trust_height": height, "trust_hash": trust_hash.hex().upper(), "rpc_servers": config.rpc}
    emit(json_out, answer, lambda: console.print(f"state sync from header {height}: run `haca validator run`"))


@validator_app.command("unjail")
@cli_command
def validator_unjail(from_: KeyOption = None, home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Bring your validator back after a downtime jail, once its jail time is served (its power
    returns two blocks later); a validator jailed for a duplicate vote stays jailed."""
    answer = _send(home, from_, MsgUnjail())
    emit(json_out, answer, lambda: console.print(f"unjailed at height {answer['height']}"))


@validator_app.command("list")
@cli_command
def validator_list(home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Every validator the chain knows: consensus address, operator, moniker, power, jailed (until
    when), left, and blocks missed in its current liveness window."""
    chain = connect(ClientConfig.load(client_home(home)))
    try:
        validators = chain.query("/staking/validators")["validators"]
    finally:
        chain.close()

    def table() -> None:
        out = Table("address", "operator", "moniker", "power", "status", "missed")
        for v in sorted(validators, key=lambda v: (-int(v.get("power") or 0), v["address"])):
            status = "jailed" if v.get("jailed") else "left" if v.get("left") else "active"
            if v.get("jailed_until"):
                status += f" until {v['jailed_until']}"
            live = v.get("liveness") or {}
            missed = f"{live.get('missed', 0)} of {live.get('counter', 0)}"
            out.add_row(v["address"], v["operator"], v.get("moniker", ""), str(v.get("power", "")), status, missed)
        console.print(out)

    emit(json_out, {"validators": validators}, table)


@validator_app.command("gentx")
@cli_command
def validator_gentx(
    validator_home: Annotated[
        Path, typer.Option("--validator-home", help="the validator's home (haca validator init)")
    ],
    draft: Annotated[Path, typer.Option("--draft", help="the draft genesis (haca network init)")],
    bond: Annotated[int, typer.Option("--bond", min=1, help="taken from your genesis balance (base units)")],
    p2p: Annotated[str, typer.Option("--p2p", help="host:port the other validators dial")],
    moniker: Annotated[str, typer.Option("--moniker")],
    out: Annotated[Path, typer.Option("--out", help="where to write the signed entry")],
    from_: KeyOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Sign your validator's entry for a new network's genesis (haca network collect takes it)."""
    ident = identity(ValidatorHome(validator_home))
    key = keystore(home).get(from_ or ClientConfig.load(client_home(home)).default_key).key
    chain_id = json.loads(draft.read_text())["chain_id"]
    pub_key, possession = _possession(validator_home, chain_id, key.address)
    entry = GenesisValidator(chain_id, key.address, pub_key, moniker, bond, ident.node_id, p2p, possession)
    GenesisValidator.from_json(entry.to_json())  # the same checks collect makes (node id, p2p, moniker)
    doc = {"entry": entry.to_json(), "signature": "0x" + entry.sign(key).hex()}
    out.write_text(json.dumps(doc, indent=2))
    emit(json_out, {"gentx": str(out), **entry.to_json()}, lambda: console.print(f"signed entry written to {out}"))
