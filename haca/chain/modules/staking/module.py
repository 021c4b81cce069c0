"""The staking module: MsgBond / MsgUnbond, the unbonding queue (paid at its height, later while a
claim is pending), the validator set by stake (MsgCreateValidator / MsgEditValidator /
MsgLeaveValidator; powers from bonded stake, sent to CometBFT at the end of each block where they
changed), and CometBFT's duplicate-vote evidence: the validator is slashed and jailed for good
(power 0). Liveness: from each block's commit, a validator in the set that signed fewer than
`min_signed_bps` of the last `signed_blocks_window` blocks is jailed (power 0, not slashed) for
`downtime_jail_blocks`; then MsgUnjail brings it back."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from haca.chain.errors import InsufficientStake, InvalidMessage, InvalidQuery, NotFound, Unauthorized
from haca.chain.events import Event
from haca.chain.module import BlockContext, BlockResult, Invariant, Module, Query, ValidatorUpdate
from haca.chain.modules.staking.keeper import (
    BOND_PREFIX,
    BPS,
    PARAMS_KEY,
    STAKING_ACCOUNT,
    UNBONDING_OF_PREFIX,
    VALIDATOR_PREFIX,
    StakingKeeper,
    StakingParams,
)
from haca.chain.params import parse_params
from haca.chain.state import CachedState, ReadableState
from haca.chain.tx import Handler, TxContext
from haca.crypto.consensus import verify_possession
from haca.crypto.keys import normalize_address
from haca.types.staking import (
    MsgBond,
    MsgCreateValidator,
    MsgEditValidator,
    MsgLeaveValidator,
    MsgUnbond,
    MsgUnjail,
)

if TYPE_CHECKING:
    from haca.chain.genesis import AppGenesis

DUPLICATE_VOTE = 1  # tendermint.abci.MisbehaviorType.DUPLICATE_VOTE


def consensus_address(pub_key: bytes) -> bytes:
    """CometBFT's validator address: the first 20 bytes of sha256 of the ed25519 public key."""
    return hashlib.sha256(pub_key).digest()[:20]


