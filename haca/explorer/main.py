"""Run the explorer as a process:

    python -m haca.explorer.main --home HOME --port N [--host 127.0.0.1]

HOME is a client home (its config.json: chain id, RPC endpoints, the trusted validator set). A
devnet spawns it this way and waits for `GET /healthz`; SIGTERM and SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from haca.client.config import ClientConfig
from haca.explorer.server import create_app


def run_explorer(config: ClientConfig, host: str = "127.0.0.1", port: int = 8700) -> None:
    """Serve the explorer for the chain a client config names, until interrupted (blocks)."""
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning", access_log=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m haca.explorer.main", description="Run the HACA explorer.")
    parser.add_argument("--home", type=Path, required=True, help="client home (config.json)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    run_explorer(ClientConfig.load(args.home), args.host, args.port)


if __name__ == "__main__":
    main()
