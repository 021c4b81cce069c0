"""The app process of one validator: the ABCI server over the validator's store.

Run as `python -m haca.chain.main --home DIR` (the validator supervisor does this).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path

from prometheus_client import start_http_server

from haca.chain.abci.server import AbciServer
from haca.chain.app import HacaApp
from haca.chain.home import ValidatorHome
from haca.chain.snapshots import Snapshots
from haca.chain.store import CommitStore
from haca.logs import configure_logging

SNAPSHOT_INTERVAL = 500  # blocks; app.json's snapshot_interval overrides it


async def serve(home: ValidatorHome) -> None:
    home.app_dir.mkdir(parents=True, exist_ok=True)
    settings = json.loads(home.app_config.read_text()) if home.app_config.exists() else {}
    store = CommitStore(home.state_db)
    # state-sync snapshots for validators that join later: every `snapshot_interval` blocks (0: none)
    interval = int(settings.get("snapshot_interval", SNAPSHOT_INTERVAL))
    snapshots = Snapshots(home.app_dir / "snapshots", store, interval, int(settings.get("snapshot_keep", 2)))
    app = HacaApp(store, srs_dir=home.srs_dir, snapshots=snapshots)
    if port := int(settings.get("metrics_port", 0)):
        start_http_server(port, addr="127.0.0.1", registry=app.metrics.registry)
    server = AbciServer(app, home.socket_path)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    serving = asyncio.create_task(server.serve_forever())
    await stop.wait()
    serving.cancel()
    app.store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="haca-app", description="HACA ABCI application")
    parser.add_argument("--home", required=True, type=Path)
    args = parser.parse_args(argv)
    configure_logging()
    asyncio.run(serve(ValidatorHome(args.home)))


if __name__ == "__main__":
    main()
