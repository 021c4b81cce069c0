"""`haca hub`: run a model hub (content-addressed blob store over HTTP)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from haca.cli.common import HomeOption, JsonOption, cli_command, client_home, console, emit
from haca.hub.store import DEFAULT_MAX_SIZE

hub_app = typer.Typer(help="Run a model hub (content-addressed blobs over HTTP).", no_args_is_help=True)


@hub_app.command("run")
@cli_command
def run(
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port to listen on")],
    root: Annotated[
        Path | None, typer.Option("--root", help="directory for the blobs (default: <home>/hub)", show_default=False)
    ] = None,
    host: Annotated[str, typer.Option("--host", help="address to bind")] = "127.0.0.1",
    max_size: Annotated[int, typer.Option("--max-size", min=0, help="largest blob in bytes")] = DEFAULT_MAX_SIZE,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Serve a hub in the foreground until Ctrl-C / SIGTERM."""
    from haca.hub.main import run_hub  # uvicorn and fastapi load only for this command

    root = (root or client_home(home) / "hub").expanduser().resolve()
    url = f"http://{host}:{port}"
    emit(
        json_out,
        {"url": url, "root": str(root), "max_size": max_size},
        lambda: console.print(f"hub serving {root} on {url} (Ctrl-C to stop)"),
    )
    sys.stdout.flush()
    run_hub(root, host, port, max_size)
