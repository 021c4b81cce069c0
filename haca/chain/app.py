"""The HACA ABCI application: blocks and transactions, wired to the modules.

It sees only ABCI requests and responses (haca.chain.abci owns sockets and framing).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from tendermint.abci import types_pb2 as abci
from tendermint.crypto import proof_pb2

from haca import __version__
from haca.chain.abci.base import BaseApplication
from haca.chain.blocks import record_block_hash
from haca.chain.errors import ChainError, InvalidQuery, UnknownQuery
from haca.chain.events import Event
from haca.chain.genesis import parse_app_genesis
from haca.chain.metrics import ChainMetrics
from haca.chain.module import BlockContext, BlockResult, Misbehavior, Module, Query, ValidatorUpdate
from haca.chain.modules.auth import keeper as auth_keeper
from haca.chain.modules.auth.keeper import AuthKeeper
from haca.chain.modules.auth.module import AuthModule
from haca.chain.modules.bank.keeper import BankKeeper
from haca.chain.modules.bank.module import BankModule
from haca.chain.modules.gov.keeper import GovKeeper
from haca.chain.modules.gov.module import GovModule
from haca.chain.modules.inference.keeper import ESCROW_ACCOUNT, InferenceKeeper
from haca.chain.modules.inference.module import InferenceModule
from haca.chain.modules.registry.keeper import RegistryKeeper
from haca.chain.modules.registry.module import RegistryModule
from haca.chain.modules.staking.keeper import STAKING_ACCOUNT, StakingKeeper
from haca.chain.modules.staking.module import StakingModule
from haca.chain.modules.tee.keeper import TeeKeeper
from haca.chain.modules.tee.module import TeeModule
from haca.chain.snapshots import FORMAT, Restore, SnapshotError, SnapshotInfo, Snapshots
from haca.chain.state import CachedState, ReadableState
from haca.chain.store import INDEX_PREFIX, CommitStore, RestoreMismatch, StagedBlock
from haca.chain.tx import TxResult, TxRunner
from haca.chain.windows import evidence_windows_error
from haca.chain.wiring import unset_hooks
from haca.proofs.zk.srs import pinned_srs
from haca.types import codes
from haca.types.encoding import canonical_json

log = structlog.get_logger("haca.app")
PROOF_OP_TYPE = "haca:mpt"


@dataclass(frozen=True)
class BlockFacts:
    """What CometBFT tells the app about a block besides its txs: the evidence it carries and the
    previous block's signatures. Part of what makes two executions the same block."""

    misbehavior: tuple[Misbehavior, ...] = ()
    votes: tuple[tuple[bytes, bool], ...] = ()


@dataclass
class ExecutedBlock:
    height: int
    time: int
    txs: list[bytes]
    state: CachedState
    results: list[TxResult]
    block: BlockResult  # what the modules' begin- and end-block hooks did
    facts: BlockFacts = field(default_factory=lambda: BlockFacts())


class HistoricalState:
    """Read-only view of the state committed at a past height, read through the trie."""

    def __init__(self, store: CommitStore, height: int) -> None:
        self.store, self.height = store, height

    def get(self, key: bytes) -> bytes | None:
        if key.startswith(INDEX_PREFIX):  # derived indexes are kept at the latest height only
            return None
        return self.store.get_at(self.height, key)

    def iter_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return self.store.iter_prefix_at(self.height, prefix)


