"""bank state under prefix `bank/`: balances, circulating supply, burned total, denom.

Invariant: supply == sum of balances held by all modules' accounts; supply + burned == genesis supply.
"""

from __future__ import annotations

from haca.chain.errors import InsufficientFunds
from haca.chain.state import CachedState, ReadableState, get_int, set_int

PREFIX = b"bank/"
BALANCE_PREFIX = PREFIX + b"balance/"
SUPPLY_KEY = PREFIX + b"supply"
BURNED_KEY = PREFIX + b"burned"
DENOM_KEY = PREFIX + b"denom"


def balance_key(address: str) -> bytes:
    return BALANCE_PREFIX + bytes.fromhex(address[2:])


class BankKeeper:
    def __init__(self, module_accounts: frozenset[str]) -> None:
        # Accounts whose balance a module accounts for (e.g. the inference escrow): no transfer to them.
        if not isinstance(module_accounts, frozenset):
            raise TypeError(f"BankKeeper needs 'module_accounts': a frozenset, got {type(module_accounts).__name__}")
        self.module_accounts = module_accounts

    def balance(self, state: ReadableState, address: str) -> int:
        return get_int(state, balance_key(address))

    def supply(self, state: ReadableState) -> int:
        return get_int(state, SUPPLY_KEY)

    def burned(self, state: ReadableState) -> int:
        return get_int(state, BURNED_KEY)

    def denom(self, state: ReadableState) -> str:
        return (state.get(DENOM_KEY) or b"opg").decode()

    def balances(self, state: ReadableState) -> list[tuple[str, int]]:
        return [("0x" + k[len(BALANCE_PREFIX) :].hex(), int(v)) for k, v in state.iter_prefix(BALANCE_PREFIX)]

    def send(self, state: CachedState, sender: str, recipient: str, amount: int) -> None:
        self._debit(state, sender, amount)
        set_int(state, balance_key(recipient), self.balance(state, recipient) + amount)

    def burn(self, state: CachedState, holder: str, amount: int) -> None:
        """Destroy `amount` from `holder`: supply falls, the burned total rises."""
        self._debit(state, holder, amount)
        set_int(state, SUPPLY_KEY, self.supply(state) - amount)
        set_int(state, BURNED_KEY, self.burned(state) + amount)

    def mint_genesis(self, state: CachedState, holder: str, amount: int) -> None:
        set_int(state, balance_key(holder), self.balance(state, holder) + amount)
        set_int(state, SUPPLY_KEY, self.supply(state) + amount)

    def set_denom(self, state: CachedState, denom: str) -> None:
        state.set(DENOM_KEY, denom.encode())

    def _debit(self, state: CachedState, holder: str, amount: int) -> None:
        have = self.balance(state, holder)
        if have < amount:
            raise InsufficientFunds(f"{holder} has {have} {self.denom(state)}, needs {amount}")
        set_int(state, balance_key(holder), have - amount)
