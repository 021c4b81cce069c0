"""The Module protocol: app.py wires a list of modules and knows none of their messages; hooks and
handlers see the header's height and time; end-block hooks can return validator updates."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

from tendermint.abci import types_pb2 as abci

from haca.chain import app as app_module
from haca.chain.events import Event
from haca.chain.genesis import AppGenesis, GenesisAccount
from haca.chain.module import BlockContext, BlockResult, Module, ValidatorUpdate
from haca.chain.tx import Handler, TxContext
from haca.crypto.keys import PrivateKey
from haca.types.bank import MsgSend
from tests.unit.chain.apphelpers import FEES, Node, block_time, signed_tx

ALICE, BOB = PrivateKey.from_seed("modules-alice"), PrivateKey.from_seed("modules-bob")
GENESIS = AppGenesis(fees=FEES, accounts=(GenesisAccount(ALICE.address, 10**12),))


def test_app_py_names_no_message_type_of_any_module() -> None:
    tree = ast.parse(Path(app_module.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert not {name for name in imported if name.startswith("Msg")}
    type_modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {m for m in type_modules if m.startswith("haca.types.")} == {"haca.types.encoding"}


def test_every_module_contributes_its_handlers_and_queries(tmp_path: Path) -> None:
    node = Node(tmp_path / "state.db")
    names = [m.name for m in node.app.modules]
    assert names == ["auth", "bank", "staking", "registry", "tee", "inference", "gov"]
    for module in node.app.modules:
        assert set(module.handlers()) <= set(node.app.runner.handlers)
        assert set(module.queries()) <= set(node.app.queries)
    assert len(node.app.queries) == sum(len(m.queries()) for m in node.app.modules)


class Recorder(Module):
    """A module that records what its hooks and its handler saw, and asks for a validator update."""

    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int]] = []

    def handlers(self) -> Mapping[type, Handler]:
        def on_send(ctx: TxContext, msg: MsgSend) -> list[Event]:
            self.seen.append(("tx", ctx.height, ctx.time))
            return []

        return {MsgSend: on_send}

    def begin_block(self, ctx: BlockContext) -> BlockResult:
        self.seen.append(("begin", ctx.height, ctx.time))
        return BlockResult([Event("recorder_begin", {"height": str(ctx.height)})])

    def end_block(self, ctx: BlockContext) -> BlockResult:
        self.seen.append(("end", ctx.height, ctx.time))
        return BlockResult(validator_updates=[ValidatorUpdate("ed25519", b"\x01" * 32, 0)])


def test_hooks_and_handlers_see_the_header_height_and_time_and_updates_reach_cometbft(tmp_path: Path) -> None:
    node = Node(tmp_path / "state.db")
    recorder = Recorder()
    node.app.modules.append(recorder)
    node.app.runner.register(MsgSend, recorder.handlers()[MsgSend])
    node.init(GENESIS)
    response = node.block([signed_tx(ALICE, 0, MsgSend(BOB.address, 5))])
    assert recorder.seen == [("begin", 1, block_time(1)), ("tx", 1, block_time(1)), ("end", 1, block_time(1))]
    assert [e.type for e in response.events] == ["recorder_begin"]
    (update,) = response.validator_updates
    assert (update.pub_key.ed25519, update.power) == (b"\x01" * 32, 0)
    # CheckTx runs at the last committed block's time.
    recorder.seen.clear()
    node.check(signed_tx(ALICE, 1, MsgSend(BOB.address, 5)))
    assert recorder.seen == [("tx", 2, block_time(1))]
    assert node.reopen().app.last_block_time == block_time(1)  # kept across a restart


def test_a_proposal_executed_at_another_time_is_not_reused(tmp_path: Path) -> None:
    node = Node(tmp_path / "state.db")
    recorder = Recorder()
    node.app.modules.append(recorder)
    node.init(GENESIS)
    prepare = abci.RequestPrepareProposal(height=1, max_tx_bytes=10**6)
    prepare.time.seconds = 111
    node.app.prepare_proposal(prepare)
    finalize = abci.RequestFinalizeBlock(height=1)
    finalize.time.seconds = 222
    node.app.finalize_block(finalize)
    assert [s for s in recorder.seen if s[0] == "begin"] == [("begin", 1, 111), ("begin", 1, 222)]


class VoteRecorder(Recorder):
    def begin_block(self, ctx: BlockContext) -> BlockResult:
        self.seen.append(("votes", ctx.height, ctx.votes))  # type: ignore[arg-type]
        return BlockResult()


def votes_seen(recorder: VoteRecorder) -> list:
    return [(s[1], s[2]) for s in recorder.seen if s[0] == "votes"]


def test_the_block_hooks_see_the_commit_each_abci_call_reports_and_a_proposal_with_other_votes_is_not_reused(
    tmp_path: Path,
) -> None:
    node = Node(tmp_path / "state.db")
    recorder = VoteRecorder()
    node.app.modules.append(recorder)
    node.init(GENESIS)
    signer, absent = b"\x11" * 20, b"\x22" * 20
    process = abci.RequestProcessProposal(height=1)
    for address, flag in ((signer, 2), (absent, 1)):
        vote = process.proposed_last_commit.votes.add(block_id_flag=flag)
        vote.validator.address = address
    node.app.process_proposal(process)
    same = abci.RequestFinalizeBlock(height=1)
    same.decided_last_commit.CopyFrom(process.proposed_last_commit)
    node.app.finalize_block(same)  # the same block: ProcessProposal's execution is reused
    assert votes_seen(recorder) == [(1, ((signer, True), (absent, False)))]
    node.app.commit(abci.RequestCommit())
    recorder.seen.clear()
    process = abci.RequestProcessProposal(height=2)
    process.proposed_last_commit.votes.add(block_id_flag=2).validator.address = signer
    node.app.process_proposal(process)
    other = abci.RequestFinalizeBlock(height=2)
    other.decided_last_commit.votes.add(block_id_flag=3).validator.address = absent  # a NIL vote: there
    node.app.finalize_block(other)
    assert votes_seen(recorder) == [(2, ((signer, True),)), (2, ((absent, True),))]
