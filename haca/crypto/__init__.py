"""Keys, EIP-712 signing and hashing. The bottom layer: imports nothing else from haca."""
