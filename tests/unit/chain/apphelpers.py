"""An in-process HacaApp harness for the chain tests: one validator's app over its own store,
driven block by block as CometBFT would (FinalizeBlock then Commit), with tx and query helpers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tendermint.abci import types_pb2 as abci

from haca.chain.app import HacaApp
from haca.chain.blocks import PREFIX as BLOCK_HASH_PREFIX
from haca.chain.genesis import AppGenesis
from haca.chain.modules.auth.keeper import FeeParams, nonce_key
from haca.chain.modules.bank.keeper import BURNED_KEY, SUPPLY_KEY, balance_key
from haca.chain.snapshots import Snapshots
from haca.chain.store import CommitStore
from haca.crypto.hashing import sha256
from haca.crypto.keys import PrivateKey
from haca.types.inference import SettlementItem
from haca.types.payment import PaymentAuthorization, SignedPayment
from haca.types.receipt import Receipt, SignedReceipt
from haca.types.tx import Msg, build_tx, decode_tx

CHAIN_ID = "haca-unit"
FEES = FeeParams(tx_fee_base=1_000, tx_fee_per_byte=10)


def signed_tx(key: PrivateKey, nonce: int, *msgs: Msg, chain_id: str = CHAIN_ID) -> bytes:
    """A tx of `msgs` signed by `key`, paying exactly the minimum fee."""
    return build_tx(key, chain_id, nonce, msgs, FEES.tx_fee_base, FEES.tx_fee_per_byte).encode()


def fee_of(raw: bytes) -> int:
    return decode_tx(raw).fee


GENESIS_TIME = 1_700_000_000


def block_time(height: int) -> int:
    """The header time the test block loop gives each height (two seconds a block)."""
    return GENESIS_TIME + 2 * height


class Node:
    """One validator's app over its own store, with the block loop CometBFT would drive."""

    def __init__(self, path: Path, srs_dir: Path | None = None, snapshot_interval: int = 0) -> None:
        self.path, self.srs_dir = path, srs_dir
        store = CommitStore(path)
        snapshots = (
            Snapshots(path.parent / f"{path.stem}-snapshots", store, snapshot_interval) if snapshot_interval else None
        )
        self.app = HacaApp(store, srs_dir=srs_dir, snapshots=snapshots)
        self.height = self.app.store.height

    def init(self, genesis: AppGenesis, chain_id: str = CHAIN_ID) -> abci.ResponseInitChain:
        app_state = json.dumps(genesis.to_json()).encode()
        return self.app.init_chain(abci.RequestInitChain(chain_id=chain_id, app_state_bytes=app_state))

    def time_of(self, height: int) -> int:
        """The header time of block `height` (a harness with another block clock overrides it)."""
        return block_time(height)

    def finalize(
        self,
        txs: list[bytes],
        misbehavior: Sequence[abci.Misbehavior] = (),
        votes: Sequence[tuple[bytes, bool]] = (),
    ) -> abci.ResponseFinalizeBlock:
        """`votes`: the previous block's commit as CometBFT reports it, (consensus address, signed)."""
        self.height += 1
        request = abci.RequestFinalizeBlock(height=self.height, txs=txs, hash=block_hash_of(self.height))
        request.time.seconds = self.time_of(self.height)
        request.misbehavior.extend(misbehavior)
        for address, signed in votes:
            vote = request.decided_last_commit.votes.add(block_id_flag=2 if signed else 1)
            vote.validator.address, vote.validator.power = address, 10
        return self.app.finalize_block(request)

    def block(
        self,
        txs: Sequence[bytes] = (),
        misbehavior: Sequence[abci.Misbehavior] = (),
        votes: Sequence[tuple[bytes, bool]] = (),
    ) -> abci.ResponseFinalizeBlock:
        resp = self.finalize(list(txs), misbehavior, votes)
        self.app.commit(abci.RequestCommit())
        return resp

    def check(self, raw: bytes) -> abci.ResponseCheckTx:
        return self.app.check_tx(abci.RequestCheckTx(tx=raw))

    def query(self, path: str, data: bytes = b"", height: int = 0, prove: bool = False) -> abci.ResponseQuery:
        return self.app.query(abci.RequestQuery(path=path, data=data, height=height, prove=prove))

    def answer(self, path: str, data: bytes = b"", height: int = 0) -> dict[str, Any]:
        resp = self.query(path, data, height)
        assert resp.code == 0, resp.log
        return json.loads(resp.value)

    def balance(self, address: str, height: int = 0) -> int:
        return int(self.answer("/bank/balance", address.encode(), height)["balance"])

    def nonce(self, address: str) -> int:
        return self.answer("/auth/account", address.encode())["nonce"]

    def supply(self) -> tuple[int, int]:
        answer = self.answer("/bank/supply")
        return int(answer["total"]), int(answer["burned"])

    def info(self) -> abci.ResponseInfo:
        return self.app.info(abci.RequestInfo())

    def reopen(self) -> Node:
        self.app.store.close()
        return type(self)(self.path, self.srs_dir)

    def close(self) -> None:
        self.app.store.close()

    # --- txs ----------------------------------------------------------------------------------

    def tx(self, key: PrivateKey, *msgs: Msg, offset: int = 0) -> bytes:
        """A tx signed by `key` at its committed nonce (+ `offset` for later txs of one block)."""
        return signed_tx(key, self.nonce(key.address) + offset, *msgs)

    def deliver(self, key: PrivateKey, *msgs: Msg) -> abci.ExecTxResult:
        """Commit a block holding one tx of `msgs` by `key`; its result."""
        (result,) = self.block([self.tx(key, *msgs)]).tx_results
        return result

    # --- state --------------------------------------------------------------------------------

    def dump(self) -> dict[bytes, bytes]:
        """Every committed key and value."""
        return dict(self.app.store.iter_prefix(b""))

    def escrow(self, address: str, node: str | None = None) -> int:
        """The client's escrow for `node`, or over all its nodes."""
        data = address if node is None else f"{address}/{node}"
        return int(self.answer("/inference/escrow", data.encode())["escrow"])

    def invariant_violations(self, genesis_supply: int) -> list[str]:
        """What is wrong with the bank and escrow accounting of the committed state (empty: nothing)."""
        supply, burned = self.supply()
        found = [] if supply + burned == genesis_supply else [f"supply {supply} + burned {burned} != {genesis_supply}"]
        store = self.app.store
        checks = [(n, check) for m in self.app.modules for n, check in m.invariants().items()]
        assert {n for n, _ in checks} >= {
            "supply_matches_balances",
            "escrow_matches_module_account",
            "stake_matches_module_account",
        }
        found += [v for _, check in checks if (v := check(store)) is not None]
        return found


