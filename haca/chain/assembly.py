"""Genesis for a network of several operators, each on its own machine (issue 24, part 2):

1. `haca network init` writes a draft: CometBFT's genesis with the chain id, the accounts and
   their balances, the governance authorities and the params — no validator yet;
2. each operator runs `haca validator init` and `haca validator gentx`: a `GenesisValidator`
   entry (its consensus key, peer address and bond) signed with its account key;
3. `haca network collect` checks every entry against the draft (signed by its operator, whose
   genesis balance pays the bond; enough for power; no key, operator or node twice), moves each
   bond from the operator's balance into the staking module, and writes the final genesis and the
   peer list every operator configures. The supply is the draft's: bonds only change hands.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from typing import Any

from haca.chain.genesis import AppGenesis, GenesisAccount, parse_app_genesis
from haca.chain.modules.staking.keeper import stake_power
from haca.crypto.consensus import verify_possession
from haca.crypto.keys import SignatureError
from haca.types.staking import GenesisValidator


class GenesisAssemblyError(ValueError):
    """An entry or a draft that cannot make a valid genesis; the message says which and why."""


def draft_genesis(template: dict[str, Any], chain_id: str, app: AppGenesis, genesis_time: str) -> dict[str, Any]:
    """CometBFT's genesis (`template`: what `cometbft init` writes) for `chain_id` with `app` as
    the app state, no validators yet."""
    parse_app_genesis(json.dumps(app.to_json()).encode())  # a draft that could never start is refused now
    return {
        **template,
        "genesis_time": genesis_time,
        "chain_id": chain_id,
        "initial_height": "1",
        "validators": [],
        "app_hash": "",
        "app_state": app.to_json(),
    }


def collect_genesis(
    draft: dict[str, Any], entries: list[tuple[GenesisValidator, bytes]]
) -> tuple[dict[str, Any], list[str]]:
    """The final genesis and the peer list (`node_id@host:port`, one per entry)."""
    app = parse_app_genesis(json.dumps(draft["app_state"]).encode())
    if not entries:
        raise GenesisAssemblyError("no genesis validator entries: a chain needs at least one validator")
    balances = {a.address: a.balance for a in app.accounts}
    bonds = dict(app.bonds)
    validators = list(app.validators)
    listed: list[dict[str, Any]] = []
    seen_keys = {key for key, _ in validators}
    seen_operators = {operator for _, operator in validators}
    seen_nodes: set[str] = set()
    staking = app.staking
    for entry, signature in entries:
        who = f"entry of {entry.moniker!r} ({entry.operator})"
        try:
            signer = entry.signer(signature)
        except SignatureError as exc:
            raise GenesisAssemblyError(f"{who}: bad signature: {exc}") from exc
        if signer != entry.operator:
            raise GenesisAssemblyError(f"{who}: signed by {signer}, not by its operator")
        if entry.chain_id != draft["chain_id"]:
            raise GenesisAssemblyError(f"{who}: for chain {entry.chain_id!r}, not {draft['chain_id']!r}")
        if not verify_possession(entry.pub_key, entry.possession, entry.chain_id, entry.operator):
            raise GenesisAssemblyError(f"{who}: its consensus key's proof of possession does not verify")
        pub_key = base64.b64encode(entry.pub_key).decode()
        if pub_key in seen_keys or entry.operator in seen_operators or entry.node_id in seen_nodes:
            raise GenesisAssemblyError(f"{who}: its consensus key, operator or node id is in another entry")
        seen_keys.add(pub_key)
        seen_operators.add(entry.operator)
        seen_nodes.add(entry.node_id)
        have = balances.get(entry.operator, 0)
        if entry.bond > have:
            raise GenesisAssemblyError(f"{who}: bonds {entry.bond}, but its genesis balance is {have}")
        if stake_power(entry.bond, staking) < 1:
            raise GenesisAssemblyError(
                f"{who}: a bond of {entry.bond} is below the minimum validator stake {staking.min_validator_stake}"
                f" or one power unit ({staking.power_unit})"
            )
        balances[entry.operator] = have - entry.bond
        bonds[entry.operator] = bonds.get(entry.operator, 0) + entry.bond
        validators.append((pub_key, entry.operator))
        listed.append(
            {
                "address": hashlib.sha256(entry.pub_key).digest()[:20].hex().upper(),
                "pub_key": {"type": "tendermint/PubKeyEd25519", "value": pub_key},
                "power": str(stake_power(bonds[entry.operator], staking)),
                "name": entry.moniker,
            }
        )
    final = dataclasses.replace(
        app,
        accounts=tuple(GenesisAccount(a.address, balances[a.address]) for a in app.accounts),
        bonds=tuple(sorted(bonds.items())),
        validators=tuple(validators),
    )
    if final.total_supply != app.total_supply:  # bonds only move balances
        raise GenesisAssemblyError("the bonds do not add up to what left the balances")
    app_state = final.to_json()
    parse_app_genesis(json.dumps(app_state).encode())
    genesis = {**draft, "validators": sorted(listed, key=lambda v: v["address"]), "app_state": app_state}
    return genesis, [entry.peer for entry, _ in entries]
