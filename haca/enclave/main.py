"""``python -m haca.enclave`` (also ``haca enclave``): run the enclave, print its measurement, or make
the DEV root and platform files the dev platform needs.

python -m haca.enclave serve --socket PATH [--platform auto|dev|tdx|snp|nitro] [--platform-dir DIR]
                             [--gpu none|dev|nvidia] [--models-dir DIR] [--hub URL] [--debug]
python -m haca.enclave measure [--files]
python -m haca.enclave init-root DIR
python -m haca.enclave issue-platform ROOT_DIR DIR
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from haca.enclave.evidence import GPU_PLATFORMS, PLATFORMS, PlatformUnavailable
from haca.proofs.tee.dev import DEV_LABEL, PLATFORM_CERT_FILE, ROOT_CERT_FILE, issue_dev_platform, make_dev_root

BANNER_RULE = "!" * 72


def banner(*lines: str) -> str:
    """A loud block for stderr: nobody should mistake the dev platform for a real enclave."""
    body = [BANNER_RULE, f"!!  {DEV_LABEL}", *(f"!!  {line}" for line in lines), BANNER_RULE]
    return "\n".join(body)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="haca enclave", description="The HACA enclave: runs models, signs receipts.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the enclave on a Unix socket")
    serve.add_argument("--socket", type=Path, required=True, help="the Unix socket path (made 0600)")
    serve.add_argument("--platform", choices=PLATFORMS, default="auto", help="where the evidence comes from")
    serve.add_argument("--platform-dir", type=Path, default=None, help="dev: holds platform.key and platform.pem")
    serve.add_argument("--tdx-collateral", type=Path, default=None, help="tdx: the DCAP collateral JSON file")
    serve.add_argument("--snp-vcek", type=Path, default=None, help="snp: the VCEK, if the host's table has none")
    serve.add_argument("--gpu", choices=GPU_PLATFORMS, default="none", help="GPU evidence to attach")
    serve.add_argument("--models-dir", type=Path, default=None, help="model files named <sha256 hex>.<kind>")
    serve.add_argument("--hub", default="", help="a hub to fetch models the directory lacks")
    serve.add_argument("--debug", action="store_true", help="dev: mark evidence as from a debug enclave")
    measure = commands.add_parser("measure", help="print the DEV measurement of this tree and runtime")
    measure.add_argument("--files", action="store_true", help="list the files it covers, with their sizes")
    init_root = commands.add_parser("init-root", help="make (or reuse) this devnet's DEV root in DIR")
    init_root.add_argument("directory", type=Path, metavar="DIR")
    issue = commands.add_parser("issue-platform", help="issue (or reuse) a dev platform key in DIR")
    issue.add_argument("root_directory", type=Path, metavar="ROOT_DIR")
    issue.add_argument("directory", type=Path, metavar="DIR")
    return parser


async def serve(args: argparse.Namespace) -> None:
    from haca.enclave.evidence import open_gpus, open_platform
    from haca.enclave.measure import enclave_measurement
    from haca.enclave.models import ModelStore
    from haca.enclave.runtime import Enclave
    from haca.enclave.server import EnclaveServer

    measurement = enclave_measurement()
    if args.platform != "dev":
        refuse_loaded_code_from_the_environment()
    platform = open_platform(
        args.platform, measurement, args.platform_dir, args.debug, args.tdx_collateral, args.snp_vcek
    )
    gpus = open_gpus(args.gpu, args.platform_dir)
    # only now: a refusal above leaves the process's (or a test runner's) output streams alone
    from haca.logs import configure_logging

    configure_logging()
    models = ModelStore(args.models_dir, args.hub)
    enclave = Enclave(platform, measurement, models, gpus)
    server = EnclaveServer(enclave, args.socket)
    await server.start()
    lines = (
        f"platform {platform.name}" + (f", GPU evidence {gpus.name}" if gpus is not None else ", no GPU evidence"),
        f"enclave address {enclave.address} (new at every start; the key never leaves this process)",
        f"measurement {measurement.hex()}" + ("  [DEBUG ENCLAVE]" if args.debug else ""),
        f"socket {args.socket}",
    )
    print(banner(*lines) if platform.dev else "\n".join(lines), file=sys.stderr, flush=True)
    serving = asyncio.ensure_future(server.serve_forever())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, serving.cancel)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await serving
    finally:
        await server.close()
        models.close()


# Variables that load code the measurement does not cover into the process (a preloaded library,
# other module paths, a startup file): on hardware the image is measured, not the host's environment.
UNMEASURED_ENV = ("LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONUSERBASE")


def refuse_loaded_code_from_the_environment() -> None:
    found = sorted(name for name in UNMEASURED_ENV if os.environ.get(name))
    if found:
        names = ", ".join(found)
        raise PlatformUnavailable(f"refusing to run as an enclave with {names} set: it loads unmeasured code")


def measure(files: bool) -> None:
    from haca.enclave.measure import enclave_measurement, measured_files

    if files:
        for name, path in sorted(measured_files().items()):
            print(f"{path.stat().st_size:>12}  {name}")
    print(enclave_measurement().hex())


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        if args.command == "init-root":
            make_dev_root(args.directory)
            print(args.directory / ROOT_CERT_FILE)
            print(banner("DEV root: trust it on dev networks only"), file=sys.stderr)
        elif args.command == "issue-platform":
            issue_dev_platform(args.root_directory, args.directory)
            print(args.directory / PLATFORM_CERT_FILE)
        elif args.command == "measure":
            measure(args.files)
        else:
            asyncio.run(serve(args))
    except (OSError, ValueError, RuntimeError, PlatformUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
