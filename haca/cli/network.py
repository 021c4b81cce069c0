"""`haca network init|collect`: a genesis made by several operators (haca.chain.assembly); each
operator's part is `haca validator init` + `haca validator gentx`."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from haca.chain.assembly import collect_genesis, draft_genesis
from haca.chain.genesis import AppGenesis, GenesisAccount
from haca.chain.home import ValidatorHome
from haca.chain.modules.staking.keeper import StakingParams
from haca.chain.supervisor import init_validator
from haca.cli.common import JsonOption, cli_command, console, emit
from haca.crypto.keys import normalize_address
from haca.types import fields
from haca.types.staking import GenesisValidator

network_app = typer.Typer(help="Make a new network's genesis with other operators.", no_args_is_help=True)


def _account(text: str) -> GenesisAccount:
    address, sep, amount = text.partition("=")
    if not sep or not amount.isdigit():
        raise typer.BadParameter(f"{text!r}: expected ADDRESS=AMOUNT")
    return GenesisAccount(normalize_address(address), int(amount))


@network_app.command("init")
@cli_command
def network_init(
    chain_id: Annotated[str, typer.Option("--chain-id")],
    out: Annotated[Path, typer.Option("--out", help="where to write the draft genesis")],
    account: Annotated[list[str], typer.Option("--account", help="ADDRESS=AMOUNT (repeat)")],
    authority: Annotated[list[str], typer.Option("--authority", help="a governance authority (repeat)")],
    power_unit: Annotated[int, typer.Option("--power-unit", min=1, help="bonded stake per unit of power")] = 10**18,
    min_validator_stake: Annotated[int, typer.Option("--min-validator-stake", min=1)] = 10**18,
    max_validators: Annotated[int, typer.Option("--max-validators", min=1)] = 100,
    json_out: JsonOption = False,
) -> None:
    """Write a draft genesis: the chain id, the accounts, the authorities and the staking params;
    operators then sign their entries against it (haca validator gentx)."""
    accounts = tuple(_account(a) for a in account)
    staking = StakingParams(
        power_unit=power_unit, min_validator_stake=min_validator_stake, max_validators=max_validators
    )
    app = AppGenesis(
        accounts=accounts, authorities=tuple(sorted(normalize_address(a) for a in authority)), staking=staking
    )
    with tempfile.TemporaryDirectory() as scratch:  # CometBFT's own template (consensus params)
        init_validator(Path(scratch), "template")
        template = json.loads(ValidatorHome(Path(scratch)).genesis.read_text())
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    draft = draft_genesis(template, chain_id, app, now)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(draft, indent=2))
    answer = {"draft": str(out), "chain_id": chain_id, "accounts": len(accounts), "supply": str(app.total_supply)}
    emit(json_out, answer, lambda: console.print(f"draft genesis for {chain_id} written to {out}"))


@network_app.command("collect")
@cli_command
def network_collect(
    draft: Annotated[Path, typer.Option("--draft", help="the draft from haca network init")],
    gentx: Annotated[list[Path], typer.Option("--gentx", help="an operator's signed entry (repeat)")],
    out: Annotated[Path, typer.Option("--out", help="where to write the final genesis")],
    json_out: JsonOption = False,
) -> None:
    """Check every operator's entry and write the final genesis; print the peer list (each
    operator copies the genesis into its validator home and sets persistent_peers)."""
    entries = []
    for path in gentx:
        doc = json.loads(path.read_text())
        try:
            entry = GenesisValidator.from_json(doc.get("entry"))
            signature = fields.hex_bytes(doc.get("signature"), "signature", 65)
        except (ValueError, AttributeError) as exc:
            raise typer.BadParameter(f"{path}: not a genesis validator entry: {exc}") from exc
        entries.append((entry, signature))
    genesis, peers = collect_genesis(json.loads(draft.read_text()), entries)
    out.write_text(json.dumps(genesis, indent=2))
    answer = {"genesis": str(out), "validators": len(entries), "persistent_peers": ",".join(peers)}
    emit(json_out, answer, lambda: console.print(f"genesis written to {out}; persistent_peers = {','.join(peers)}"))
