"""staking state under prefix `staking/`.

    staking/params                                   -> params JSON
    staking/bond/<address:20>                        -> bonded amount
    staking/unbonding/<release:u64be><address:20>    -> amount paid back at that height
    staking/unbonding_of/<address:20><release:u64be> -> the same amount, listed per account
    staking/validator/<consensus address:20>         -> {"pub_key", "operator", "jailed", "moniker",
                                                         "power" (last sent to CometBFT), "left"} JSON
    staking/operator/<address:20>                    -> the consensus address of its validator
    staking/liveness/<consensus address:20>          -> {"counter", "missed"}: blocks seen in the
                                                         set, of which missed in the current window
    staking/missed/<consensus address:20><index:u32be> -> present: the block at that window index
                                                         was missed

A validator's voting power is its operator's bonded stake in `power_unit`s, among the
`max_validators` most powerful with at least `min_validator_stake` bonded (ties: the lower
consensus address first), and 0 once jailed or left. At the end of each block the powers that
changed go to CometBFT, which applies them two blocks later.

Bonded and unbonding tokens sit in the bank under STAKING_ACCOUNT, so the bank's supply invariant
covers them; the bonds plus the unbonding amounts equal that account's balance (invariants.py).
A slash takes from the bond first, then from unbonding amounts (unbonding does not escape a
fault); the slashed tokens stay in STAKING_ACCOUNT until the caller pays them out or burns them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from haca.chain.errors import InsufficientStake
from haca.chain.state import CachedState, ReadableState, get_int, set_int
from haca.chain.wiring import Hook, dependency
from haca.crypto.hashing import keccak256
from haca.types.encoding import canonical_json

PREFIX = b"staking/"
PARAMS_KEY = PREFIX + b"params"
BOND_PREFIX = PREFIX + b"bond/"
UNBONDING_PREFIX = PREFIX + b"unbonding/"
UNBONDING_OF_PREFIX = PREFIX + b"unbonding_of/"
VALIDATOR_PREFIX = PREFIX + b"validator/"
OPERATOR_PREFIX = PREFIX + b"operator/"
LIVENESS_PREFIX = PREFIX + b"liveness/"
MISSED_PREFIX = PREFIX + b"missed/"
TOMBSTONE_PREFIX = PREFIX + b"tombstone/"  # operators jailed for a duplicate vote: never a validator again
STAKING_ACCOUNT = "0x" + keccak256(b"haca/module/staking/bonded")[12:].hex()
BPS = 10_000
# CometBFT refuses a total voting power above MaxInt64 / 8: no validator gets more than that over
# the most validators a set may have.
MAX_VALIDATOR_POWER = (2**63 - 1) // 8 // 1000


@runtime_checkable
class Bank(Protocol):
    """What staking needs from the bank: moving, burning and minting (genesis bonds) tokens."""

    def send(self, state: CachedState, sender: str, recipient: str, amount: int) -> None: ...

    def burn(self, state: CachedState, holder: str, amount: int) -> None: ...

    def balance(self, state: ReadableState, address: str) -> int: ...

    def mint_genesis(self, state: CachedState, holder: str, amount: int) -> None: ...


@dataclass(frozen=True)
class StakingParams:
    MINIMUMS: ClassVar[dict[str, int]] = {
        "unbonding_period": 1,
        "power_unit": 1,
        "max_validators": 1,
        "signed_blocks_window": 1,
    }
    LIMITS: ClassVar[dict[str, int]] = {
        "unbonding_period": 1 << 32,
        "min_stake_vanilla": 10**30,
        "min_stake_tee": 10**30,
        "min_stake_zkml": 10**30,
        "double_sign_slash_bps": BPS,
        "power_unit": 10**40,
        "min_validator_stake": 10**40,
        "max_validators": 1000,
        "signed_blocks_window": 100_000,  # a window change forgets every missed-block key at once
        "min_signed_bps": BPS,
        "downtime_jail_blocks": 1 << 32,
    }

    unbonding_period: int = 600  # blocks between MsgUnbond and the payout (>= claim window + deadline)
    min_stake_vanilla: int = 0  # a node serving a mode must keep at least this bonded
    min_stake_tee: int = 0
    min_stake_zkml: int = 0
    double_sign_slash_bps: int = 500  # share of a validator's stake burned for a duplicate vote
    power_unit: int = 10**18  # bonded stake per unit of voting power
    min_validator_stake: int = 10**18  # a validator with less bonded has no power
    max_validators: int = 100  # the set: this many most powerful
    # Liveness: a validator that signed fewer than `min_signed_bps` of the last
    # `signed_blocks_window` blocks is jailed (power 0) for `downtime_jail_blocks`, then may unjail.
    signed_blocks_window: int = 1000
    min_signed_bps: int = 5000
    downtime_jail_blocks: int = 600

    def min_stake(self, modes: Iterable[str]) -> int:
        """The stake a node serving `modes` needs: the highest of their minimums."""
        return max((int(getattr(self, f"min_stake_{mode}", 0)) for mode in modes), default=0)

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def stake_power(bonded: int, params: StakingParams) -> int:
    """The voting power a bond gives: in `power_unit`s, 0 below `min_validator_stake`, at most
    MAX_VALIDATOR_POWER (the set's top-N cut aside). Genesis assembly uses it too."""
    if bonded < params.min_validator_stake:
        return 0
    return min(bonded // params.power_unit, MAX_VALIDATOR_POWER)


def _addr(address: str) -> bytes:
    return bytes.fromhex(address[2:])


class StakingKeeper:
    def __init__(self, bank: Bank) -> None:
        self.bank = dependency("StakingKeeper", "bank", bank, Bank)
        # The height up to which `address` must stay slashable (its latest pending claim's deadline;
        # 0 for none): the inference keeper's, which owns claims and needs this keeper to be built.
        self.slashable_until: Hook[[ReadableState, str], int] = Hook("staking.slashable_until")

    # --- params ---------------------------------------------------------------------------------

    def params(self, state: ReadableState) -> StakingParams:
        raw = state.get(PARAMS_KEY)
        return StakingParams(**json.loads(raw)) if raw else StakingParams()

    def set_params(self, state: CachedState, params: StakingParams) -> None:
        state.set(PARAMS_KEY, canonical_json(params.to_json()))

    # --- bonds ----------------------------------------------------------------------------------

    def bonded(self, state: ReadableState, address: str) -> int:
        return get_int(state, BOND_PREFIX + _addr(address))

    def _set_bonded(self, state: CachedState, address: str, amount: int) -> None:
        if amount:
            set_int(state, BOND_PREFIX + _addr(address), amount)
        else:
            state.delete(BOND_PREFIX + _addr(address))

    def bond(self, state: CachedState, address: str, amount: int) -> None:
        self.bank.send(state, address, STAKING_ACCOUNT, amount)
        self._set_bonded(state, address, self.bonded(state, address) + amount)

    def bond_genesis(self, state: CachedState, address: str, amount: int) -> None:
        """A bond the genesis file names: its tokens are minted straight into STAKING_ACCOUNT."""
        self.bank.mint_genesis(state, STAKING_ACCOUNT, amount)
        self._set_bonded(state, address, self.bonded(state, address) + amount)

    def unbond(self, state: CachedState, address: str, amount: int, height: int) -> int:
        have = self.bonded(state, address)
        if amount > have:
            raise InsufficientStake(f"{address} has {have} bonded; cannot unbond {amount}")
        self._set_bonded(state, address, have - amount)
        release = height + self.params(state).unbonding_period
        self._add_unbonding(state, address, release, amount)
        return release

    def _add_unbonding(self, state: CachedState, address: str, release: int, amount: int) -> None:
        key = UNBONDING_PREFIX + release.to_bytes(8, "big") + _addr(address)
        set_int(state, key, get_int(state, key) + amount)
        listed = UNBONDING_OF_PREFIX + _addr(address) + release.to_bytes(8, "big")
        set_int(state, listed, get_int(state, listed) + amount)

    def _drop_unbonding(self, state: CachedState, address: str, release: int) -> None:
        state.delete(UNBONDING_PREFIX + release.to_bytes(8, "big") + _addr(address))
        state.delete(UNBONDING_OF_PREFIX + _addr(address) + release.to_bytes(8, "big"))

    def unbonding(self, state: ReadableState, address: str) -> list[tuple[int, int]]:
        """(release height, amount) of the account's unbonding stake, earliest first."""
        prefix = UNBONDING_OF_PREFIX + _addr(address)
        return [(int.from_bytes(k[len(prefix) :], "big"), int(v)) for k, v in state.iter_prefix(prefix)]

    def release_unbonding(self, state: CachedState, height: int) -> list[tuple[str, int, int]]:
        """Pay back the stake due at `height` (found by its height prefix), except an account's
        whose claims are still pending: its payout moves to just after their last deadline.
        Returns (address, amount, postponed-to height or 0)."""
        prefix = UNBONDING_PREFIX + height.to_bytes(8, "big")
        due = [("0x" + k[len(prefix) :].hex(), int(v)) for k, v in state.iter_prefix(prefix)]
        done = []
        for address, amount in due:
            self._drop_unbonding(state, address, height)
            until = self.slashable_until(state, address)
            if until >= height:
                self._add_unbonding(state, address, until + 1, amount)
                done.append((address, amount, until + 1))
                continue
            self.bank.send(state, STAKING_ACCOUNT, address, amount)
            done.append((address, amount, 0))
        return done

    def stake(self, state: ReadableState, address: str) -> int:
        """Everything of the account's that a fault can be slashed from: bonded plus unbonding."""
        return self.bonded(state, address) + sum(amount for _, amount in self.unbonding(state, address))

    def total(self, state: ReadableState) -> int:
        bonded = sum(int(v) for _, v in state.iter_prefix(BOND_PREFIX))
        return bonded + sum(int(v) for _, v in state.iter_prefix(UNBONDING_OF_PREFIX))

    def require_stake(self, state: ReadableState, address: str, modes: Iterable[str]) -> None:
        modes = tuple(modes)
        need = self.params(state).min_stake(modes)
        have = self.bonded(state, address)
        if have < need:
            raise InsufficientStake(
                f"{address} has {have} bonded; serving {sorted(modes)} needs at least {need}: bond more (staking/bond)"
            )

    # --- slashing -------------------------------------------------------------------------------

    def slash(self, state: CachedState, address: str, bps: int) -> int:
        """Take `bps` of the account's stake (bond first, then unbonding, latest release first);
        the tokens stay in STAKING_ACCOUNT for `pay_out` / `burn`. Returns the amount taken."""
        amount = self.stake(state, address) * bps // BPS
        left = amount
        bonded = self.bonded(state, address)
        take = min(bonded, left)
        self._set_bonded(state, address, bonded - take)
        left -= take
        for release, held in reversed(self.unbonding(state, address)):
            if not left:
                break
            take = min(held, left)
            self._drop_unbonding(state, address, release)
            if held - take:
                self._add_unbonding(state, address, release, held - take)
            left -= take
        return amount - left

    def pay_out(self, state: CachedState, recipient: str, amount: int) -> None:
        if amount:
            self.bank.send(state, STAKING_ACCOUNT, recipient, amount)

    def burn(self, state: CachedState, amount: int) -> None:
        if amount:
            self.bank.burn(state, STAKING_ACCOUNT, amount)

    # --- validators -----------------------------------------------------------------------------

    def set_validator(self, state: CachedState, consensus_address: bytes, record: dict[str, Any]) -> None:
        state.set(VALIDATOR_PREFIX + consensus_address, canonical_json(record))

    def validator(self, state: ReadableState, consensus_address: bytes) -> dict[str, Any] | None:
        raw = state.get(VALIDATOR_PREFIX + consensus_address)
        return dict(json.loads(raw)) if raw else None

    def operator_validator(self, state: ReadableState, operator: str) -> bytes | None:
        """The consensus address of the validator `operator` runs (None: none, or it left)."""
        return state.get(OPERATOR_PREFIX + _addr(operator))

    def add_validator(self, state: CachedState, consensus_address: bytes, record: dict[str, Any]) -> None:
        self.set_validator(state, consensus_address, record)
        state.set(OPERATOR_PREFIX + _addr(record["operator"]), consensus_address)

    def remove_operator(self, state: CachedState, operator: str) -> None:
        state.delete(OPERATOR_PREFIX + _addr(operator))

    def power(self, state: ReadableState, record: dict[str, Any], params: StakingParams) -> int:
        """What a validator's power would be by its operator's stake alone (before the top-N cut)."""
        if record.get("jailed") or record.get("left"):
            return 0
        return stake_power(self.bonded(state, record["operator"]), params)

    def power_changes(self, state: CachedState) -> list[tuple[bytes, str, int]]:
        """Each validator's power now (the top `max_validators` by power, ties by address), stored
        where it changed: (consensus address, base64 public key, new power) for those, by address.
        CometBFT is told only what it can apply: no removal of a validator it does not have (one
        already at 0), no power above its limit, and never an empty set (the changes wait, and the
        set stays as it is, until someone has the stake to be in it)."""
        params = self.params(state)
        records = [(k[len(VALIDATOR_PREFIX) :], dict(json.loads(v))) for k, v in state.iter_prefix(VALIDATOR_PREFIX)]
        powers = {address: self.power(state, record, params) for address, record in records}
        ranked = sorted((a for a, p in powers.items() if p > 0), key=lambda a: (-powers[a], a))
        in_set = set(ranked[: params.max_validators])
        if records and not in_set:
            return []
        changes = []
        for address, record in sorted(records, key=lambda item: item[0]):
            want = powers[address] if address in in_set else 0
            have = record.get("power")
            if have is None:  # a genesis record from before powers were kept: CometBFT has it, unless jailed
                have = 0 if record.get("jailed") else -1  # -1: its power there is not known here: send it
            if "power" not in record or want != record["power"]:
                self.set_validator(state, address, {**record, "power": want})
            if want != have:
                changes.append((address, str(record["pub_key"]), want))
        return changes

    # --- liveness -------------------------------------------------------------------------------

    def record_vote(self, state: CachedState, address: bytes, signed: bool, params: StakingParams) -> tuple[int, int]:
        """Count one block of validator `address` (signed or missed) in its sliding window, as a
        missed-bit per window index; (blocks counted, missed in the window)."""
        raw = state.get(LIVENESS_PREFIX + address)
        live = json.loads(raw) if raw else {"counter": 0, "missed": 0}
        counter, missed = int(live["counter"]), int(live["missed"])
        bit = MISSED_PREFIX + address + (counter % params.signed_blocks_window).to_bytes(4, "big")
        was_missed = state.get(bit) is not None
        if was_missed and signed:
            state.delete(bit)
            missed -= 1
        elif not was_missed and not signed:
            state.set(bit, b"1")
            missed += 1
        counter += 1
        state.set(LIVENESS_PREFIX + address, canonical_json({"counter": counter, "missed": missed}))
        return counter, missed

    def reset_liveness(self, state: CachedState, address: bytes) -> None:
        """Forget a validator's window (jailed, or back from jail: it is judged afresh)."""
        for key, _ in list(state.iter_prefix(MISSED_PREFIX + address)):
            state.delete(key)
        state.delete(LIVENESS_PREFIX + address)

    def liveness(self, state: ReadableState, address: bytes) -> dict[str, int]:
        raw = state.get(LIVENESS_PREFIX + address)
        return {k: int(v) for k, v in json.loads(raw).items()} if raw else {"counter": 0, "missed": 0}

    def tombstone(self, state: CachedState, operator: str) -> None:
        state.set(TOMBSTONE_PREFIX + _addr(operator), b"1")

    def tombstoned(self, state: ReadableState, operator: str) -> bool:
        return state.get(TOMBSTONE_PREFIX + _addr(operator)) is not None

    def validators(self, state: ReadableState) -> list[dict[str, Any]]:
        return [
            {"address": k[len(VALIDATOR_PREFIX) :].hex(), **json.loads(v)}
            for k, v in state.iter_prefix(VALIDATOR_PREFIX)
        ]
