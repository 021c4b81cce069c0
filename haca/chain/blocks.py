"""Recent block hashes, kept in state so transactions can prove freshness (a TEE key registration
binds one as its nonce).

The app writes the hash of block H into H's own state at FinalizeBlock (every validator gets the
same hash there, and ProcessProposal returns no app hash, so the write cannot diverge) and drops
the hash of H - RETAINED_BLOCK_HASHES: one key in, one key out, per block.

block/hash/<height:u64be> -> 32-byte block hash
"""

from __future__ import annotations

from haca.chain.state import CachedState, ReadableState

PREFIX = b"block/hash/"
RETAINED_BLOCK_HASHES = 1000  # the most any freshness window may look back


def block_hash_key(height: int) -> bytes:
    return PREFIX + height.to_bytes(8, "big")


def record_block_hash(state: CachedState, height: int, block_hash: bytes) -> None:
    state.set(block_hash_key(height), block_hash)
    if height > RETAINED_BLOCK_HASHES:
        state.delete(block_hash_key(height - RETAINED_BLOCK_HASHES))


def block_hash(state: ReadableState, height: int) -> bytes | None:
    """The hash of block `height`, if it is among the retained recent blocks."""
    return state.get(block_hash_key(height))
