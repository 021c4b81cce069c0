"""The settler against a fake chain that behaves like HACA's where the settler can tell: CheckTx
runs on the mempool's state (nonces and settlements of txs not yet in a block included), a block
runs each tx on its own (a failing tx still uses its nonce, its settlements are undone), and a
request settles at most once (AlreadySettled). The receipt store is the real SQLite one.

Each test drives `Settler.run_once()` directly; the chain commits a block when the settler
waits for a tx (or when the test says so), unless a fault says otherwise."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haca.client.chain import TxOutcome
from haca.client.errors import HacaError, RpcError, TxRejected
from haca.crypto.keys import PrivateKey
from haca.node.receipts import ReceiptStore
from haca.node.settler import Settler
from haca.node.txlock import AccountTxLock
from haca.types import codes
from haca.types.encoding import canonical_json
from haca.types.inference import MsgSettle, SettlementItem
from haca.types.modes import Status
from haca.types.settlement import SettlementRecord
from tests.unit.node.nodehelpers import NODE, per_request, signed_receipt

POOL = [(signed_receipt(i, fee=10 + i), per_request(i)) for i in range(48)]  # signed once, reused


class FakeChain:
    def __init__(self, nonce: int = 0, height: int = 100) -> None:
        self.height = height
        self.committed_nonce = nonce
        self.mempool: list[bytes] = []
        self.cache: set[bytes] = set()  # CometBFT refuses bytes it has already seen
        self.txs: dict[bytes, tuple[int, tuple[SettlementItem, ...]]] = {}
        self.by_hash: dict[str, bytes] = {}
        self.results: dict[str, tuple[int, int, str]] = {}  # tx hash -> (height, code, log)
        self.records: dict[str, SettlementRecord] = {}  # receipt id -> settlement record
        self.settled_requests: dict[tuple[str, str], str] = {}  # (client, request id) -> receipt id
        self.ledger: list[tuple[str, int]] = []  # (receipt id, height) of every settlement committed
        self.signed: list[tuple[int | None, tuple[str, ...]]] = []  # (nonce asked for, receipt ids)
        self.accepted: list[tuple[int, tuple[str, ...]]] = []  # passed CheckTx: (nonce, receipt ids)
        # Faults a test injects.
        self.invalid: dict[str, str] = {}  # receipt id -> log: refused by CheckTx and in blocks
        self.invalid_code = codes.INVALID_PAYMENT
        self.fail_in_block: dict[str, str] = {}  # receipt id -> log: passes CheckTx, expires in its block, then invalid
        self.check_faults: list[TxRejected] = []  # the next broadcasts raise these
        self.names_items = False
        self.claims: list[str] = []  # receipt ids with a pending claim on chain
        self.broadcast_lost = 0  # the next N accepted broadcasts answer with an RPC error
        self.wait_faults: list[str] = []  # next wait_tx: "slow" (no block yet), "lost" (block, no answer), "dropped"

    # --- what the settler calls ----------------------------------------------------------------

    def query(self, path: str, data: bytes = b"") -> dict[str, Any]:
        assert path == "/inference/node_claims" and data == NODE.address.encode()
        return {"node": NODE.address, "claims": [{"receipt_id": rid, "deadline": 200} for rid in self.claims]}

    def nonce(self, address: str) -> int:
        assert address == NODE.address
        return self.committed_nonce  # like /auth/account: committed state, not the mempool's

    def sign(self, key: PrivateKey, msgs: tuple[Any, ...], nonce: int | None = None) -> bytes:
        assert key == NODE and len(msgs) == 1 and isinstance(msgs[0], MsgSettle)
        items = msgs[0].items
        ids = tuple(item.receipt.id for item in items)
        self.signed.append((nonce, ids))
        used = self.committed_nonce if nonce is None else nonce
        raw = json.dumps({"nonce": used, "ids": ids}).encode()  # deterministic, like a real signature
        self.txs[raw] = (used, items)
        return raw

    def broadcast(self, raw: bytes) -> str:
        if raw in self.cache:
            raise TxRejected("rejected: this exact tx was already submitted (tx already exists in cache)")
        if self.check_faults:
            raise self.check_faults.pop(0)
        nonce, items = self.txs[raw]
        expected = self.committed_nonce + len(self.mempool)
        if nonce != expected:
            log = f"account {NODE.address} nonce is {expected}, tx has {nonce}"
            raise TxRejected(f"rejected (code {codes.BAD_NONCE}): {log}", codes.BAD_NONCE, log)
        in_mempool = {self._request(i): i.receipt.id for r in self.mempool for i in self.txs[r][1]}
        code, log = self._check(items, {**self.settled_requests, **in_mempool})
        if code:
            raise refusal(f"rejected (code {code}): {log}", code, log)
        self.mempool.append(raw)
        self.cache.add(raw)
        self.accepted.append((nonce, tuple(i.receipt.id for i in items)))
        tx_hash = hashlib.sha256(raw).hexdigest().upper()
        self.by_hash[tx_hash] = raw
        if self.broadcast_lost:
            self.broadcast_lost -= 1
            raise RpcError("broadcast_tx_sync: connection reset by peer")
        return tx_hash

    def wait_tx(self, tx_hash: str, timeout: float = 30.0) -> TxOutcome:
        fault = self.wait_faults.pop(0) if self.wait_faults else None
        if fault == "lost":
            self.produce_block()
        elif fault == "dropped":  # e.g. the validator restarted: its mempool (and cache) are gone
            self.cache.difference_update(self.mempool)
            self.mempool.clear()
        elif fault is None and self.by_hash.get(tx_hash) in self.mempool:
            self.produce_block()
        if fault is not None or tx_hash not in self.results:
            raise HacaError(f"tx {tx_hash} not committed within {timeout:.0f}s")
        height, code, log = self.results[tx_hash]
        if code:
            raise refusal(f"tx failed in block {height} (code {code}): {log}", code, log)
        return TxOutcome(tx_hash, height, 0, "", [])

    # --- the chain itself ----------------------------------------------------------------------

    @staticmethod
    def _request(item: SettlementItem) -> tuple[str, str]:
        return item.receipt.receipt.client, item.receipt.receipt.request_id

    def _check(self, items: tuple[SettlementItem, ...], settled: dict[tuple[str, str], str]) -> tuple[int, str]:
        seen = dict(settled)
        for index, item in enumerate(items):
            receipt_id, request = item.receipt.id, self._request(item)
            # The real chain names the refused item; `names_items = False` plays an older chain.
            prefix = f"item {index} (receipt {receipt_id}): " if self.names_items else ""
            if receipt_id in self.invalid:  # payment checks come before AlreadySettled
                return self.invalid_code, prefix + self.invalid[receipt_id]
            if request in seen:
                previous = seen[request]
                return (
                    codes.ALREADY_SETTLED,
                    prefix + f"request {request[1]} of {request[0]} was settled by receipt {previous}",
                )
            seen[request] = receipt_id
        return 0, ""

    def produce_block(self) -> None:
        self.height += 1
        for raw in self.mempool:
            nonce, items = self.txs[raw]
            assert nonce == self.committed_nonce  # CheckTx let no other through
            self.committed_nonce += 1  # a tx that fails in a block still uses its nonce
            code, log = self._check(items, self.settled_requests)
            failing = [i.receipt.id for i in items if i.receipt.id in self.fail_in_block]
            if not code and failing:
                index = next(i for i, item in enumerate(items) if item.receipt.id == failing[0])
                prefix = f"item {index} (receipt {failing[0]}): " if self.names_items else ""
                log = prefix + self.fail_in_block.pop(failing[0])
                code, self.invalid[failing[0]] = codes.AUTHORIZATION_EXPIRED, log
            if not code:
                for item in items:
                    receipt = item.receipt.receipt
                    self.records[item.receipt.id] = SettlementRecord(
                        item.receipt.id,
                        Status.SETTLED,
                        self.height,
                        receipt.node,
                        receipt.client,
                        receipt.request_id,
                        receipt.model_id,
                        receipt.mode,
                        receipt.fee,
                        0,
                        item.payment.kind,
                    )
                    self.settled_requests[self._request(item)] = item.receipt.id
                    self.ledger.append((item.receipt.id, self.height))
            self.results[hashlib.sha256(raw).hexdigest().upper()] = (self.height, code, log)
        self.mempool.clear()

    def ledger_ids(self) -> list[str]:
        return [rid for rid, _ in self.ledger]


def refusal(message: str, code: int, log: str) -> TxRejected:
    """A refusal as the chain reports it: when it names an item, the item is also in the result data."""
    named = re.match(r"^item (\d+) \(receipt (0x[0-9a-f]{64})\): ", log)
    detail = {"refused_item": {"index": int(named[1]), "receipt_id": named[2]}} if named else None
    return TxRejected(message, code, log, canonical_json(detail) if detail else b"")


class RecordView:
    """The settler's ChainView: the chain's settlement record of a receipt, or None."""

    def __init__(self, chain: FakeChain) -> None:
        self.chain = chain
        self.lookups: list[str] = []

    def height(self) -> int:
        return self.chain.height

    def params(self) -> dict[str, Any]:
        return {"claim_window": 2000}

    def receipt_record(self, receipt_id: str) -> SettlementRecord | None:
        self.lookups.append(receipt_id)
        return self.chain.records.get(receipt_id)

    def request_record(self, client: str, request_id: str) -> SettlementRecord | None:
        receipt_id = self.chain.settled_requests.get((client, request_id))
        return self.receipt_record(receipt_id) if receipt_id is not None else None


def make(
    tmp_path: Path, count: int, batch_size: int = 32, max_inflight: int = 4, nonce: int = 0
) -> tuple[Settler, ReceiptStore, FakeChain, list[str]]:
    store = ReceiptStore(tmp_path / "receipts.db")
    chain = FakeChain(nonce)
    settler = Settler(store, chain, RecordView(chain), NODE, batch_size, 1.0, max_inflight)  # type: ignore[arg-type]
    return settler, store, chain, [queue(store, n) for n in range(count)]


def queue(store: ReceiptStore, n: int) -> str:
    receipt, payment = POOL[n]
    store.add(receipt, payment)
    return receipt.id


def statuses(store: ReceiptStore, ids: list[str]) -> list[str]:
    return [store.get(rid).status for rid in ids]  # type: ignore[union-attr]


def drain(settler: Settler, chain: FakeChain, passes: int = 30) -> None:
    """What the settler thread does while the chain keeps making blocks, until nothing is left."""
    for _ in range(passes):
        if not settler.store.unsettled(1):
            return
        settler.run_once()
        chain.produce_block()
    raise AssertionError("receipts still unsettled after many passes")


# --- batching ----------------------------------------------------------------------------------


def test_pending_receipts_go_out_in_batches_with_consecutive_nonces_and_settle_at_the_block_height(tmp_path):
    settler, store, chain, ids = make(tmp_path, 7, batch_size=3, nonce=5)
    assert settler.run_once() == 7
    assert [nonce for nonce, _ in chain.signed] == [5, 6, 7]  # one pass, one block, consecutive nonces
    assert [len(batch) for _, batch in chain.signed] == [3, 3, 1]
    assert [rid for _, batch in chain.signed for rid in batch] == ids  # oldest first, each once
    assert chain.ledger == [(rid, 101) for rid in ids]
    for rid in ids:
        stored = store.get(rid)
        assert stored is not None
        assert (stored.status, stored.height, stored.error) == ("settled", 101, None)
        assert stored.tx_hash in chain.results
    assert settler.settled_total == 7 and store.unsettled_count() == 0
    assert settler.run_once() == 0 and len(chain.signed) == 3  # nothing left, nothing sent


def test_settlement_txs_carry_the_stored_receipts_payments_and_evidence(tmp_path):
    settler, _, chain, ids = make(tmp_path, 2)
    settler.run_once()
    raw = next(iter(chain.by_hash.values()))
    _, items = chain.txs[raw]
    assert [(i.receipt, i.payment, i.evidence) for i in items] == [(*POOL[n], b"") for n in range(2)]
    assert [i.receipt.id for i in items] == ids


def test_one_pass_sends_at_most_max_inflight_batches(tmp_path):
    settler, store, chain, ids = make(tmp_path, 7, batch_size=2, max_inflight=2)
    assert settler.run_once() == 4
    assert statuses(store, ids) == ["settled"] * 4 + ["pending"] * 3
    assert settler.run_once() == 3
    assert [len(b) for _, b in chain.signed] == [2, 2, 2, 1] and chain.ledger_ids() == ids


# --- rejections --------------------------------------------------------------------------------


def test_a_checktx_rejected_batch_is_retried_one_receipt_per_tx_so_only_the_bad_receipt_is_rejected(tmp_path):
    settler, store, chain, ids = make(tmp_path, 4, batch_size=4)
    bad = ids[2]
    chain.invalid[bad] = "payment expired at height 90; this is height 101"
    assert settler.run_once() == 4
    assert chain.signed[0][1] == tuple(ids)  # the batch, refused...
    assert [b for _, b in chain.signed[1:]] == [(rid,) for rid in ids]  # ...then one tx per receipt
    assert statuses(store, ids) == ["settled", "settled", "rejected", "settled"]
    assert store.get(bad).error == "payment expired at height 90; this is height 101"  # type: ignore[union-attr]
    assert sorted(chain.ledger_ids()) == sorted(set(ids) - {bad})
    assert (settler.settled_total, settler.rejected_total) == (3, 1)
    assert settler.run_once() == 0  # a rejected receipt is final


def test_a_refusal_naming_its_receipt_drops_only_that_receipt_and_resends_the_rest_in_one_tx(tmp_path):
    """48 receipts with one bad per batch of 12: each bad one costs a CheckTx, never a block."""
    settler, store, chain, ids = make(tmp_path, 48, batch_size=12, max_inflight=4)
    chain.names_items = True
    bad = {ids[i] for i in (5, 20, 30, 47)}
    for rid in bad:
        chain.invalid[rid] = "payment expired at height 90; this is height 101"
    assert settler.run_once() == 48
    assert [len(b) for _, b in chain.accepted] == [11, 11, 11, 11]  # one tx per batch, in one block
    assert {n for n, _ in chain.accepted} == {0, 1, 2, 3}
    assert [s for rid, s in zip(ids, statuses(store, ids), strict=True) if rid in bad] == ["rejected"] * 4
    assert sorted(chain.ledger_ids()) == sorted(set(ids) - bad)
    assert store.get(ids[5]).error.endswith("payment expired at height 90; this is height 101")  # type: ignore[union-attr]


def test_a_batch_failing_in_finalize_block_naming_its_receipt_rejects_it_and_resends_the_rest(tmp_path):
    settler, store, chain, ids = make(tmp_path, 3, batch_size=3)
    chain.names_items = True
    bad = ids[1]
    chain.fail_in_block[bad] = "payment expired at height 100; this is height 101"
    settler.run_once()
    assert statuses(store, ids) == ["pending", "rejected", "pending"]
    drain(settler, chain)
    assert statuses(store, ids) == ["settled", "rejected", "settled"]
    assert [len(b) for _, b in chain.signed] == [3, 2]


def test_already_settled_with_a_chain_record_marks_the_receipt_settled_at_the_recorded_height(tmp_path):
    """Crash recovery: the node died after its tx committed but before it marked the receipts."""
    settler, store, chain, ids = make(tmp_path, 3, batch_size=3)
    settled_before = ids[1]
    chain.txs[b"earlier"] = (0, (SettlementItem(*POOL[1]),))
    chain.mempool.append(b"earlier")
    chain.produce_block()  # height 101, nonce 0 used
    assert chain.ledger == [(settled_before, 101)]
    chain.height = 120
    settler.run_once()
    assert statuses(store, ids) == ["settled"] * 3
    assert store.get(settled_before).height == 101  # type: ignore[union-attr]
    assert all(store.get(rid).height > 120 for rid in (ids[0], ids[2]))  # type: ignore[union-attr]
    assert settler.rejected_total == 0
    assert Counter(chain.ledger_ids()) == Counter(ids)  # paid once each


def test_already_settled_for_a_request_settled_under_another_receipt_is_a_final_rejection(tmp_path):
    settler, store, chain, _ = make(tmp_path, 0)
    receipt, payment = POOL[0]
    chain.txs[b"first"] = (0, (SettlementItem(receipt, payment),))  # the same request, another receipt
    chain.mempool.append(b"first")
    chain.produce_block()
    twin = signed_receipt(0, fee=999)
    assert twin.id != receipt.id
    store.add(twin, payment)
    settler.run_once()
    stored = store.get(twin.id)
    assert stored is not None and stored.status == "rejected"
    assert f"was settled by receipt {receipt.id}" in (stored.error or "")
    assert chain.ledger_ids() == [receipt.id]


def test_a_batch_failing_in_finalize_block_is_retried_one_receipt_per_tx(tmp_path):
    settler, store, chain, ids = make(tmp_path, 3, batch_size=3)
    bad = ids[1]
    chain.fail_in_block[bad] = "payment expired at height 100; this is height 101"  # expired meanwhile
    settler.run_once()
    assert [len(b) for _, b in chain.signed] == [3, 1, 1, 1]
    assert chain.results[next(iter(chain.by_hash))][1] == codes.AUTHORIZATION_EXPIRED  # the batch failed in its block
    assert statuses(store, ids) == ["settled", "rejected", "settled"]
    assert "payment expired at height 100" in (store.get(bad).error or "")  # type: ignore[union-attr]
    assert sorted(chain.ledger_ids()) == sorted([ids[0], ids[2]])


def test_a_later_batch_refused_in_a_pipelined_pass_leaves_earlier_batches_settled_and_itself_pending(tmp_path):
    settler, store, chain, ids = make(tmp_path, 6, batch_size=2)
    first, second = ids[0:2], ids[2:4]
    chain.invalid[second[1]] = "payment signature: bad signature"
    settler.run_once()
    assert [b for _, b in chain.signed] == [tuple(first), tuple(second)]  # the third batch waited
    assert statuses(store, ids) == ["settled"] * 2 + ["pending"] * 4
    drain(settler, chain)
    assert statuses(store, ids) == ["settled"] * 3 + ["rejected"] + ["settled"] * 2
    assert sorted(chain.ledger_ids()) == sorted(set(ids) - {second[1]})


# --- reconciling txs sent before ---------------------------------------------------------------


def test_a_submitted_receipt_with_a_chain_record_becomes_settled_without_a_new_tx(tmp_path):
    settler, store, chain, ids = make(tmp_path, 2)
    chain.txs[b"sent"] = (0, tuple(SettlementItem(*POOL[n]) for n in range(2)))
    chain.mempool.append(b"sent")
    chain.produce_block()
    store.mark(ids, "submitted", tx_hash="AB" * 32)
    assert settler.run_once() == 2
    assert statuses(store, ids) == ["settled", "settled"]
    assert [store.get(rid).height for rid in ids] == [101, 101]  # type: ignore[union-attr]
    assert chain.signed == [] and Counter(chain.ledger_ids()) == Counter(ids)


def test_a_submitted_receipt_without_a_chain_record_goes_back_to_pending_and_is_sent_again(tmp_path):
    settler, store, chain, ids = make(tmp_path, 1)
    store.mark(ids, "submitted", tx_hash="AB" * 32)  # that tx never reached a block
    settler.run_once()
    assert statuses(store, ids) == ["pending"]  # no record of its tx: back in the queue, sent on the next pass
    drain(settler, chain)
    assert statuses(store, ids) == ["settled"]
    assert [b for _, b in chain.signed] == [tuple(ids)] and chain.ledger_ids() == ids


def test_a_wait_timeout_leaves_receipts_submitted_and_a_later_pass_settles_them_without_resending(tmp_path):
    settler, store, chain, ids = make(tmp_path, 2)
    chain.wait_faults = ["slow"]
    assert settler.run_once() == 0
    assert statuses(store, ids) == ["submitted", "submitted"]
    tx_hash = store.get(ids[0]).tx_hash  # type: ignore[union-attr]
    assert tx_hash in chain.by_hash and store.unsettled_count() == 2  # still counted against the escrow
    chain.produce_block()  # the block came after all
    assert settler.run_once() == 2
    assert statuses(store, ids) == ["settled", "settled"] and len(chain.signed) == 1
    assert chain.ledger == [(rid, 101) for rid in ids]


def test_a_wait_timeout_of_a_tx_that_never_commits_leads_to_one_resend(tmp_path):
    settler, store, chain, ids = make(tmp_path, 2)
    chain.wait_faults = ["dropped"]
    settler.run_once()
    assert statuses(store, ids) == ["submitted", "submitted"]
    drain(settler, chain)
    assert statuses(store, ids) == ["settled", "settled"]
    assert len(chain.accepted) == 2 and Counter(chain.ledger_ids()) == Counter(ids)


# --- exactly once --------------------------------------------------------------------------------

FAULTS = ["none", "lost", "dropped", "broadcast_lost", "fail_in_block", "invalid", "restart"]


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 4), st.sampled_from(FAULTS), st.integers(0, 10**6)), min_size=1, max_size=9
    ),
    batch_size=st.integers(1, 3),
    max_inflight=st.integers(1, 3),
    names_items=st.booleans(),
)
def test_every_queued_receipt_is_paid_exactly_once_or_rejected_for_its_own_fault(
    steps, batch_size, max_inflight, names_items
):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "receipts.db"
        chain = FakeChain()
        chain.names_items = names_items
        store = ReceiptStore(path)

        def new_settler(store: ReceiptStore) -> Settler:
            return Settler(store, chain, RecordView(chain), NODE, batch_size, 1.0, max_inflight)  # type: ignore[arg-type]

        settler = new_settler(store)
        queued: list[str] = []
        poisoned: set[str] = set()
        for new, fault, pick in steps:
            queued += [queue(store, len(queued) + i) for i in range(new)]
            # Only a receipt the chain has not settled can turn invalid: its own fault, not a race.
            unsettled = [r.item.receipt.id for r in store.unsettled(100) if r.item.receipt.id not in chain.records]
            victim = unsettled[pick % len(unsettled)] if unsettled else None
            if fault in ("lost", "dropped"):
                chain.wait_faults.append(fault)
            elif fault == "broadcast_lost":  # the node never learns the tx hash (or crashed right after)
                chain.broadcast_lost = 1
            elif fault == "fail_in_block" and victim:
                chain.fail_in_block[victim] = "payment expired"
                poisoned.add(victim)
            elif fault == "invalid" and victim:
                chain.invalid[victim] = "payment expired"
                poisoned.add(victim)
            elif fault == "restart":
                store.close()
                store = ReceiptStore(path)
                settler = new_settler(store)
            with contextlib.suppress(HacaError):  # the settler thread logs it and tries again on its next pass
                settler.run_once()
            chain.produce_block()  # the chain moves on before the next pass
            assert_store_agrees_with_chain(store, chain, queued, poisoned)
        chain.wait_faults.clear()
        chain.broadcast_lost = 0
        drain(settler, chain)

        ledger = chain.ledger_ids()
        assert len(ledger) == len(set(ledger)), "a receipt was paid twice"
        rejected = {rid for rid in queued if store.get(rid).status == "rejected"}  # type: ignore[union-attr]
        assert set(ledger) | rejected == set(queued) and not set(ledger) & rejected
        assert rejected <= poisoned
        assert_store_agrees_with_chain(store, chain, queued, poisoned)
        store.close()


def assert_store_agrees_with_chain(store: ReceiptStore, chain: FakeChain, queued: list[str], poisoned: set[str]):
    for rid in queued:
        stored = store.get(rid)
        assert stored is not None
        record = chain.records.get(rid)
        if stored.status == "settled":
            assert record is not None and stored.height == record.height, f"{rid} settled only in the node's view"
        if stored.status == "rejected":
            assert record is None and rid in poisoned, f"{rid} rejected, yet the chain settled it or it was valid"


# --- known bugs --------------------------------------------------------------------------------

TX_LEVEL_REFUSALS = {
    "bad_nonce": TxRejected("rejected (code 5): nonce is 4, tx has 3", codes.BAD_NONCE, "nonce is 4, tx has 3"),
    "insufficient_fee": TxRejected("rejected (code 6): fee 10 is below 12", codes.INSUFFICIENT_FEE, "fee 10 < 12"),
    "node_out_of_funds": TxRejected("rejected (code 7): node has 0 opg", codes.INSUFFICIENT_FUNDS, "node has 0 opg"),
    "duplicate_in_cache": TxRejected("rejected: this exact tx was already submitted (tx already exists in cache)"),
}


@pytest.mark.parametrize("refusal", list(TX_LEVEL_REFUSALS))
def test_a_tx_level_refusal_never_marks_receipts_rejected(tmp_path, refusal):
    settler, store, chain, ids = make(tmp_path, 2)
    chain.check_faults = [TX_LEVEL_REFUSALS[refusal]] * 3  # the batch, then each receipt alone
    settler.run_once()
    assert "rejected" not in statuses(store, ids)
    drain(settler, chain)
    assert statuses(store, ids) == ["settled", "settled"]


def test_a_slow_block_during_one_by_one_retries_does_not_reject_the_valid_receipts(tmp_path):
    settler, store, chain, ids = make(tmp_path, 3, batch_size=3)
    chain.invalid[ids[1]] = "payment signature: bad signature"
    chain.wait_faults = ["slow"]  # the first single tx is still in the mempool when the next is sent
    settler.run_once()
    drain(settler, chain)
    assert statuses(store, ids) == ["settled", "rejected", "settled"]


def test_a_receipt_whose_first_tx_is_still_in_the_mempool_ends_settled_not_rejected(tmp_path):
    settler, store, chain, ids = make(tmp_path, 1)
    chain.wait_faults = ["slow"]
    settler.run_once()  # sent; no block yet
    settler.run_once()  # reconciled: no record yet
    settler.run_once()  # sent again while the first is in the mempool
    chain.produce_block()  # the first tx commits
    drain(settler, chain)
    assert chain.ledger_ids() == ids
    assert statuses(store, ids) == ["settled"]


def test_a_receipt_the_chain_settled_is_marked_settled_even_when_its_resend_is_refused_for_another_reason(tmp_path):
    settler, store, chain, ids = make(tmp_path, 1)
    chain.broadcast_lost = 1  # the node died right after broadcasting: the receipt is still "pending"
    with pytest.raises(HacaError):
        settler.run_once()
    chain.produce_block()  # the tx committed: the node was paid
    chain.invalid_code, chain.invalid[ids[0]] = codes.AUTHORIZATION_EXPIRED, "payment expired at height 105"
    settler.run_once()  # back up after the authorisation expired: the resend is refused before AlreadySettled
    assert chain.ledger_ids() == ids
    assert statuses(store, ids) == ["settled"]


# --- transient refusals ------------------------------------------------------------------------


def test_a_receipt_refused_for_a_transient_cause_is_retried_until_it_settles(tmp_path, monkeypatch):
    """Issue 19: a refusal whose cause can go away (a drained lane topped up, a measurement approved
    again) never gives a receipt up while its payment lasts: a client holding it could claim it."""
    settler, store, chain, ids = make(tmp_path, 2, batch_size=1, max_inflight=1)
    bad = ids[1]
    chain.invalid[bad] = "escrow of client for node is 0; fee 11 + settlement fee 3 needed"
    chain.invalid_code = codes.INSUFFICIENT_ESCROW
    now = [1000.0]
    monkeypatch.setattr("haca.node.settler.time.monotonic", lambda: now[0])
    for _ in range(3):
        settler.run_once()
        chain.produce_block()
    assert statuses(store, ids) == ["settled", "pending"]
    assert "will retry" in (store.get(bad).error or "")  # type: ignore[union-attr]
    tries = len([1 for _, batch in chain.signed if bad in batch])
    settler.run_once()  # before the retry interval: not tried again
    assert len([1 for _, batch in chain.signed if bad in batch]) == tries
    del chain.invalid[bad]  # the client topped its lane up
    now[0] += settler.retry_interval
    drain(settler, chain)
    assert statuses(store, ids) == ["settled", "settled"]
    assert sorted(chain.ledger_ids()) == sorted(ids)


def test_a_transient_refusal_after_the_payment_expired_is_final(tmp_path):
    settler, store, chain, ids = make(tmp_path, 1, batch_size=1, max_inflight=1)
    chain.height = 10**6 + 1  # past the payment's expiry (nodehelpers.per_request: 10**6)
    chain.invalid[ids[0]] = "measurement dev:ab is not approved for model 'iris' (revoked or never)"
    chain.invalid_code = codes.MEASUREMENT_NOT_APPROVED
    settler.run_once()
    assert statuses(store, ids) == ["rejected"]


def test_deferred_receipts_do_not_starve_newer_ones(tmp_path, monkeypatch):
    """Receipts refused for a transient cause wait out of the page the settler reads: a node whose
    oldest receipts all wait still settles the newer ones (else their payments would run out)."""
    settler, store, chain, ids = make(tmp_path, 3, batch_size=1, max_inflight=1)
    monkeypatch.setattr(settler, "batch_size", 1)
    monkeypatch.setattr(settler, "max_inflight", 2)  # a page of 2: the two waiting ones would fill it
    chain.invalid_code = codes.INSUFFICIENT_ESCROW
    for rid in ids[:2]:
        chain.invalid[rid] = "escrow of client for node is 0; fee 11 + settlement fee 3 needed"
    for _ in range(4):
        settler.run_once()
        chain.produce_block()
    assert statuses(store, ids) == ["pending", "pending", "settled"]


def test_a_receipt_refused_for_a_transient_cause_pass_after_pass_never_slows_the_others(tmp_path, monkeypatch):
    """Issue 23's long chaos run: one tee receipt signed in a coverage gap came back every retry
    interval, and each time every other receipt of its chunk went alone, one a block: the node fell
    behind and 1,122 payments expired. Named, it costs one CheckTx a pass; all others settle in
    one tx a pass, in the block of that pass."""
    settler, store, chain, ids = make(tmp_path, 48, batch_size=16, max_inflight=1)
    chain.names_items = True
    stuck = ids[0]
    chain.invalid[stuck] = "no attestation of enclave key 0xae covers height 447"
    chain.invalid_code = codes.ENCLAVE_NOT_IN_GOOD_STANDING
    now = [1000.0]
    monkeypatch.setattr("haca.node.settler.time.monotonic", lambda: now[0])
    for _ in range(4):
        height = chain.height
        settler.run_once()
        now[0] += settler.retry_interval  # the stuck one is due again at every pass
        assert chain.height == height + 1  # one block a pass
    assert [len(batch) for _, batch in chain.accepted] == [15, 15, 15, 2]  # never one receipt a tx
    assert statuses(store, ids) == ["pending"] + ["settled"] * 47


def test_a_refusal_naming_no_receipt_costs_one_block_not_one_per_receipt(tmp_path):
    """An unnamed refusal (an older chain) sends the chunk's receipts alone, all in one block."""
    settler, store, chain, ids = make(tmp_path, 12, batch_size=12, max_inflight=1)
    chain.invalid[ids[4]] = "payment expired at height 90; this is height 101"
    height = chain.height
    settler.run_once()
    assert chain.height == height + 1
    assert [len(batch) for _, batch in chain.accepted] == [1] * 11
    assert statuses(store, ids) == ["settled"] * 4 + ["rejected"] + ["settled"] * 7


