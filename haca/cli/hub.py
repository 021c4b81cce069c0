"""`haca hub`: run a model hub (content-addressed blob store over HTTP)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from haca.cli.common import HomeOption, JsonOption, cli_command, client_home, console, emit, err_console
from haca.hub.quota import DEFAULT_QUOTA, build_quotas, parse_size
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
    uploader: Annotated[
        list[str] | None,
        typer.Option(
            "--uploader",
            metavar="ADDRESS[=BYTES]",
            help="an account that may upload, with its byte quota (e.g. 0xab…=10GiB); repeatable",
            show_default=False,
        ),
    ] = None,
    uploaders: Annotated[
        Path | None,
        typer.Option(
            "--uploaders",
            exists=True,
            dir_okay=False,
            readable=True,
            help='JSON file of uploaders: {"0x…": BYTES | "10GiB" | null}',
            show_default=False,
        ),
    ] = None,
    default_quota: Annotated[
        str, typer.Option("--default-quota", help="quota of an uploader given without one (bytes, or e.g. 10GiB)")
    ] = f"{DEFAULT_QUOTA >> 30}GiB",
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Serve a hub in the foreground until Ctrl-C / SIGTERM. Only --uploader accounts may upload
    (signed, within their quota); anyone may download."""
    from haca.hub.main import run_hub  # uvicorn and fastapi load only for this command

    quotas = build_quotas(uploader or (), uploaders, parse_size(default_quota))
    root = (root or client_home(home) / "hub").expanduser().resolve()
    url = f"http://{host}:{port}"

    def human() -> None:
        console.print(f"hub serving {root} on {url} (Ctrl-C to stop)")
        if quotas:
            console.print(f"{len(quotas)} uploader(s) may upload")
        else:
            err_console.print("no --uploader given: the hub is read-only (every upload is refused)")

    emit(
        json_out,
        {"url": url, "root": str(root), "max_size": max_size, "uploaders": quotas},
        human,
    )
    sys.stdout.flush()
    run_hub(root, host, port, max_size, quotas)
