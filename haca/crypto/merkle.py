"""Merkle trees over receipt batches, in the shape of RFC 6962 (Certificate Transparency) §2.1:
SHA-256, leaf = H(0x00 ‖ data), node = H(0x01 ‖ left ‖ right), a list of n > 1 split at the
largest power of two below n. The prefixes keep a leaf from passing for an inner node, and the
split (no duplicated last leaf) keeps two different lists from sharing a root (CVE-2012-2459)."""

from __future__ import annotations

import hashlib

LEAF, NODE = b"\x00", b"\x01"


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(LEAF + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of_leaves(leaves: list[bytes]) -> bytes:
    """The root over already hashed leaves (n - 1 node hashes)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    return _root(leaves, 0, len(leaves))


def _root(leaves: list[bytes], start: int, end: int) -> bytes:
    n = end - start
    if n == 1:
        return leaves[start]
    k = _split(n)
    return _node(_root(leaves, start, start + k), _root(leaves, start + k, end))


def merkle_root(items: list[bytes]) -> bytes:
    return root_of_leaves([leaf_hash(item) for item in items])


def inclusion_path(leaves: list[bytes], index: int) -> list[bytes]:
    """The audit path (RFC 6962 §2.1.1) of leaf `index`: sibling hashes from the leaf up."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} of {len(leaves)}")
    path: list[bytes] = []
    start, end = 0, len(leaves)
    while end - start > 1:  # walk down, then reverse: the path is read from the leaf up
        k = _split(end - start)
        if index < start + k:
            path.append(_root(leaves, start + k, end))
            end = start + k
        else:
            path.append(_root(leaves, start, start + k))
            start += k
    return path[::-1]


def root_from_path(leaf: bytes, index: int, count: int, path: list[bytes]) -> bytes:
    """The root that leaf hash `leaf` at `index` of `count` leaves and its audit path give
    (RFC 9162 §2.1.3.2); raises ValueError when the path has the wrong length for that position."""
    if not 0 <= index < count:
        raise ValueError(f"leaf index {index} is outside a tree of {count}")
    fn, sn, node = index, count - 1, leaf
    for sibling in path:
        if sn == 0:
            raise ValueError("the inclusion path is longer than the tree is deep")
        if fn & 1 or fn == sn:
            node = _node(sibling, node)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            node = _node(node, sibling)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ValueError("the inclusion path is shorter than the tree is deep")
    return node
