"""`haca explorer`: the web page that shows the network at work and checks it in the browser."""

from __future__ import annotations

from typing import Annotated

import typer

from haca.cli.common import HomeOption, cli_command, console, load_config


@cli_command
def explorer(
    port: Annotated[int, typer.Option("--port", help="port to serve the page on")] = 8700,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    home: HomeOption = None,
) -> None:
    """Serve the explorer for the chain in the client config (its RPC endpoints and trusted
    validator set) until interrupted. Receipt pages are checked in the browser, not trusted."""
    from haca.explorer.main import run_explorer

    _, config = load_config(home)
    console.print(f"explorer for {config.chain_id} on http://{host}:{port}/ (Ctrl-C stops it)")
    run_explorer(config, host, port)
