"""`haca attestation verify`: the chain's attestation verifiers as an operator tool."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from haca.cli.common import JsonOption, cli_command, console, emit
from haca.client.errors import HacaError
from haca.proofs.tee.attestation import Attestation, verify_attestation
from haca.proofs.tee.binding import measurement_id
from haca.proofs.tee.claims import AttestationError, AttestationPolicy, Claims
from haca.proofs.tee.dev import DEV_LABEL
from haca.proofs.tee.nvidia import verify_nvidia_report

attestation_app = typer.Typer(help="Verify TEE attestation evidence offline.", no_args_is_help=True)
FORMAT_NAMES = ("nitro", "tdx", "sgx", "snp", "dev")  # CPU TEEs (an enclave key's evidence); GPUs: "nvidia"


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
    """The claims of the evidence in `path`, verified as `fmt` at `now` through `verify_attestation`;
    the options a format needs are checked here first so a missing one reads as a usage error."""
    if fmt not in FORMAT_NAMES:
        raise HacaError(f"--format must be one of {list(FORMAT_NAMES)}")
    roots: dict[str, bytes] = {}
    endorsements = b""
    if fmt == "nitro" and root is not None:
        roots["nitro"] = root.read_bytes()
    elif fmt in ("tdx", "sgx"):
        if collateral is None:
            raise HacaError(f"--format {fmt} needs --collateral (the pinned DCAP collateral JSON)")
        endorsements = collateral.read_bytes()
    elif fmt == "snp":
        if vcek is None:
            raise HacaError("--format snp needs --vcek (the chip's VCEK certificate, DER)")
        endorsements = vcek.read_bytes()
        if chain is not None:
            roots["snp"] = chain.read_bytes()
    elif fmt == "dev":
        if root is None:
            raise HacaError("--format dev needs --root (the DEV root certificate PEM of the network)")
        roots["dev"] = root.read_bytes()
    return verify_attestation(Attestation(fmt, path.read_bytes(), endorsements), now, roots)


@attestation_app.command("verify")
@cli_command
def verify(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, metavar="FILE")],
    fmt: Annotated[str, typer.Option("--format", help="nitro, tdx, sgx, snp, dev or nvidia")],
    at: Annotated[int, typer.Option("--at", help="verify as of this time (unix seconds)")],
    collateral: Annotated[Path | None, typer.Option("--collateral", help="tdx/sgx: DCAP collateral JSON")] = None,
    root: Annotated[
        Path | None,
        typer.Option("--root", help="nitro: root certificate PEM (default: AWS's); dev: the DEV root PEM (required)"),
    ] = None,
    vcek: Annotated[Path | None, typer.Option("--vcek", help="snp: the VCEK certificate (DER)")] = None,
    chain: Annotated[
        Path | None, typer.Option("--chain", help="snp: ASK+ARK PEM (default: AMD's); nvidia: the GPU's chain PEM")
    ] = None,
    allow_debug: Annotated[bool, typer.Option("--allow-debug", help="accept a debug enclave")] = False,
    allow_status: Annotated[
        list[str] | None, typer.Option("--allow-status", help="TCB statuses to accept besides UpToDate")
    ] = None,
    nonce: Annotated[str | None, typer.Option("--nonce", help="nvidia: the nonce (hex) the report must bind")] = None,
    json_out: JsonOption = False,
) -> None:
    """Print the Claims of FILE; exit 0 only when it verifies at --at and the policy holds
    (default: debug refused, TCB status UpToDate), else 1 naming the step that failed. `--format
    nvidia`: an NVIDIA GPU report (SPDM GET_MEASUREMENTS + signed MEASUREMENTS) with its certificate
    chain (--chain, leaf first) to the pinned NVIDIA Device Identity root (or --root), bound to --nonce."""
    if fmt == "nvidia":
        _verify_gpu(file, at, chain, root, nonce, json_out)
        return
    policy = AttestationPolicy(allow_debug, ("UpToDate", *(allow_status or ())))
    try:
        claims = verify_file(file, fmt, at, collateral, root, vcek, chain)
        policy.check(claims)
        mid = measurement_id(claims)
    except AttestationError as exc:
        raise AttestationRefused(str(exc)) from exc
    doc = {**claims.to_json(), "measurement_id": mid}
    if claims.dev:
        doc["warning"] = DEV_LABEL

    def human() -> None:
        if claims.dev:
            console.print(f"[bold red]!! {DEV_LABEL}: made by the dev attester, not a hardware enclave !![/bold red]")
        console.print(f"[bold]{claims.format}[/bold] evidence verifies (at {at}); TCB {claims.tcb_status}")
        console.print(f"  {'measurement_id':<18} {mid}")
        for name, value in doc["measurements"].items():
            console.print(f"  {name:<18} {value}")
        console.print(f"  {'report_data':<18} {doc['report_data']}")
        console.print(f"  {'debug':<18} {claims.debug}")
        console.print(f"  {'time':<18} {claims.time}")

    emit(json_out, doc, human)


def _verify_gpu(file: Path, at: int, chain: Path | None, root: Path | None, nonce: str | None, json_out: bool) -> None:
    if chain is None or nonce is None:
        raise HacaError("--format nvidia needs --chain (the GPU's certificate chain PEM, leaf first) and --nonce (hex)")
    try:
        expected = bytes.fromhex(nonce.removeprefix("0x"))
    except ValueError:
        raise HacaError("--nonce must be hex") from None
    try:
        report = verify_nvidia_report(
            file.read_bytes(), chain.read_bytes(), at, expected, root.read_bytes() if root is not None else None
        )
    except AttestationError as exc:
        raise AttestationRefused(str(exc)) from exc
    doc = report.to_json()

    def human() -> None:
        console.print(f"[bold]nvidia[/bold] GPU report verifies (at {at}), bound to nonce {report.nonce.hex()}")
        console.print(f"  {'driver_version':<18} {report.driver_version}")
        console.print(f"  {'measurements':<18} {len(report.measurements)}")
        console.print(f"  {'root':<18} {doc['root']}")

    emit(json_out, doc, human)


@attestation_app.command("rim-import")
@cli_command
def rim_import(
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, readable=True, metavar="FILE...")],
    root: Annotated[
        Path | None, typer.Option("--root", help="the RIM root certificate PEM (default: NVIDIA's, pinned)")
    ] = None,
    at: Annotated[
        int | None, typer.Option("--at", help="verify the signers' certificates as of this time (unix seconds)")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Verify NVIDIA RIMs (signed SWID tags of a GPU driver or VBIOS) and print the TEE policy
    fragment {"gpu_golden": {...}} holding their golden values. The authority proposes it as a
    MsgSetTeePolicy (tee/set_policy); note that it replaces the whole gpu_golden field, so merge
    it with the entries already in /tee/policy first."""
    import time

    from haca.proofs.tee.rim import import_rim

    now = int(time.time()) if at is None else at
    root_pem = root.read_bytes() if root is not None else None
    entries = []
    for file in files:
        try:
            entries.append(import_rim(file.read_bytes(), root_pem, now))
        except AttestationError as exc:
            raise AttestationRefused(f"{file}: {exc}") from exc
    golden: dict[str, dict[str, list[str]]] = {}
    for entry in entries:
        if entry.key in golden:
            raise HacaError(f"two RIMs give golden values for {entry.key}")
        golden.update(entry.policy_entry())
    doc = {"gpu_golden": dict(sorted(golden.items()))}

    def human() -> None:
        for entry in entries:
            console.print(
                f"[bold]{entry.key}[/bold]: {len(entry.measurements)} golden measurements,"
                f" signed by {entry.signer_chain[0]}"
            )
        console.print_json(data=doc)

    emit(json_out, doc, human)
