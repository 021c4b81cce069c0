"""Shared CLI plumbing: options, output as a table or JSON, one-line errors."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from haca.client.chain import ChainClient, TxOutcome
from haca.client.config import ClientConfig, KeyStore, connect, resolve_home
from haca.client.errors import HacaError
from haca.hub.errors import HubError

# Output piped to a file or a test is not cut at 80 columns; an error stays on one line.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, soft_wrap=True)

HomeOption = Annotated[
    Path | None, typer.Option("--home", envvar="HACA_HOME", help="client home (default ~/.haca)", show_default=False)
]
JsonOption = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]

F = TypeVar("F", bound=Callable[..., Any])


def error_code(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) else type(exc).__name__


def cli_command(func: F) -> F:
    """Turn expected failures into one readable line (or a JSON error) and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (HacaError, HubError, RuntimeError, ValueError, OSError) as exc:
            message = str(exc) or type(exc).__name__
            if kwargs.get("json_out"):
                print(json.dumps({"error": {"code": error_code(exc), "message": message}}))
            else:
                err_console.print(f"[red]error:[/red] {message}", highlight=False)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def emit(json_out: bool, value: Any, human: Callable[[], None] | None = None) -> None:
    if json_out or human is None:
        print(json.dumps(value, indent=None if json_out else 2))
    else:
        human()


def client_home(home: Path | None) -> Path:
    return resolve_home(home)


def load_config(home: Path | None) -> tuple[Path, ClientConfig]:
    resolved = resolve_home(home)
    return resolved, ClientConfig.load(resolved)


def keystore(home: Path | None) -> KeyStore:
    return KeyStore(resolve_home(home))


def send_msg(
    home: Path | None,
    from_: str | None,
    msg: Any,
    after: Callable[[ChainClient, str], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Sign `msg` with the key `from_` (default: the home's), send it, wait for it to commit; its
    hash and height, with what `after(chain, signer address)` reads once it has. `msg` may be made
    from the chain id and the signer's address: msg(chain_id, signer address)."""
    config = ClientConfig.load(client_home(home))
    key = keystore(home).get(from_ or config.default_key).key
    if callable(msg):
        msg = msg(config.chain_id, key.address)
    chain = connect(config)
    try:
        outcome = chain.send_msgs(key, (msg,), wait=True)
        extra = after(chain, key.address) if after is not None else {}
    finally:
        chain.close()
    assert isinstance(outcome, TxOutcome)
    return {"hash": outcome.hash, "height": outcome.height, **extra}
