"""staking: node and validator bonds, unbonding after a delay, minimum stakes per mode, slashing
(for claims and equivocation, by the inference module; for duplicate votes, here)."""
