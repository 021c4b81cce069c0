"""`haca enclave`: run the enclave (the tee runtime a node forwards to) and print its measurement."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Annotated

import typer

from haca.cli.common import JsonOption, cli_command, console, emit

enclave_app = typer.Typer(
    help="The enclave: runs tee models, signs the receipts it produced, attests its key.", no_args_is_help=True
)


@enclave_app.command("serve")
@cli_command
def serve(
    socket: Annotated[Path, typer.Option("--socket", help="the Unix socket the node connects to (made 0600)")],
    platform: Annotated[str, typer.Option("--platform", help="auto, dev, tdx, snp or nitro")] = "auto",
    platform_dir: Annotated[
        Path | None, typer.Option("--platform-dir", help="dev: platform.key and platform.pem", show_default=False)
    ] = None,
    gpu: Annotated[str, typer.Option("--gpu", help="GPU evidence: none, dev or nvidia")] = "none",
    models_dir: Annotated[
        Path | None, typer.Option("--models-dir", help="model files named <sha256 hex>.<kind>", show_default=False)
    ] = None,
    hub: Annotated[str, typer.Option("--hub", help="a hub to fetch models the directory lacks")] = "",
    tdx_collateral: Annotated[
        Path | None, typer.Option("--tdx-collateral", help="tdx: the DCAP collateral JSON", show_default=False)
    ] = None,
    snp_vcek: Annotated[
        Path | None, typer.Option("--snp-vcek", help="snp: the VCEK if the host has none", show_default=False)
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="dev: mark evidence as from a debug enclave")] = False,
) -> None:
    """Serve the enclave on a Unix socket; `--platform auto` never falls back to dev."""
    from haca.enclave.main import serve as serve_enclave

    args = argparse.Namespace(
        socket=socket,
        platform=platform,
        platform_dir=platform_dir,
        gpu=gpu,
        models_dir=models_dir,
        hub=hub,
        tdx_collateral=tdx_collateral,
        snp_vcek=snp_vcek,
        debug=debug,
    )
    asyncio.run(serve_enclave(args))


@enclave_app.command("measure")
@cli_command
def measure(
    files: Annotated[bool, typer.Option("--files", help="list the files it covers")] = False,
    json_out: JsonOption = False,
) -> None:
    """The DEV measurement of this tree and its runtimes: what governance approves for the dev platform."""
    from haca.enclave.measure import enclave_measurement, measured_files

    measurement = enclave_measurement().hex()
    covered = measured_files()

    def human() -> None:
        if files:
            for name, path in sorted(covered.items()):
                console.print(f"{path.stat().st_size:>12}  {name}", highlight=False)
        console.print(measurement, highlight=False)

    emit(json_out, {"measurement": measurement, "files": sorted(covered) if files else len(covered)}, human)