class StakingModule(Module):
    name = "staking"

    def __init__(self, keeper: StakingKeeper) -> None:
        self.keeper = keeper

    def handlers(self) -> Mapping[type, Handler]:
        return {
            MsgBond: self._bond,
            MsgUnbond: self._unbond,
            MsgCreateValidator: self._create_validator,
            MsgEditValidator: self._edit_validator,
            MsgLeaveValidator: self._leave_validator,
            MsgUnjail: self._unjail,
        }

    def _create_validator(self, ctx: TxContext, msg: MsgCreateValidator) -> list[Event]:
        if self.keeper.tombstoned(ctx.state, ctx.signer):
            raise InvalidMessage(f"{ctx.signer} was jailed for a duplicate vote: it may not run a validator again")
        if self.keeper.operator_validator(ctx.state, ctx.signer) is not None:
            raise InvalidMessage(f"{ctx.signer} already operates a validator: edit it, or leave first")
        if not verify_possession(msg.pub_key, msg.possession, ctx.chain_id, ctx.signer):
            raise Unauthorized(
                "the consensus key's proof of possession does not verify for this signer and chain:"
                " it must be signed with the validator's own key (haca validator create does)"
            )
        address = consensus_address(msg.pub_key)
        if self.keeper.validator(ctx.state, address) is not None:
            raise InvalidMessage(f"consensus key of validator {address.hex()} is taken (keys are never reused)")
        if msg.self_bond:
            self.keeper.bond(ctx.state, ctx.signer, msg.self_bond)
        bonded, least = self.keeper.bonded(ctx.state, ctx.signer), self.keeper.params(ctx.state).min_validator_stake
        if bonded < least:
            raise InsufficientStake(f"{ctx.signer} has {bonded} bonded; a validator needs at least {least}")
        pub_key = base64.b64encode(msg.pub_key).decode()
        record = {"pub_key": pub_key, "operator": ctx.signer, "moniker": msg.moniker, "jailed": False, "power": 0}
        self.keeper.add_validator(ctx.state, address, record)
        attrs = {"validator": address.hex(), "operator": ctx.signer, "moniker": msg.moniker, "bonded": str(bonded)}
        return [Event("create_validator", attrs)]

    def _own_validator(self, ctx: TxContext) -> tuple[bytes, dict[str, Any]]:
        address = self.keeper.operator_validator(ctx.state, ctx.signer)
        record = self.keeper.validator(ctx.state, address) if address is not None else None
        if address is None or record is None:
            raise NotFound(f"{ctx.signer} operates no validator")
        return address, record

    def _edit_validator(self, ctx: TxContext, msg: MsgEditValidator) -> list[Event]:
        address, record = self._own_validator(ctx)
        self.keeper.set_validator(ctx.state, address, {**record, "moniker": msg.moniker})
        return [Event("edit_validator", {"validator": address.hex(), "moniker": msg.moniker})]

    def _leave_validator(self, ctx: TxContext, msg: MsgLeaveValidator) -> list[Event]:
        address, record = self._own_validator(ctx)
        until = int(record.get("jailed_until", 0))
        if record.get("jailed") and ctx.height < until:  # else leave + create with a new key skips the jail
            raise InvalidMessage(f"validator {address.hex()} is jailed until height {until}: serve it before leaving")
        self.keeper.set_validator(ctx.state, address, {**record, "left": True})
        self.keeper.remove_operator(ctx.state, ctx.signer)
        self.keeper.reset_liveness(ctx.state, address)
        return [Event("leave_validator", {"validator": address.hex(), "operator": ctx.signer})]

    def _unjail(self, ctx: TxContext, msg: MsgUnjail) -> list[Event]:
        address, record = self._own_validator(ctx)
        if not record.get("jailed"):
            raise InvalidMessage(f"validator {address.hex()} is not jailed")
        if self.keeper.tombstoned(ctx.state, ctx.signer):
            raise InvalidMessage(f"validator {address.hex()} was jailed for a duplicate vote: for good")
        until = int(record.get("jailed_until", 0))
        if ctx.height < until:
            raise InvalidMessage(f"validator {address.hex()} is jailed until height {until}; this is {ctx.height}")
        bonded, least = self.keeper.bonded(ctx.state, ctx.signer), self.keeper.params(ctx.state).min_validator_stake
        if bonded < least:
            raise InsufficientStake(f"{ctx.signer} has {bonded} bonded; a validator needs at least {least}")
        back = {k: v for k, v in record.items() if k != "jailed_until"} | {"jailed": False}
        self.keeper.set_validator(ctx.state, address, back)
        self.keeper.reset_liveness(ctx.state, address)  # judged afresh from here
        return [Event("unjail", {"validator": address.hex(), "operator": ctx.signer})]

    def _bond(self, ctx: TxContext, msg: MsgBond) -> list[Event]:
        self.keeper.bond(ctx.state, ctx.signer, msg.amount)
        bonded = self.keeper.bonded(ctx.state, ctx.signer)
        return [Event("bond", {"signer": ctx.signer, "amount": str(msg.amount), "bonded": str(bonded)})]

    def _unbond(self, ctx: TxContext, msg: MsgUnbond) -> list[Event]:
        release = self.keeper.unbond(ctx.state, ctx.signer, msg.amount, ctx.height)
        attrs = {"signer": ctx.signer, "amount": str(msg.amount), "release_height": str(release)}
        return [Event("unbond", attrs)]

    def queries(self) -> Mapping[str, Query]:
        return {
            "/staking/params": lambda s, d: (self.keeper.params(s).to_json(), [PARAMS_KEY]),
            "/staking/stake": self._query_stake,
            "/staking/validators": self._query_validators,
        }

    def _query_validators(self, state: ReadableState, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
        validators = self.keeper.validators(state)
        for v in validators:  # blocks counted, and missed in the current window
            v["liveness"] = self.keeper.liveness(state, bytes.fromhex(v["address"]))
        return {"validators": validators}, []

    def _query_stake(self, state: ReadableState, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
        try:
            address = normalize_address(data.decode())
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidQuery(f"/staking/stake takes an address: {exc}") from exc
        unbonding = self.keeper.unbonding(state, address)
        answer = {
            "address": address,
            "bonded": str(self.keeper.bonded(state, address)),
            "unbonding": [{"release_height": h, "amount": str(a)} for h, a in unbonding],
        }
        keys = [BOND_PREFIX + bytes.fromhex(address[2:])]
        keys += [UNBONDING_OF_PREFIX + bytes.fromhex(address[2:]) + h.to_bytes(8, "big") for h, _ in unbonding]
        return answer, keys

    def init_genesis(self, state: CachedState, genesis: AppGenesis) -> None:
        self.keeper.set_params(state, genesis.staking)
        for address, amount in genesis.bonds:
            self.keeper.bond_genesis(state, address, amount)
        for pub_key, operator in genesis.validators:
            record = {"pub_key": pub_key, "operator": operator, "moniker": "", "jailed": False}
            self.keeper.add_validator(state, consensus_address(base64.b64decode(pub_key)), record)
        self.keeper.power_changes(state)  # the genesis set's powers, by stake (InitChain answers them)

    def export_genesis(self, state: ReadableState) -> dict[str, Any]:
        return {"params": self.keeper.params(state).to_json(), "validators": self.keeper.validators(state)}

    def update_params(self, state: CachedState, changes: dict[str, Any]) -> dict[str, int]:
        before = self.keeper.params(state)
        params = parse_params(StakingParams, changes, before)
        self.keeper.set_params(state, params)
        if params.signed_blocks_window != before.signed_blocks_window:  # the window's indexes changed
            for v in self.keeper.validators(state):
                self.keeper.reset_liveness(state, bytes.fromhex(v["address"]))
        return params.to_json()

    def begin_block(self, ctx: BlockContext) -> BlockResult:
        result = BlockResult()
        for address, amount, postponed in self.keeper.release_unbonding(ctx.state, ctx.height):
            if postponed:
                attrs = {"address": address, "amount": str(amount), "release_height": str(postponed)}
                result.events.append(Event("unbonding_postponed", attrs))
            else:
                result.events.append(Event("unbonding_paid", {"address": address, "amount": str(amount)}))
        for evidence in ctx.misbehavior:
            if evidence.type == DUPLICATE_VOTE:
                self._double_sign(ctx, evidence.validator_address, evidence.height, result)
        self._liveness(ctx, result)
        return result

    def _liveness(self, ctx: BlockContext, result: BlockResult) -> None:
        """Count the previous block's signatures; jail who missed too many of the window."""
        if not ctx.votes:
            return
        params = self.keeper.params(ctx.state)
        window = params.signed_blocks_window
        may_miss = window - window * params.min_signed_bps // BPS
        for address, signed in ctx.votes:
            record = self.keeper.validator(ctx.state, address)
            if record is None or record.get("jailed") or record.get("left") or not record.get("power"):
                continue  # unknown here, or leaving the set already
            counter, missed = self.keeper.record_vote(ctx.state, address, signed, params)
            if counter >= window and missed > may_miss:
                until = ctx.height + params.downtime_jail_blocks
                self.keeper.set_validator(ctx.state, address, {**record, "jailed": True, "jailed_until": until})
                self.keeper.reset_liveness(ctx.state, address)
                attrs = {
                    "validator": address.hex(),
                    "operator": record["operator"],
                    "reason": "downtime",
                    "missed": str(missed),
                    "window": str(window),
                    "until": str(until),
                }
                result.events.append(Event("jail", attrs))

    def _double_sign(self, ctx: BlockContext, address: bytes, height: int, result: BlockResult) -> None:
        """Slash the validator's operator (burned) and remove it from the set, once."""
        record = self.keeper.validator(ctx.state, address)
        if record is None or record.get("double_signed"):
            return  # unknown to the app, or already punished for an earlier vote (a downtime jail is no shield)
        bps = self.keeper.params(ctx.state).double_sign_slash_bps
        slashed = self.keeper.slash(ctx.state, record["operator"], bps)
        self.keeper.burn(ctx.state, slashed)
        # jailed for good, the operator too; end_block sends its power 0 (when CometBFT still has it)
        self.keeper.set_validator(ctx.state, address, {**record, "jailed": True, "double_signed": True})
        self.keeper.tombstone(ctx.state, record["operator"])
        current = self.keeper.operator_validator(ctx.state, record["operator"])
        if current is not None and current != address:  # it left the one that signed twice for another
            other = self.keeper.validator(ctx.state, current)
            if other is not None:
                self.keeper.set_validator(ctx.state, current, {**other, "jailed": True})
        attrs = {
            "validator": address.hex(),
            "operator": record["operator"],
            "height": str(height),
            "slashed": str(slashed),
            "reason": "duplicate_vote",
        }
        result.events.append(Event("slash", attrs))

    def end_block(self, ctx: BlockContext) -> BlockResult:
        """The powers that changed in this block (bonds, unbonds, slashes, joins, leaves)."""
        result = BlockResult()
        for address, pub_key, power in self.keeper.power_changes(ctx.state):
            result.validator_updates.append(ValidatorUpdate("ed25519", base64.b64decode(pub_key), power))
            result.events.append(Event("validator_power", {"validator": address.hex(), "power": str(power)}))
        return result

    def genesis_validators(self, state: ReadableState) -> list[ValidatorUpdate]:
        """The set genesis gives (InitChain's answer): each validator with power, by address."""
        out = []
        for record in sorted(self.keeper.validators(state), key=lambda r: r["address"]):
            if record.get("power"):
                out.append(ValidatorUpdate("ed25519", base64.b64decode(record["pub_key"]), int(record["power"])))
        return out

    def invariants(self) -> Mapping[str, Invariant]:
        def stake_matches_module_account(state: ReadableState) -> str | None:
            held, owed = self.keeper.bank.balance(state, STAKING_ACCOUNT), self.keeper.total(state)
            return None if held == owed else f"staking account holds {held}, bonds and unbonding sum to {owed}"

        return {"stake_matches_module_account": stake_matches_module_account}


__all__ = ["VALIDATOR_PREFIX", "StakingModule", "consensus_address"]
