"""Issue 24, part 3, in-process: state-sync snapshots made beside block execution are byte-identical
on every validator; an empty app restores one chunk by chunk and then executes the next block to
the same app hash as the others; a chunk tampered in transit is fetched again from another peer,
and a snapshot whose state is not the verified app hash is rejected with nothing kept."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from tendermint.abci import types_pb2 as abci

from haca.chain.genesis import AppGenesis, GenesisAccount
from haca.chain.snapshots import FORMAT, SnapshotInfo, parse_records, records, write_snapshot
from haca.crypto.keys import PrivateKey
from haca.types.bank import MsgSend
from tests.unit.chain.apphelpers import Node

KEYS = [PrivateKey.from_seed(f"snapshot account {i}") for i in range(3)]
GENESIS = AppGenesis(accounts=tuple(GenesisAccount(k.address, 10**12) for k in KEYS))
INTERVAL = 5
PEER_A, PEER_B = "peer-a", "peer-b"


def busy(node: Node, blocks: int) -> None:
    """Blocks with transfers, the same on every node fed them."""
    for _ in range(blocks):
        if node.height == 0:  # genesis is committed with the first block
            node.block()
            continue
        sender = KEYS[node.height % len(KEYS)]
        node.block([node.tx(sender, MsgSend(KEYS[(node.height + 1) % len(KEYS)].address, 1000 + node.height))])


def validator(tmp_path: Path, name: str) -> Node:
    (tmp_path / name).mkdir()
    node = Node(tmp_path / name / "state.db", snapshot_interval=INTERVAL)
    node.init(GENESIS)
    return node


def offered(node: Node) -> list[abci.Snapshot]:
    assert node.app.snapshots is not None
    node.app.snapshots.wait(30)
    return list(node.app.list_snapshots(abci.RequestListSnapshots()).snapshots)


def chunks_of(node: Node, snapshot: abci.Snapshot) -> list[bytes]:
    return [
        node.app.load_snapshot_chunk(
            abci.RequestLoadSnapshotChunk(height=snapshot.height, format=snapshot.format, chunk=i)
        ).chunk
        for i in range(snapshot.chunks)
    ]


def offer(node: Node, snapshot: abci.Snapshot, app_hash: bytes) -> int:
    return node.app.offer_snapshot(abci.RequestOfferSnapshot(snapshot=snapshot, app_hash=app_hash)).result


def apply(node: Node, index: int, chunk: bytes, sender: str = PEER_A) -> abci.ResponseApplySnapshotChunk:
    return node.app.apply_snapshot_chunk(abci.RequestApplySnapshotChunk(index=index, chunk=chunk, sender=sender))


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr("haca.chain.snapshots.CHUNK_SIZE", 512)  # several chunks from a small state


def test_snapshots_are_made_every_interval_the_last_kept_and_identical_on_every_validator(tmp_path, small_chunks):
    a, b = validator(tmp_path, "a"), validator(tmp_path, "b")
    for node in (a, b):
        busy(node, 3 * INTERVAL)
    mine, theirs = offered(a), offered(b)
    assert [s.height for s in mine] == [2 * INTERVAL, 3 * INTERVAL]  # keep 2
    assert mine == theirs  # hash, metadata, chunk count
    assert mine[-1].chunks > 1 and mine[-1].format == FORMAT
    assert chunks_of(a, mine[-1]) == chunks_of(b, theirs[-1])
    info = SnapshotInfo.from_metadata(mine[-1].metadata, mine[-1].height, mine[-1].hash, mine[-1].chunks)
    assert info.app_hash == a.info().last_block_app_hash  # made at the latest height


def test_a_snapshot_whose_metadata_on_disk_is_unreadable_is_not_offered(tmp_path, small_chunks):
    a = validator(tmp_path, "a")
    busy(a, 2 * INTERVAL)
    assert [s.height for s in offered(a)] == [INTERVAL, 2 * INTERVAL]
    assert a.app.snapshots is not None
    (a.app.snapshots.directory / str(INTERVAL) / "metadata.json").write_bytes(b'{"format": 1, "height"')
    assert [s.height for s in offered(a)] == [2 * INTERVAL]  # ListSnapshots still answers


def test_an_empty_app_restores_a_snapshot_and_then_executes_blocks_like_the_others(tmp_path, small_chunks):
    a = validator(tmp_path, "a")
    busy(a, 2 * INTERVAL)
    snapshot = offered(a)[-1]
    app_hash = a.info().last_block_app_hash
    (tmp_path / "joiner").mkdir()
    joiner = Node(tmp_path / "joiner" / "state.db")  # no InitChain: state sync instead
    assert offer(joiner, snapshot, app_hash) == abci.ResponseOfferSnapshot.ACCEPT
    results = [apply(joiner, i, chunk).result for i, chunk in enumerate(chunks_of(a, snapshot))]
    assert results == [abci.ResponseApplySnapshotChunk.ACCEPT] * snapshot.chunks
    info = joiner.info()
    assert (info.last_block_height, info.last_block_app_hash) == (2 * INTERVAL, app_hash)
    joiner.height = info.last_block_height
    for node in (a, joiner):  # the next blocks, with txs that read the restored state
        busy(node, 3)
    assert joiner.info().last_block_app_hash == a.info().last_block_app_hash
    assert joiner.balance(KEYS[1].address) == a.balance(KEYS[1].address)
    assert joiner.answer("/auth/account", KEYS[0].address.encode()) == a.answer(
        "/auth/account", KEYS[0].address.encode()
    )


def test_a_chunk_tampered_in_transit_is_fetched_again_and_its_sender_refused(tmp_path, small_chunks):
    a = validator(tmp_path, "a")
    busy(a, INTERVAL)
    snapshot = offered(a)[-1]
    chunks = chunks_of(a, snapshot)
    (tmp_path / "joiner").mkdir()
    joiner = Node(tmp_path / "joiner" / "state.db")
    assert offer(joiner, snapshot, a.info().last_block_app_hash) == abci.ResponseOfferSnapshot.ACCEPT
    bad = bytearray(chunks[0])
    bad[10] ^= 1
    refused = apply(joiner, 0, bytes(bad), sender=PEER_B)
    assert refused.result == abci.ResponseApplySnapshotChunk.RETRY
    assert list(refused.refetch_chunks) == [0] and list(refused.reject_senders) == [PEER_B]
    assert [apply(joiner, i, c).result for i, c in enumerate(chunks)] == [abci.ResponseApplySnapshotChunk.ACCEPT] * len(
        chunks
    )
    assert joiner.info().last_block_app_hash == a.info().last_block_app_hash


def test_a_snapshot_whose_state_is_not_the_verified_app_hash_is_rejected_and_nothing_kept(tmp_path, small_chunks):
    """A peer forges a snapshot: one balance changed, chunk hashes and metadata made to match, the
    genuine app hash claimed. Only the rebuilt trie can tell: rejected at the last chunk."""
    a = validator(tmp_path, "a")
    busy(a, INTERVAL)
    genuine = offered(a)[-1]
    app_hash = a.info().last_block_app_hash
    items = list(parse_records(b"".join(chunks_of(a, genuine))))
    balance_key = next(k for k, _ in items if k.startswith(b"bank/balance/"))
    forged_items = [(k, b"999999999999" if k == balance_key else v) for k, v in items]
    stream = b"".join(records(iter(forged_items)))
    forged_chunks = [stream[i : i + 512] for i in range(0, len(stream), 512)]
    info = SnapshotInfo(genuine.height, app_hash, 0, tuple(hashlib.sha256(c).digest() for c in forged_chunks))
    forged = abci.Snapshot(
        height=info.height, format=FORMAT, chunks=len(forged_chunks), hash=info.hash, metadata=info.metadata
    )
    (tmp_path / "joiner").mkdir()
    joiner = Node(tmp_path / "joiner" / "state.db")
    assert offer(joiner, forged, app_hash) == abci.ResponseOfferSnapshot.ACCEPT
    results = [apply(joiner, i, c).result for i, c in enumerate(forged_chunks)]
    assert results[-1] == abci.ResponseApplySnapshotChunk.REJECT_SNAPSHOT
    assert joiner.info().last_block_height == 0 and joiner.app.store.get(balance_key) is None
    # and the genuine one is taken after it
    assert offer(joiner, genuine, app_hash) == abci.ResponseOfferSnapshot.ACCEPT
    assert apply(joiner, 0, chunks_of(a, genuine)[0]).result == abci.ResponseApplySnapshotChunk.ACCEPT


def test_offers_that_cannot_be_restored_are_refused(tmp_path):
    a = validator(tmp_path, "a")
    busy(a, INTERVAL)
    snapshot = offered(a)[-1]
    app_hash = a.info().last_block_app_hash
    (tmp_path / "joiner").mkdir()
    joiner = Node(tmp_path / "joiner" / "state.db")
    other_hash = bytes(32)
    assert offer(joiner, snapshot, other_hash) == abci.ResponseOfferSnapshot.REJECT  # not the verified state
    wrong = abci.Snapshot(
        height=snapshot.height + 1,
        format=FORMAT,
        chunks=snapshot.chunks,
        hash=snapshot.hash,
        metadata=snapshot.metadata,
    )
    assert offer(joiner, wrong, app_hash) == abci.ResponseOfferSnapshot.REJECT  # metadata of another height
    future = abci.Snapshot(height=snapshot.height, format=FORMAT + 1, chunks=1, hash=snapshot.hash, metadata=b"")
    assert offer(joiner, future, app_hash) == abci.ResponseOfferSnapshot.REJECT_FORMAT
    assert offer(a, snapshot, app_hash) == abci.ResponseOfferSnapshot.ABORT  # an app with state restores nothing
    assert apply(joiner, 0, b"").result == abci.ResponseApplySnapshotChunk.ABORT  # nothing offered


def test_a_snapshot_sees_the_state_of_its_height_while_later_blocks_commit(tmp_path):
    """Written from a read pinned right after the commit of H: later blocks do not leak into it."""
    a = validator(tmp_path, "a")
    busy(a, 3)
    height, app_hash = a.info().last_block_height, a.info().last_block_app_hash
    reader = a.app.store.pinned_reader()
    busy(a, 3)  # committed while the snapshot waits
    info = write_snapshot(reader, height, app_hash, a.app.store.block_time, tmp_path / "made")
    reader.close()
    (tmp_path / "joiner").mkdir()
    joiner = Node(tmp_path / "joiner" / "state.db")
    chunks = [(tmp_path / "made" / str(height) / f"chunk-{i}").read_bytes() for i in range(len(info.chunk_hashes))]
    snapshot = abci.Snapshot(height=height, format=FORMAT, chunks=len(chunks), hash=info.hash, metadata=info.metadata)
    assert offer(joiner, snapshot, app_hash) == abci.ResponseOfferSnapshot.ACCEPT
    assert [apply(joiner, i, c).result for i, c in enumerate(chunks)][-1] == abci.ResponseApplySnapshotChunk.ACCEPT
    assert joiner.info().last_block_app_hash == app_hash
