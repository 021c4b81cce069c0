"""Committed state: SQLite (WAL) holding a flat key/value table and an Ethereum
Merkle-Patricia trie (py-trie) whose root is the app hash.

Keys under INDEX_PREFIX are derived indexes: written by the state machine like any key, in the
same atomic commit, and read back the same way, but kept out of the trie, because a py-trie insert
costs ~0.3 ms of Python and an index may take a key per settled receipt (the settled-request index
that refuses a second settlement). They are consensus state the app hash does not cover directly:
what they decide (which items settle, the balances, the batch records) is in the trie, so a
validator whose index differed would commit another app hash and stop at the next header. They
cannot be proven to a light client and are kept at the latest height only; the SQLite file must be
backed up and restored whole (the index cannot be rebuilt from the trie alone, only by replaying
blocks).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from trie import HexaryTrie
from trie.typing import HexaryTrieNode
from trie.utils.nibbles import bytes_to_nibbles, nibbles_to_bytes

from haca.crypto.state_proof import encode_proof

EMPTY_ROOT = HexaryTrie.BLANK_NODE_HASH
INDEX_PREFIX = b"index/"  # derived indexes: in the flat table, not in the trie (see above)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trie_nodes (hash BLOB PRIMARY KEY, node BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS roots (height INTEGER PRIMARY KEY, root BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


class _TrieNodes(Mapping[bytes, bytes]):
    """The trie's node database: committed nodes in SQLite, new ones buffered until commit."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.pending: dict[bytes, bytes] = {}

    def __getitem__(self, key: bytes) -> bytes:
        node = self.pending.get(key)
        if node is not None:
            return node
        row = self._db.execute("SELECT node FROM trie_nodes WHERE hash = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return bytes(row[0])

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.pending[key] = value

    def __delitem__(self, key: bytes) -> None:  # nodes are never pruned: old roots stay provable
        pass

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[bytes]:
        raise NotImplementedError("the node database is not iterable")

    def __len__(self) -> int:
        raise NotImplementedError("the node database has no cheap length")


@dataclass
class StagedBlock:
    """The result of `stage_root`: what `commit` will write."""

    root: bytes
    writes: dict[bytes, bytes | None] = field(default_factory=dict)


class RestoreMismatch(Exception):
    """A restored state whose root is not the app hash it was offered with."""


class CommitStore:
    """The authenticated, crash-safe store of one validator's app."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._nodes = _TrieNodes(self._db)
        self.height = int(self._meta("height") or b"0")
        self.app_hash = self._meta("app_hash") or b""
        self.root = self._meta("root") or EMPTY_ROOT
        self.block_time = int(self._meta("block_time") or b"0")

    def _meta(self, name: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return bytes(row[0]) if row else None

    def get(self, key: bytes) -> bytes | None:
        """The committed value of `key` at the latest height."""
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return bytes(row[0]) if row else None

    def iter_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Committed keys under `prefix`, in byte order."""
        upper = _prefix_end(prefix)
        sql = "SELECT key, value FROM state WHERE key >= ?" + (" AND key < ?" if upper else "") + " ORDER BY key"
        params = (prefix, upper) if upper else (prefix,)
        for key, value in self._db.execute(sql, params):
            yield bytes(key), bytes(value)

    def stage_root(self, writes: Mapping[bytes, bytes | None]) -> StagedBlock:
        """Apply `writes` (None = delete) to a copy of the trie and return the new root."""
        self._nodes.pending.clear()
        trie = HexaryTrie(self._nodes, self.root)
        with trie.squash_changes() as batch:
            for key in sorted(writes):
                if key.startswith(INDEX_PREFIX):
                    continue
                value = writes[key]
                if value is None:
                    batch.delete(key)
                else:
                    batch.set(key, value)
        return StagedBlock(root=trie.root_hash, writes=dict(writes))

    def commit(self, height: int, staged: StagedBlock, block_time: int = 0) -> None:
        """Persist a staged block as `height` atomically; its root becomes the app hash. The block's
        header time is kept beside it (not in the trie) for CheckTx after a restart."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR IGNORE INTO trie_nodes VALUES (?, ?)", self._nodes.pending.items())
            upserts = [(k, v) for k, v in staged.writes.items() if v is not None]
            deletes = [(k,) for k, v in staged.writes.items() if v is None]
            db.executemany("INSERT OR REPLACE INTO state VALUES (?, ?)", upserts)
            db.executemany("DELETE FROM state WHERE key = ?", deletes)
            db.execute("INSERT OR REPLACE INTO roots VALUES (?, ?)", (height, staged.root))
            db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [
                    ("height", str(height).encode()),
                    ("app_hash", staged.root),
                    ("root", staged.root),
                    ("block_time", str(block_time).encode()),
                ],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._nodes.pending.clear()
        self.height, self.app_hash, self.root = height, staged.root, staged.root
        self.block_time = block_time

    def pinned_reader(self) -> sqlite3.Connection:
        """A second connection whose read transaction is begun now: it sees the state committed at
        this height, whatever commits after (WAL), until it is closed. For snapshots, written
        beside block execution."""
        reader = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        reader.execute("BEGIN")
        reader.execute("SELECT value FROM meta WHERE name = 'height'").fetchone()  # the read starts here
        return reader

    def restore(self, height: int, app_hash: bytes, block_time: int, items: Iterator[tuple[bytes, bytes]]) -> None:
        """Fill an empty store with the state of `height` (every key, in any order): the trie is
        rebuilt from the non-index keys and its root must be `app_hash`, else RestoreMismatch and
        nothing is written."""
        if self.height:
            raise RuntimeError(f"restore into a store that holds height {self.height}")
        self._nodes.pending.clear()
        trie = HexaryTrie(self._nodes, EMPTY_ROOT)
        rows: list[tuple[bytes, bytes]] = []
        with trie.squash_changes() as batch:
            for key, value in items:
                rows.append((key, value))
                if not key.startswith(INDEX_PREFIX):
                    batch.set(key, value)
        if trie.root_hash != app_hash:
            self._nodes.pending.clear()
            raise RestoreMismatch(
                f"the restored state's root is {trie.root_hash.hex()}, not the app hash {app_hash.hex()}"
            )
        self.commit(height, StagedBlock(root=app_hash, writes=dict(rows)), block_time)  # the trie's nodes too

    def root_at(self, height: int) -> bytes | None:
        row = self._db.execute("SELECT root FROM roots WHERE height = ?", (height,)).fetchone()
        return bytes(row[0]) if row else None

    def _trie_at(self, height: int) -> HexaryTrie:
        root = self.root_at(height)
        if root is None:
            raise KeyError(f"no state committed at height {height}")
        return HexaryTrie(self._nodes, root)

    def get_at(self, height: int, key: bytes) -> bytes | None:
        """The value of `key` in the state committed at `height`, read through the trie."""
        value: bytes = self._trie_at(height).get(key)
        return value or None

    def prove(self, height: int, key: bytes) -> tuple[bytes, bytes]:
        """(value or b"", proof) for `key` in the state committed at `height`."""
        trie = self._trie_at(height)
        return trie.get(key), encode_proof(trie.get_proof(key))

    def iter_prefix_at(self, height: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Keys under `prefix` in the state committed at `height`, in byte order, read through the
        trie (only the subtrees on the prefix's path are visited)."""
        trie = self._trie_at(height)
        wanted = tuple(bytes_to_nibbles(prefix))
        for nibbles, value in _walk(trie, trie.root_node, (), wanted):
            yield nibbles_to_bytes(nibbles), value

    def close(self) -> None:
        self._db.close()


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with `prefix`."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _walk(
    trie: HexaryTrie, node: HexaryTrieNode, path: tuple[int, ...], prefix: tuple[int, ...]
) -> Iterator[tuple[tuple[int, ...], bytes]]:
    """(key nibbles, value) under `node` (reached by `path`) whose key starts with `prefix`, in order."""
    if node.value:
        key = path + tuple(node.suffix)
        if key[: len(prefix)] == prefix:
            yield key, node.value
    for segment in node.sub_segments:
        child = path + tuple(segment)
        shared = min(len(child), len(prefix))
        if child[:shared] == prefix[:shared]:
            yield from _walk(trie, trie.traverse_from(node, segment), child, prefix)
