"""Run a hub as a process:

    python -m haca.hub.main --root DIR --port N [--host 127.0.0.1] [--max-size BYTES]
        [--uploader ADDRESS[=BYTES]]... [--uploaders FILE] [--default-quota BYTES]

Only the listed uploader accounts may upload (each up to its quota; `--default-quota` where none is
given); without any, the hub is read-only. A devnet spawns it this way and waits for `GET /healthz`;
SIGTERM and SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

import uvicorn

from haca.hub.api import create_app
from haca.hub.quota import DEFAULT_QUOTA, UploadLedger, build_quotas, parse_size
from haca.hub.store import DEFAULT_MAX_SIZE, BlobStore


def run_hub(
    root: Path,
    host: str = "127.0.0.1",
    port: int = 8600,
    max_size: int = DEFAULT_MAX_SIZE,
    quotas: Mapping[str, int] | None = None,
) -> None:
    """Serve the blob store under `root` on host:port until interrupted (blocks). `quotas`: the
    uploader accounts and their byte quotas (None or empty: nobody may upload)."""
    store = BlobStore(root, max_size=max_size)
    app = create_app(store, UploadLedger(store.root, quotas or {}))
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m haca.hub.main", description="Run a HACA model hub.")
    parser.add_argument("--root", type=Path, required=True, help="directory that holds the blobs")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--max-size", type=_size, default=DEFAULT_MAX_SIZE, help="largest blob in bytes (2 GiB)")
    parser.add_argument(
        "--uploader",
        action="append",
        default=[],
        metavar="ADDRESS[=BYTES]",
        help="an account that may upload, with its quota (repeatable)",
    )
    parser.add_argument("--uploaders", type=Path, help='JSON file {"0x…": BYTES | "10GiB" | null}')
    parser.add_argument(
        "--default-quota", type=_size, default=DEFAULT_QUOTA, help="quota of an uploader given without one (10 GiB)"
    )
    args = parser.parse_args(argv)
    try:
        quotas = build_quotas(args.uploader, args.uploaders, args.default_quota)
    except ValueError as exc:
        parser.error(str(exc))
    run_hub(args.root, args.host, args.port, args.max_size, quotas)


if __name__ == "__main__":
    main()
