"""Evidence that an inference happened as a receipt says: receipt signatures, and (next) TEE
attestations and EZKL proofs. Deterministic: validators run it."""