def block_hash_of(height: int) -> bytes:
    """A stand-in for CometBFT's hash of block `height` (any 32 bytes every validator agrees on)."""
    return sha256(b"block" + height.to_bytes(8, "big"))


def changed_keys(before: dict[bytes, bytes], after: dict[bytes, bytes]) -> set[bytes]:
    """What changed, besides the chain's own per-block record of recent block hashes."""
    keys = before.keys() | after.keys()
    return {k for k in keys if before.get(k) != after.get(k) and not k.startswith(BLOCK_HASH_PREFIX)}


def assert_rejected_without_state_change(
    chain: Node, key: PrivateKey, raw: bytes, code: int, log_part: str, genesis_supply: int
) -> None:
    """CheckTx and FinalizeBlock both refuse `raw` (signed by `key`) with `code` and a log naming
    `log_part`; CheckTx keeps nothing, and the block changes only what the tx fee and nonce touch."""
    check_writes = dict(chain.app.check_state.writes)
    resp = chain.check(raw)
    assert resp.code == code, resp.log
    assert log_part in resp.log
    assert chain.app.check_state.writes == check_writes

    before = chain.dump()
    (result,) = chain.block([raw]).tx_results
    assert result.code == code, result.log
    assert log_part in result.log
    after = chain.dump()
    account = balance_key(key.address)
    assert changed_keys(before, after) == {account, nonce_key(key.address), SUPPLY_KEY, BURNED_KEY}
    assert int(after[account]) == int(before[account]) - fee_of(raw)
    assert chain.invariant_violations(genesis_supply) == []


def tee_item(
    node: PrivateKey, client: PrivateKey, signer: PrivateKey, model_id: str, fee: int, height_hint: int, tag: str
) -> SettlementItem:
    """A tee receipt of `node` for `client` (request `tag`), signed by `signer` (an enclave key, or
    not), paid by a per-request authorisation of exactly `fee`: a MsgSettle item."""
    receipt = Receipt(
        chain_id=CHAIN_ID,
        node=node.address,
        client=client.address,
        request_id="0x" + sha256(tag.encode()).hex(),
        model_id=model_id,
        mode="tee",
        input_hash="0x" + sha256(b"input").hex(),
        output_hash="0x" + sha256(b"output").hex(),
        fee=fee,
        height_hint=height_hint,
        timestamp=1_700_000_000,
    )
    auth = PaymentAuthorization(
        CHAIN_ID, client.address, node.address, receipt.request_id, model_id, "tee", max_fee=fee, expiry=10**9
    )
    payment = SignedPayment("request", auth, auth.sign(client))
    return SettlementItem(SignedReceipt(receipt, receipt.sign(signer)), payment, b"")
