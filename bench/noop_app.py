"""A do-nothing ABCI app served by HACA's own socket server (haca.chain.abci.server).

Every tx is accepted in CheckTx and in blocks; the app hash is a running SHA-256 of the txs.
`bench/chain_tps.py` runs it as a third network: what a Python app behind CometBFT's socket
client costs before doing any work of its own, between kvstore (in-process Go) and HACA.

    .venv/bin/python bench/noop_app.py SOCKET_PATH
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sys
from pathlib import Path

from tendermint.abci import types_pb2 as abci

from haca.chain.abci.base import BaseApplication
from haca.chain.abci.server import AbciServer


class NoopApp(BaseApplication):
    def __init__(self) -> None:
        self.height = 0
        self.app_hash = b""
        self.pending = b""

    def info(self, req: abci.RequestInfo) -> abci.ResponseInfo:
        return abci.ResponseInfo(data="noop", last_block_height=self.height, last_block_app_hash=self.app_hash)

    def init_chain(self, req: abci.RequestInitChain) -> abci.ResponseInitChain:
        return abci.ResponseInitChain()

    def query(self, req: abci.RequestQuery) -> abci.ResponseQuery:
        return abci.ResponseQuery(code=0, height=self.height)

    def check_tx(self, req: abci.RequestCheckTx) -> abci.ResponseCheckTx:
        return abci.ResponseCheckTx(code=0, gas_wanted=1)

    def prepare_proposal(self, req: abci.RequestPrepareProposal) -> abci.ResponsePrepareProposal:
        chosen, size = [], 0
        for raw in req.txs:
            if size + len(raw) > req.max_tx_bytes:
                break
            chosen.append(raw)
            size += len(raw)
        return abci.ResponsePrepareProposal(txs=chosen)

    def process_proposal(self, req: abci.RequestProcessProposal) -> abci.ResponseProcessProposal:
        return abci.ResponseProcessProposal(status=abci.ResponseProcessProposal.ACCEPT)

    def finalize_block(self, req: abci.RequestFinalizeBlock) -> abci.ResponseFinalizeBlock:
        digest = hashlib.sha256(self.app_hash)
        for raw in req.txs:
            digest.update(raw)
        self.pending = digest.digest()
        return abci.ResponseFinalizeBlock(
            tx_results=[abci.ExecTxResult(code=0, gas_used=1) for _ in req.txs], app_hash=self.pending
        )

    def commit(self, req: abci.RequestCommit) -> abci.ResponseCommit:
        self.height += 1
        self.app_hash = self.pending
        return abci.ResponseCommit()


async def serve(socket_path: Path) -> None:
    server = AbciServer(NoopApp(), socket_path)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    serving = asyncio.create_task(server.serve_forever())
    await stop.wait()
    serving.cancel()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1])))
