"""``python -m haca.attester``: run the dev attester, or make the DEV root and platform files it needs.

python -m haca.attester init-root DIR
python -m haca.attester issue-platform ROOT_DIR DIR
python -m haca.attester serve --socket PATH --platform-dir DIR [--debug]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from haca.proofs.tee.dev import DEV_LABEL, PLATFORM_CERT_FILE, ROOT_CERT_FILE, issue_dev_platform, make_dev_root

BANNER_RULE = "!" * 72


def banner(*lines: str) -> str:
    """A loud block for stderr: nobody should mistake this process for a real enclave."""
    body = [BANNER_RULE, f"!!  {DEV_LABEL}", *(f"!!  {line}" for line in lines), BANNER_RULE]
    return "\n".join(body)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m haca.attester", description=f"The HACA dev attester ({DEV_LABEL})."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a dev enclave on a Unix socket")
    serve.add_argument("--socket", type=Path, required=True, help="the Unix socket path (made 0600)")
    serve.add_argument("--platform-dir", type=Path, required=True, help="holds platform.key and platform.pem")
    serve.add_argument("--debug", action="store_true", help="mark evidence as from a debug enclave")
    init_root = commands.add_parser("init-root", help="make (or reuse) this devnet's DEV root in DIR")
    init_root.add_argument("directory", type=Path, metavar="DIR")
    issue = commands.add_parser("issue-platform", help="issue (or reuse) a dev platform key in DIR")
    issue.add_argument("root_directory", type=Path, metavar="ROOT_DIR")
    issue.add_argument("directory", type=Path, metavar="DIR")
    return parser


async def _serve(socket_path: Path, platform_dir: Path, debug: bool) -> None:
    from haca.attester.enclave import DevEnclave
    from haca.attester.server import AttesterServer

    enclave = DevEnclave(platform_dir, debug=debug)
    server = AttesterServer(enclave, socket_path)
    await server.start()
    print(
        banner(
            f"enclave address {enclave.address} (new at every start; the key never leaves this process)",
            f"measurement {enclave.measurement.hex()}" + ("  [DEBUG ENCLAVE]" if debug else ""),
            f"socket {socket_path}",
        ),
        file=sys.stderr,
        flush=True,
    )
    serving = asyncio.ensure_future(server.serve_forever())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, serving.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    await server.close()


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
        else:
            from haca.logs import configure_logging

            configure_logging()
            asyncio.run(_serve(args.socket, args.platform_dir, args.debug))
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
