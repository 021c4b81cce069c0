"""bank: balances, total supply and the burned total."""
