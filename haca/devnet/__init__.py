"""Running validators: one (`haca validator`) or a local multi-validator devnet (`haca devnet`)."""