def test_a_claimed_receipt_is_settled_on_its_claim_even_after_the_node_gave_it_up(tmp_path):
    """Issue 19: the node's own payment expired (final refusal), then the client claims the receipt:
    the claim pays, so the settler puts it back and settles it alone."""
    store = ReceiptStore(tmp_path / "receipts.db")
    chain = FakeChain()
    settler = Settler(store, chain, RecordView(chain), NODE, 1, 1.0, 1, claims_interval=0.0)  # type: ignore[arg-type]
    rid = queue(store, 0)
    chain.invalid[rid] = "payment expired at height 90; this is height 100"
    chain.invalid_code = codes.AUTHORIZATION_EXPIRED
    settler.run_once()
    assert statuses(store, [rid]) == ["rejected"]
    chain.claims.append(rid)
    del chain.invalid[rid]  # on chain, a claimed receipt's payment is its claim
    settler.run_once()  # reads the claims, puts the receipt back, sends it
    chain.produce_block()
    drain(settler, chain)
    assert statuses(store, [rid]) == ["settled"]
    assert chain.ledger_ids() == [rid]


def test_a_settler_without_the_lease_sends_nothing_and_settles_once_it_has_it(tmp_path):
    """A node's workers share one store: only the lease holder settles (haca.node.pgstore)."""
    settler, store, chain, ids = make(tmp_path, 3)
    settler.flush_interval = 0.05
    lease = {"held": False}
    store.settler_lease = lambda: lease["held"]  # type: ignore[method-assign]
    settler.start()
    try:
        time.sleep(0.5)
        assert chain.signed == [] and statuses(store, ids) == ["pending"] * 3
        lease["held"] = True
        deadline = time.monotonic() + 5
        while not chain.signed:
            assert time.monotonic() < deadline, "the lease holder never sent"
            time.sleep(0.02)
    finally:
        settler.stop()
    assert {rid for _, sent in chain.signed for rid in sent} == set(ids)


def test_a_settler_that_lost_its_lease_while_waiting_for_the_tx_lock_sends_nothing(tmp_path):
    """Fenced: the lease is checked again once the account's tx lock is held (a worker stalled
    past its lease must not send beside the worker that took it over)."""
    settler, store, chain, ids = make(tmp_path, 3)
    settler.flush_interval = 0.05
    lease = {"held": True}
    store.settler_lease = lambda: lease["held"]  # type: ignore[method-assign]

    class LockTakenOver(AccountTxLock):
        def acquire(self) -> None:
            super().acquire()
            lease["held"] = False  # another worker took the lease while this one waited

    settler.tx_lock = LockTakenOver()
    settler.start()
    try:
        time.sleep(0.5)
    finally:
        settler.stop()
    assert chain.signed == [] and statuses(store, ids) == ["pending"] * 3
