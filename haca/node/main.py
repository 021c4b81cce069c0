"""`python -m haca.node.main --home DIR [--key NAME] [--port N] …`: the node process a devnet
spawns (the CLI's `haca node run` calls the same `run_node`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from haca.logs import configure_logging
from haca.node.service import NodeSettings, run_node
from haca.node.settler import FlushPolicy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="haca-node")
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--key", default="node0")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--endpoint", default="")
    parser.add_argument("--models", default="", help="comma-separated model names (default: all registered)")
    parser.add_argument("--price", type=int, default=0)
    parser.add_argument("--modes", default="vanilla", help="comma-separated modes to serve (vanilla, tee, zkml)")
    parser.add_argument(
        "--enclave", type=Path, default=None, help="tee: the enclave's Unix socket (haca enclave serve)"
    )
    parser.add_argument("--circuits", type=Path, default=None, help="zkml: built circuits, a folder per model")
    parser.add_argument("--srs-dir", type=Path, default=None, help="zkml: the network's SRS files")
    parser.add_argument("--provers", type=int, default=1, help="zkml: prover worker processes")
    parser.add_argument("--llm-slots", type=int, default=1, help="LLMs: requests a model runs at once")
    parser.add_argument("--llm-queue", type=int, default=8, help="LLMs: requests that may wait for a slot (then 429)")
    parser.add_argument("--stake", type=int, default=None, help="bond at least this (default: the minimum)")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--hub", default="")
    parser.add_argument("--batch-size", type=int, default=64, help="receipts per settlement tx")
    parser.add_argument("--flush-interval", type=float, default=1.0, help="seconds between settlement flushes")
    parser.add_argument(
        "--settle-batches",
        action="store_true",
        help="settle allowance-paid vanilla/tee receipts in MsgSettleBatch (one root signature per batch)",
    )
    parser.add_argument("--batch-max", type=int, default=1000, help="batches: receipts per MsgSettleBatch")
    parser.add_argument("--batch-idle", type=float, default=0.5, help="batches: flush after this many idle seconds")
    parser.add_argument("--batch-max-age", type=float, default=5.0, help="batches: the oldest waits at most this")
    parser.add_argument(
        "--store", default="", help="a PostgreSQL DSN: serve as one worker of a node sharing this receipt store"
    )
    parser.add_argument("--worker", default="", help="this worker's name in the shared store")
    args = parser.parse_args(argv)
    configure_logging()
    run_node(
        NodeSettings(
            home=args.home,
            key=args.key,
            host=args.host,
            port=args.port,
            endpoint=args.endpoint,
            models=[m for m in args.models.split(",") if m],
            price=args.price,
            modes=tuple(sorted({m for m in args.modes.split(",") if m})),
            enclave=args.enclave,
            circuits=args.circuits,
            srs_dir=args.srs_dir,
            provers=args.provers,
            llm_slots=args.llm_slots,
            llm_queue=args.llm_queue,
            stake=args.stake,
            data_dir=args.data_dir,
            hub=args.hub,
            batch_size=args.batch_size,
            flush_interval=args.flush_interval,
            batches=FlushPolicy(args.batch_max, args.batch_idle, args.batch_max_age) if args.settle_batches else None,
            store=args.store,
            worker=args.worker,
        )
    )


if __name__ == "__main__":
    main()
