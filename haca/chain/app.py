"""The HACA ABCI application: blocks and transactions, wired to the modules.

It sees only ABCI requests and responses (haca.chain.abci owns sockets and framing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from tendermint.abci import types_pb2 as abci
from tendermint.crypto import proof_pb2

from haca import __version__
from haca.chain.abci.base import BaseApplication
from haca.chain.errors import ChainError, InvalidQuery, UnknownQuery
from haca.chain.events import Event
from haca.chain.genesis import parse_app_genesis
from haca.chain.modules.auth import keeper as auth_keeper
from haca.chain.modules.auth import queries as auth_queries
from haca.chain.modules.auth.keeper import AuthKeeper
from haca.chain.modules.bank import queries as bank_queries
from haca.chain.modules.bank.handlers import handle_send
from haca.chain.modules.bank.keeper import BankKeeper
from haca.chain.modules.inference import handlers as inference_handlers
from haca.chain.modules.inference import queries as inference_queries
from haca.chain.modules.inference.keeper import ESCROW_ACCOUNT, InferenceKeeper
from haca.chain.modules.registry import handlers as registry_handlers
from haca.chain.modules.registry import queries as registry_queries
from haca.chain.modules.registry.keeper import RegistryKeeper
from haca.chain.state import CachedState, ReadableState
from haca.chain.store import CommitStore, StagedBlock
from haca.chain.tx import TxResult, TxRunner
from haca.types import codes
from haca.types.bank import MsgSend
from haca.types.encoding import canonical_json
from haca.types.inference import MsgDeposit, MsgRevokeAllowance, MsgSettle, MsgWithdraw
from haca.types.registry import MsgRegisterModel, MsgRegisterNode

log = structlog.get_logger("haca.app")
PROOF_OP_TYPE = "haca:mpt"
# A query answers JSON and names the store keys whose values back the answer (proven on request).
Query = Callable[[ReadableState, bytes], tuple[dict[str, Any], list[bytes]]]


@dataclass
class ExecutedBlock:
    height: int
    txs: list[bytes]
    state: CachedState
    results: list[TxResult]
    released: list[tuple[str, str, int]]


class HistoricalState:
    """Read-only view of the state committed at a past height, read through the trie."""

    def __init__(self, store: CommitStore, height: int) -> None:
        self.store, self.height = store, height

    def get(self, key: bytes) -> bytes | None:
        return self.store.get_at(self.height, key)

    def iter_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return self.store.iter_prefix_at(self.height, prefix)


class HacaApp(BaseApplication):
    """Snapshots and vote extensions are not used: BaseApplication answers them."""

    def __init__(self, store: CommitStore) -> None:
        self.store = store
        self.auth = AuthKeeper()
        self.bank = BankKeeper()
        self.registry = RegistryKeeper()
        self.inference = InferenceKeeper(self.bank)
        self.bank.module_accounts = frozenset({ESCROW_ACCOUNT})
        self.runner = TxRunner(self.auth, self.bank)
        self.runner.chain_id = auth_keeper.chain_id(store)
        self._wire_handlers()
        bank, auth, registry, inference = self.bank, self.auth, self.registry, self.inference
        self.queries: dict[str, Query] = {
            "/bank/balance": lambda s, d: bank_queries.query_balance(bank, s, d),
            "/bank/supply": lambda s, d: bank_queries.query_supply(bank, s, d),
            "/auth/account": lambda s, d: auth_queries.query_account(auth, s, d),
            "/auth/params": lambda s, d: auth_queries.query_params(auth, s, d),
            "/registry/model": lambda s, d: registry_queries.query_model(registry, s, d),
            "/registry/models": lambda s, d: registry_queries.query_models(registry, s, d),
            "/registry/model_in_effect": lambda s, d: registry_queries.query_model_in_effect(registry, s, d),
            "/registry/params": lambda s, d: registry_queries.query_params(registry, s, d),
            "/registry/node": lambda s, d: registry_queries.query_node(registry, s, d),
            "/registry/nodes": lambda s, d: registry_queries.query_nodes(registry, s, d),
            "/inference/escrow": lambda s, d: inference_queries.query_escrow(inference, s, d),
            "/inference/receipt": lambda s, d: inference_queries.query_receipt(inference, s, d),
            "/inference/allowance": lambda s, d: inference_queries.query_allowance(inference, s, d),
            "/inference/params": lambda s, d: inference_queries.query_params(inference, s, d),
        }
        self.check_state = CachedState(store)
        self.block_state: CachedState | None = None
        self.staged: StagedBlock | None = None
        self.pending_height = 0
        self.processed: ExecutedBlock | None = None

    def _wire_handlers(self) -> None:
        bank, registry, inference = self.bank, self.registry, self.inference
        register = self.runner.register
        register(MsgSend, lambda ctx, msg: handle_send(bank, ctx, msg))
        register(MsgRegisterModel, lambda ctx, msg: registry_handlers.handle_register_model(registry, ctx, msg))
        register(MsgRegisterNode, lambda ctx, msg: registry_handlers.handle_register_node(registry, ctx, msg))
        register(MsgDeposit, lambda ctx, msg: inference_handlers.handle_deposit(inference, ctx, msg))
        register(MsgWithdraw, lambda ctx, msg: inference_handlers.handle_withdraw(inference, ctx, msg))
        register(MsgRevokeAllowance, lambda ctx, msg: inference_handlers.handle_revoke_allowance(inference, ctx, msg))
        register(MsgSettle, lambda ctx, msg: inference_handlers.handle_settle(registry, inference, ctx, msg))

    # --- connection: info/query -------------------------------------------------------------

    def info(self, req: abci.RequestInfo) -> abci.ResponseInfo:
        # CometBFT asks at (re)connect and replays from the committed height: drop anything uncommitted.
        self.block_state, self.staged, self.processed = None, None, None
        self.check_state = CachedState(self.store)
        return abci.ResponseInfo(
            data="haca",
            version=__version__,
            app_version=1,
            last_block_height=self.store.height,
            last_block_app_hash=self.store.app_hash,
        )

    def query(self, req: abci.RequestQuery) -> abci.ResponseQuery:
        height = req.height or self.store.height
        try:
            if height > self.store.height or self.store.root_at(height) is None:
                raise InvalidQuery(f"no state at height {height}; latest is {self.store.height}")
            state: ReadableState = self.store if height == self.store.height else HistoricalState(self.store, height)
            if req.path == "/store":
                answer, keys = {"key": req.data.hex()}, [bytes(req.data)]
            else:
                handler = self.queries.get(req.path)
                if handler is None:
                    raise UnknownQuery(f"unknown query path {req.path!r}; known: {sorted(self.queries)}")
                answer, keys = handler(state, bytes(req.data))
            resp = abci.ResponseQuery(code=0, value=canonical_json(answer), height=height)
            if req.path == "/store":
                resp.value = state.get(bytes(req.data)) or b""
            if req.prove:
                ops = []
                for key in keys:
                    _, proof = self.store.prove(height, key)
                    ops.append(proof_pb2.ProofOp(type=PROOF_OP_TYPE, key=key, data=proof))
                resp.key = keys[0] if len(keys) == 1 else b""
                resp.proof_ops.CopyFrom(proof_pb2.ProofOps(ops=ops))
            return resp
        except ChainError as error:
            return abci.ResponseQuery(code=error.code, codespace=error.codespace, log=str(error), height=height)
        except Exception as exc:  # a query changes nothing, so a bug in one must not stop the node
            log.warning("query_failed", path=req.path, error=repr(exc))
            return abci.ResponseQuery(code=codes.INTERNAL, codespace="haca", log=f"query failed: {exc}", height=height)

    # --- connection: mempool ----------------------------------------------------------------

    def check_tx(self, req: abci.RequestCheckTx) -> abci.ResponseCheckTx:
        self.runner.height = self.store.height + 1
        result = self.runner.run(self.check_state, bytes(req.tx), atomic=True)
        return abci.ResponseCheckTx(
            code=result.code,
            codespace=result.codespace,
            log=result.log,
            gas_wanted=1,
            gas_used=1 if result.ok else 0,
        )

    # --- connection: consensus --------------------------------------------------------------

    def init_chain(self, req: abci.RequestInitChain) -> abci.ResponseInitChain:
        genesis = parse_app_genesis(bytes(req.app_state_bytes))
        state = CachedState(self.store)
        auth_keeper.set_chain_id(state, req.chain_id)
        self.runner.chain_id = req.chain_id
        self.auth.set_params(state, genesis.fees)
        self.inference.set_params(state, genesis.inference)
        self.registry.set_params(state, genesis.registry)
        self.bank.set_denom(state, genesis.denom)
        for account in genesis.accounts:
            self.bank.mint_genesis(state, account.address, account.balance)
        self.block_state = state
        self.check_state = state.branch()  # genesis funds are spendable before block 1 commits
        self.staged = self.store.stage_root(state.writes)
        log.info("init_chain", chain_id=req.chain_id, accounts=len(genesis.accounts), supply=genesis.total_supply)
        return abci.ResponseInitChain(app_hash=self.staged.root)

    def _proposal_scratch(self) -> CachedState:
        """A throwaway state over what the next block starts from (genesis writes included)."""
        return CachedState(self.block_state if self.block_state is not None else self.store)

    def prepare_proposal(self, req: abci.RequestPrepareProposal) -> abci.ResponsePrepareProposal:
        state = self._proposal_scratch()
        released = self.inference.release_withdrawals(state, req.height)
        self.runner.height = req.height
        chosen: list[bytes] = []
        results: list[TxResult] = []
        size = 0
        for item in req.txs:
            raw = bytes(item)
            if size + len(raw) > req.max_tx_bytes:
                break
            # Drop what would fail entirely (e.g. a tx made stale by one committed just before).
            result = self.runner.run(state, raw, atomic=True)
            if result.ok:
                chosen.append(raw)
                results.append(result)
                size += len(raw)
        # A successful tx changes state the same way atomic or not, so this is the block's
        # execution: the proposer's own ProcessProposal and FinalizeBlock reuse it.
        self.processed = ExecutedBlock(req.height, chosen, state, results, released)
        return abci.ResponsePrepareProposal(txs=chosen)

    def _execute(self, height: int, txs: list[bytes]) -> ExecutedBlock:
        """Run a block on a branch of the state the next block starts from; nothing is kept."""
        state = self._proposal_scratch()
        released = self.inference.release_withdrawals(state, height)
        self.runner.height = height
        results = [self.runner.run(state, raw, atomic=False) for raw in txs]
        return ExecutedBlock(height, txs, state, results, released)

    def process_proposal(self, req: abci.RequestProcessProposal) -> abci.ResponseProcessProposal:
        block = self._executed(req.height, [bytes(raw) for raw in req.txs])
        rejected = next((r for r in block.results if r.ante_failed), None)
        if rejected is not None:
            log.warning("reject_proposal", height=req.height, reason=rejected.log)
            return abci.ResponseProcessProposal(status=abci.ResponseProcessProposal.REJECT)
        self.processed = block  # FinalizeBlock of this very block reuses the execution
        return abci.ResponseProcessProposal(status=abci.ResponseProcessProposal.ACCEPT)

    def _executed(self, height: int, txs: list[bytes]) -> ExecutedBlock:
        """This block's execution: the one Prepare/ProcessProposal kept if it is the same block."""
        block = self.processed
        if block is None or block.height != height or block.txs != txs:
            block = self._execute(height, txs)
        return block

    def finalize_block(self, req: abci.RequestFinalizeBlock) -> abci.ResponseFinalizeBlock:
        block = self._executed(req.height, [bytes(raw) for raw in req.txs])
        self.processed = None
        state, results, released = block.state, block.results, block.released
        if self.block_state is not None:  # InitChain's writes come first in this block
            state.write()
            state = self.block_state
        self.block_state = state
        self.staged = self.store.stage_root(state.writes)
        self.pending_height = req.height
        block_events = [Event("withdrawal_paid", {"client": c, "node": n, "amount": str(a)}) for c, n, a in released]
        return abci.ResponseFinalizeBlock(
            events=[_abci_event(e) for e in block_events],
            tx_results=[_exec_result(r) for r in results],
            app_hash=self.staged.root,
        )

    def commit(self, req: abci.RequestCommit) -> abci.ResponseCommit:
        if self.staged is None or self.block_state is None:
            raise RuntimeError("commit without a finalized block")
        self.store.commit(self.pending_height, self.staged)
        self.block_state, self.staged, self.processed = None, None, None
        self.check_state = CachedState(self.store)
        return abci.ResponseCommit(retain_height=0)


def _exec_result(result: TxResult) -> abci.ExecTxResult:
    return abci.ExecTxResult(
        code=result.code,
        codespace=result.codespace,
        log=result.log,
        gas_wanted=1,
        gas_used=1,
        events=[_abci_event(e) for e in result.events],
    )


# Attributes CometBFT indexes for `tx_search` (who and what); amounts and fees are not searched
# by, and every indexed attribute costs each validator a write per tx.
INDEXED_ATTRIBUTES = frozenset({"signer", "sender", "recipient", "node", "client", "receipt_id", "name", "model_id"})


def _abci_event(event: Event) -> abci.Event:
    return abci.Event(
        type=event.type,
        attributes=[
            abci.EventAttribute(key=k, value=v, index=k in INDEXED_ATTRIBUTES) for k, v in event.attributes.items()
        ],
    )
