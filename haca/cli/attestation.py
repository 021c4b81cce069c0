"""`haca attestation verify`: the chain's attestation verifiers as an operator tool."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from haca.cli.common import JsonOption, cli_command, console, emit
from haca.client.errors import HacaError
from haca.proofs.tee.claims import AttestationError, AttestationPolicy, Claims

attestation_app = typer.Typer(help="Verify TEE attestation evidence offline.", no_args_is_help=True)
FORMAT_NAMES = ("nitro", "tdx", "sgx", "snp")


class AttestationRefused(HacaError):
    """The evidence does not verify, or the policy refuses it."""

    code = "attestation_refused"


def verify_file(
    path: Path,
    fmt: str,
    now: int,
    collateral: Path | None = None,
    root: Path | None = None,
    vcek: Path | None = None,
    chain: Path | None = None,
) -> Claims:
    data = path.read_bytes()
    if fmt == "nitro":
        from haca.proofs.tee.nitro import verify_nitro

        return verify_nitro(data, now, root.read_bytes() if root else None)
    if fmt in ("tdx", "sgx"):
        try:
            from haca.proofs.tee.dcap import verify_dcap
        except ImportError as exc:
            raise HacaError(f"--format {fmt}: DCAP verification is not in this build ({exc})") from exc
        if collateral is None:
            raise HacaError(f"--format {fmt} needs --collateral (the pinned DCAP collateral JSON)")
        claims = verify_dcap(data, collateral.read_text(), now)
        if claims.format != fmt:
            raise AttestationRefused(f"format: the quote is {claims.format}, not {fmt}")
        return claims
    if fmt == "snp":
        from haca.proofs.tee.snp import verify_snp

        if vcek is None:
            raise HacaError("--format snp needs --vcek (the chip's VCEK certificate, DER)")
        return verify_snp(data, vcek.read_bytes(), now, chain.read_bytes() if chain else None)
    raise HacaError(f"--format must be one of {list(FORMAT_NAMES)}")


@attestation_app.command("verify")
@cli_command
def verify(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, metavar="FILE")],
    fmt: Annotated[str, typer.Option("--format", help="nitro, tdx, sgx or snp")],
    at: Annotated[int, typer.Option("--at", help="verify as of this time (unix seconds)")],
    collateral: Annotated[Path | None, typer.Option("--collateral", help="tdx/sgx: DCAP collateral JSON")] = None,
    root: Annotated[Path | None, typer.Option("--root", help="nitro: root certificate PEM (default: AWS's)")] = None,
    vcek: Annotated[Path | None, typer.Option("--vcek", help="snp: the VCEK certificate (DER)")] = None,
    chain: Annotated[Path | None, typer.Option("--chain", help="snp: ASK+ARK PEM (default: AMD's)")] = None,
    allow_debug: Annotated[bool, typer.Option("--allow-debug", help="accept a debug enclave")] = False,
    allow_status: Annotated[
        list[str] | None, typer.Option("--allow-status", help="TCB statuses to accept besides UpToDate")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Print the Claims of FILE; exit 0 only when it verifies at --at and the policy holds
    (default: debug refused, TCB status UpToDate), else 1 naming the step that failed."""
    policy = AttestationPolicy(allow_debug, ("UpToDate", *(allow_status or ())))
    try:
        claims = verify_file(file, fmt, at, collateral, root, vcek, chain)
        policy.check(claims)
    except AttestationError as exc:
        raise AttestationRefused(str(exc)) from exc
    doc = claims.to_json()

    def human() -> None:
        console.print(f"[bold]{claims.format}[/bold] evidence verifies (at {at}); TCB {claims.tcb_status}")
        for name, value in doc["measurements"].items():
            console.print(f"  {name:<18} {value}")
        console.print(f"  {'report_data':<18} {doc['report_data']}")
        console.print(f"  {'debug':<18} {claims.debug}")
        console.print(f"  {'time':<18} {claims.time}")

    emit(json_out, doc, human)
