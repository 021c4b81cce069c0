"""Merkle-Patricia (Ethereum trie) proofs of chain state, checked against an app hash."""

from __future__ import annotations

import rlp
from trie import HexaryTrie
from trie.exceptions import BadTrieProof
from trie.exceptions import ValidationError as TrieValidationError


class ProofError(ValueError):
    """A state proof does not verify against the given root."""


def encode_proof(nodes: tuple[object, ...]) -> bytes:
    return rlp.encode(list(nodes))


def verify_proof(root: bytes, key: bytes, proof: bytes) -> bytes:
    """Return the value (b"" when absent) that `proof` shows for `key` under `root`."""
    try:
        nodes = rlp.decode(proof)
        value: bytes = HexaryTrie.get_from_proof(root, key, nodes)
    except (BadTrieProof, TrieValidationError, rlp.DecodingError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise ProofError(f"proof for key {key!r} does not verify: {exc}") from exc
    return value
