"""Run a hub as a process: `python -m haca.hub.main --root DIR --port N [--host 127.0.0.1]`.

A devnet spawns it this way and waits for `GET /healthz`; SIGTERM and SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from haca.hub.api import create_app
from haca.hub.store import DEFAULT_MAX_SIZE, BlobStore


def run_hub(root: Path, host: str = "127.0.0.1", port: int = 8600, max_size: int = DEFAULT_MAX_SIZE) -> None:
    """Serve the blob store under `root` on host:port until interrupted (blocks)."""
    app = create_app(BlobStore(root, max_size=max_size))
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m haca.hub.main", description="Run a HACA model hub.")
    parser.add_argument("--root", type=Path, required=True, help="directory that holds the blobs")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE, help="largest blob in bytes (2 GiB)")
    args = parser.parse_args(argv)
    run_hub(args.root, args.host, args.port, args.max_size)


if __name__ == "__main__":
    main()