class HacaApp(BaseApplication):
    """Vote extensions are not used: BaseApplication answers them. State-sync snapshots are served
    from `snapshots` (haca.chain.snapshots), and restored into an empty store."""

    def _params_problem(self, state: ReadableState) -> str:
        return evidence_windows_error(self.inference.params(state), self.staking.params(state))

    def __init__(self, store: CommitStore, srs_dir: Path | None = None, snapshots: Snapshots | None = None) -> None:
        self.store = store
        self.snapshots = snapshots
        self.restoring: Restore | None = None
        # Each keeper takes what it needs from the others when it is built, as the small Protocols
        # defined next to it (the expected-keeper idea, haca.chain.wiring). Staking and inference
        # need each other: staking is built first and inference lends it a hook, set once.
        self.auth = AuthKeeper()
        self.bank = BankKeeper(module_accounts=frozenset({ESCROW_ACCOUNT, STAKING_ACCOUNT}))
        self.staking = StakingKeeper(self.bank)
        self.registry = RegistryKeeper(self.staking)
        self.tee = TeeKeeper()
        self.inference = InferenceKeeper(self.bank, self.staking, srs_dir=srs_dir)
        self.gov = GovKeeper()
        self.staking.slashable_until.set(self.inference.last_claim_deadline)
        keepers = (self.auth, self.bank, self.staking, self.registry, self.tee, self.inference, self.gov)
        if unset := unset_hooks(*keepers):
            raise RuntimeError(f"the app is not fully wired: hooks {unset} are not set")
        self.runner = TxRunner(self.auth, self.bank)
        self.runner.chain_id = auth_keeper.chain_id(store)
        # the verifiers of every mode share one verdict cache (haca.proofs.verifier.verifiers)
        self.metrics = ChainMetrics(getattr(next(iter(self.inference.verifiers.values())), "cache", None))
        self._committing: tuple[list[TxResult], list[Event]] = ([], [])  # what commit() counts
        # Order matters only for hooks: each block runs begin-block hooks in this order, then the
        # txs, then end-block hooks in this order.
        self.modules: list[Module] = [
            AuthModule(self.auth),
            BankModule(self.bank),
            StakingModule(self.staking),
            RegistryModule(self.registry),
            TeeModule(self.tee, self.registry, self.gov),
            InferenceModule(self.inference, self.registry, self.bank, self.tee),
        ]
        self.modules.append(GovModule(self.gov, self.modules, self._params_problem))
        self.queries: dict[str, Query] = {}
        for module in self.modules:
            for msg_type, handler in module.handlers().items():
                self.runner.register(msg_type, handler)
            for path, query in module.queries().items():
                if path in self.queries:
                    raise RuntimeError(f"query path {path} is registered twice")
                self.queries[path] = query
        if store.height:
            self._check_srs(store)
        self.last_block_time = store.block_time  # CheckTx runs txs at the last committed block's time
        self.check_state = CachedState(store)
        self.block_state: CachedState | None = None
        self.staged: StagedBlock | None = None
        self.pending_height = self.pending_time = 0
        self.processed: ExecutedBlock | None = None

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
                if bytes(req.data).startswith(INDEX_PREFIX) and (req.prove or height != self.store.height):
                    raise InvalidQuery("derived index keys are not in the trie: no state proof, latest height only")
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
        self.runner.height, self.runner.time = self.store.height + 1, self.last_block_time
        result = self.runner.run(self.check_state, bytes(req.tx), atomic=True, checking=True)
        self.metrics.checktx.labels("ok" if result.ok else "failed").inc()
        return abci.ResponseCheckTx(
            code=result.code,
            codespace=result.codespace,
            log=result.log,
            data=result.data,
            gas_wanted=1,
            gas_used=1 if result.ok else 0,
        )

    # --- connection: consensus --------------------------------------------------------------

    def init_chain(self, req: abci.RequestInitChain) -> abci.ResponseInitChain:
        genesis = parse_app_genesis(bytes(req.app_state_bytes))
        state = CachedState(self.store)
        auth_keeper.set_chain_id(state, req.chain_id)
        self.runner.chain_id = req.chain_id
        for module in self.modules:
            module.init_genesis(state, genesis)
        self._check_srs(state)
        self.block_state = state
        self.check_state = state.branch()  # genesis funds are spendable before block 1 commits
        self.staged = self.store.stage_root(state.writes)
        log.info("init_chain", chain_id=req.chain_id, accounts=len(genesis.accounts), supply=genesis.total_supply)
        # The genesis set by stake replaces CometBFT's genesis list (none named: CometBFT's stands).
        staking = next(m for m in self.modules if isinstance(m, StakingModule))
        validators = [_validator_update(u) for u in staking.genesis_validators(state)]
        given = {(bytes(v.pub_key.ed25519), v.power) for v in req.validators}
        if validators and given and given != {(bytes(v.pub_key.ed25519), v.power) for v in validators}:
            # clients trust genesis.json's list: a chain must not start with another set than it says
            raise ValueError("genesis.json's validators are not the set the staking genesis gives (keys and powers)")
        return abci.ResponseInitChain(app_hash=self.staged.root, validators=validators)

    def _check_srs(self, state: ReadableState) -> None:
        """Every SRS file genesis pins must be here, byte for byte, before this validator verifies
        a zkml proof: one without them would refuse what the others accept."""
        srs_dir = self.inference.srs_dir
        for logrows, digest in sorted(self.registry.srs_hashes(state).items()):
            if srs_dir is None:
                raise RuntimeError(f"genesis pins an SRS of logrows {logrows}; this validator has no SRS directory")
            pinned_srs(srs_dir, logrows, digest)  # SrsError names the file and the hash

    def _proposal_scratch(self) -> CachedState:
        """A throwaway state over what the next block starts from (genesis writes included)."""
        return CachedState(self.block_state if self.block_state is not None else self.store)

    def _hooks(self, state: CachedState, height: int, time: int, end: bool, facts: BlockFacts) -> BlockResult:
        ctx = BlockContext(state, height, time, self.runner.chain_id, facts.misbehavior, facts.votes)
        result = BlockResult()
        for module in self.modules:
            result.extend(module.end_block(ctx) if end else module.begin_block(ctx))
        return result

    def prepare_proposal(self, req: abci.RequestPrepareProposal) -> abci.ResponsePrepareProposal:
        state = self._proposal_scratch()
        time = req.time.seconds
        facts = _facts(req.misbehavior, req.local_last_commit)
        block = self._hooks(state, req.height, time, end=False, facts=facts)
        self.runner.height, self.runner.time = req.height, time
        chosen: list[bytes] = []
        results: list[TxResult] = []
        size = 0
        for item in req.txs:
            raw = bytes(item)
            if size + len(raw) > req.max_tx_bytes:
                break
            # Drop what would fail entirely (e.g. a tx made stale by one committed just before),
            # but keep a tx whose evidence fails to verify: CheckTx left its proof to the block, so
            # its sender pays the fee for the verification it caused (its messages are undone).
            scratch = state.branch()
            result = self.runner.run(scratch, raw, atomic=False)
            if result.ok or (not result.ante_failed and result.code == codes.INVALID_EVIDENCE):
                scratch.write()
                chosen.append(raw)
                results.append(result)
                size += len(raw)
        block.extend(self._hooks(state, req.height, time, end=True, facts=facts))
        # A successful tx changes state the same way atomic or not, so this is the block's
        # execution: the proposer's own ProcessProposal and FinalizeBlock reuse it.
        self.processed = ExecutedBlock(req.height, time, chosen, state, results, block, facts)
        return abci.ResponsePrepareProposal(txs=chosen)

    def _execute(self, height: int, time: int, txs: list[bytes], facts: BlockFacts) -> ExecutedBlock:
        """Run a block on a branch of the state the next block starts from; nothing is kept."""
        state = self._proposal_scratch()
        block = self._hooks(state, height, time, end=False, facts=facts)
        self.runner.height, self.runner.time = height, time
        results = [self.runner.run(state, raw, atomic=False) for raw in txs]
        block.extend(self._hooks(state, height, time, end=True, facts=facts))
        return ExecutedBlock(height, time, txs, state, results, block, facts)

    def process_proposal(self, req: abci.RequestProcessProposal) -> abci.ResponseProcessProposal:
        txs, facts = [bytes(raw) for raw in req.txs], _facts(req.misbehavior, req.proposed_last_commit)
        block = self._executed(req.height, req.time.seconds, txs, facts)
        rejected = next((r for r in block.results if r.ante_failed), None)
        if rejected is not None:
            log.warning("reject_proposal", height=req.height, reason=rejected.log)
            return abci.ResponseProcessProposal(status=abci.ResponseProcessProposal.REJECT)
        self.processed = block  # FinalizeBlock of this very block reuses the execution
        return abci.ResponseProcessProposal(status=abci.ResponseProcessProposal.ACCEPT)

    def _executed(self, height: int, time: int, txs: list[bytes], facts: BlockFacts) -> ExecutedBlock:
        """This block's execution: the one Prepare/ProcessProposal kept if it is the same block."""
        block = self.processed
        if block is None or (block.height, block.time, block.txs, block.facts) != (height, time, txs, facts):
            block = self._execute(height, time, txs, facts)
        return block

    def finalize_block(self, req: abci.RequestFinalizeBlock) -> abci.ResponseFinalizeBlock:
        with self.metrics.finalize_seconds.time():
            return self._finalize_block(req)

    def _finalize_block(self, req: abci.RequestFinalizeBlock) -> abci.ResponseFinalizeBlock:
        txs, facts = [bytes(raw) for raw in req.txs], _facts(req.misbehavior, req.decided_last_commit)
        executed = self._executed(req.height, req.time.seconds, txs, facts)
        self.processed = None
        state, results, block = executed.state, executed.results, executed.block
        if self.block_state is not None:  # InitChain's writes come first in this block
            state.write()
            state = self.block_state
        # Every validator gets the same block hash here (and ProcessProposal returns no app hash).
        record_block_hash(state, req.height, bytes(req.hash))
        self.block_state = state
        self.staged = self.store.stage_root(state.writes)
        self.pending_height, self.pending_time = req.height, executed.time
        self._committing = (results, block.events)
        return abci.ResponseFinalizeBlock(
            events=[_abci_event(e) for e in block.events],
            tx_results=[_exec_result(r) for r in results],
            validator_updates=[_validator_update(u) for u in block.validator_updates],
            app_hash=self.staged.root,
        )

    def commit(self, req: abci.RequestCommit) -> abci.ResponseCommit:
        if self.staged is None or self.block_state is None:
            raise RuntimeError("commit without a finalized block")
        self.store.commit(self.pending_height, self.staged, self.pending_time)
        if self.snapshots is not None:
            self.snapshots.after_commit(self.pending_height)
        self.last_block_time = self.pending_time
        results, events = self._committing
        self.metrics.committed(self.pending_height, results, events, self.bank.burned(self.store))
        self._committing = ([], [])
        self.block_state, self.staged, self.processed = None, None, None
        self.check_state = CachedState(self.store)
        return abci.ResponseCommit(retain_height=0)

    # --- connection: snapshot (state sync) ---------------------------------------------------

    def list_snapshots(self, req: abci.RequestListSnapshots) -> abci.ResponseListSnapshots:
        found = self.snapshots.list() if self.snapshots is not None else []
        return abci.ResponseListSnapshots(
            snapshots=[
                abci.Snapshot(
                    height=i.height, format=FORMAT, chunks=len(i.chunk_hashes), hash=i.hash, metadata=i.metadata
                )
                for i in found
            ]
        )

    def load_snapshot_chunk(self, req: abci.RequestLoadSnapshotChunk) -> abci.ResponseLoadSnapshotChunk:
        if self.snapshots is None or req.format != FORMAT:
            return abci.ResponseLoadSnapshotChunk()
        return abci.ResponseLoadSnapshotChunk(chunk=self.snapshots.chunk(int(req.height), int(req.chunk)))

    def offer_snapshot(self, req: abci.RequestOfferSnapshot) -> abci.ResponseOfferSnapshot:
        answer = abci.ResponseOfferSnapshot
        if self.store.height:  # only an empty store is restored into
            log.warning(
                "snapshot_refused", height=req.snapshot.height, reason=f"this app holds height {self.store.height}"
            )
            return answer(result=answer.ABORT)
        if req.snapshot.format != FORMAT:
            return answer(result=answer.REJECT_FORMAT)
        try:
            info = SnapshotInfo.from_metadata(
                bytes(req.snapshot.metadata),
                int(req.snapshot.height),
                bytes(req.snapshot.hash),
                int(req.snapshot.chunks),
            )
            self.restoring = Restore(info, bytes(req.app_hash))
        except SnapshotError as exc:
            log.warning("snapshot_refused", height=req.snapshot.height, reason=str(exc))
            return answer(result=answer.REJECT)
        log.info("snapshot_accepted", height=info.height, chunks=len(info.chunk_hashes))
        return answer(result=answer.ACCEPT)

    def apply_snapshot_chunk(self, req: abci.RequestApplySnapshotChunk) -> abci.ResponseApplySnapshotChunk:
        answer = abci.ResponseApplySnapshotChunk
        restoring = self.restoring
        if restoring is None:
            return answer(result=answer.ABORT)
        index = int(req.index)
        try:
            if not restoring.take(index, bytes(req.chunk)):  # tampered in transit, or a lying peer
                log.warning("snapshot_chunk_refused", index=index, sender=req.sender)
                return answer(result=answer.RETRY, refetch_chunks=[index], reject_senders=[req.sender])
            if not restoring.complete:
                return answer(result=answer.ACCEPT)
            info = restoring.info
            self.store.restore(info.height, info.app_hash, info.block_time, restoring.items())
        except (SnapshotError, RestoreMismatch) as exc:
            log.warning("snapshot_rejected", height=restoring.info.height, reason=str(exc))
            self.restoring = None
            return answer(result=answer.REJECT_SNAPSHOT)
        self.restoring = None
        self.runner.chain_id = auth_keeper.chain_id(self.store)
        self._check_srs(self.store)
        self.last_block_time = self.store.block_time
        self.check_state = CachedState(self.store)
        log.info("snapshot_restored", height=info.height, app_hash=info.app_hash.hex())
        return answer(result=answer.ACCEPT)


BLOCK_ID_FLAG_ABSENT = 1  # cometbft.types.BlockIDFlag: the validator's signature is not in the commit


def _facts(misbehavior: Any, last_commit: Any) -> BlockFacts:
    """CometBFT's evidence of a block and the previous block's signatures, in the order they come
    (which every validator gets the same). A NIL vote is a signature too: the validator was there."""
    return BlockFacts(
        tuple(
            Misbehavior(int(m.type), bytes(m.validator.address), int(m.height), int(m.validator.power))
            for m in misbehavior
        ),
        tuple((bytes(v.validator.address), int(v.block_id_flag) != BLOCK_ID_FLAG_ABSENT) for v in last_commit.votes),
    )


def _exec_result(result: TxResult) -> abci.ExecTxResult:
    return abci.ExecTxResult(
        code=result.code,
        codespace=result.codespace,
        log=result.log,
        data=result.data,
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


def _validator_update(update: ValidatorUpdate) -> abci.ValidatorUpdate:
    out = abci.ValidatorUpdate(power=update.power)
    setattr(out.pub_key, update.pub_key_type, update.pub_key)
    return out
