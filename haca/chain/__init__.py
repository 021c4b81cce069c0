"""The HACA state machine: an ABCI application run by every validator beside CometBFT.

Deterministic by construction: no wall clock, randomness, floats or network in this package.
"""
