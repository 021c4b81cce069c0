"""One validator: CometBFT + the HACA app, initialised in a home and supervised together.

`haca validator init/run` and the devnet both use these functions. Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haca.chain.home import ValidatorHome, cometbft_binary


class ValidatorError(RuntimeError):
    """A validator home could not be prepared or its processes could not start."""


@dataclass(frozen=True)
class ValidatorIdentity:
    moniker: str
    node_id: str
    address: str  # consensus address (hex)
    pub_key: dict[str, str]  # {"type": "tendermint/PubKeyEd25519", "value": base64}


def init_validator(root: Path, moniker: str) -> ValidatorIdentity:
    """Create keys and config for a validator at `root` (idempotent: existing keys are kept)."""
    home = ValidatorHome(root)
    if not home.config_toml.exists():
        _cometbft(["init", "--home", str(home.cometbft)])
    configure(home, {("", "moniker"): moniker, ("", "proxy_app"): f"unix://{home.socket_path}", ("", "abci"): "socket"})
    return identity(home, moniker)


def identity(home: ValidatorHome, moniker: str = "") -> ValidatorIdentity:
    key = json.loads((home.cometbft / "config" / "priv_validator_key.json").read_text())
    node_id = _cometbft(["show-node-id", "--home", str(home.cometbft)]).strip()
    return ValidatorIdentity(moniker, node_id, key["address"], key["pub_key"])


def configure(home: ValidatorHome, settings: dict[tuple[str, str], Any]) -> None:
    """Set `[section] key = value` entries in the validator's config.toml ("" = top level)."""
    text = home.config_toml.read_text()
    for (section, key), value in settings.items():
        text = set_toml_value(text, section, key, value)
    home.config_toml.write_text(text)


def configure_state_sync(
    home: ValidatorHome, rpc_servers: list[str], trust_height: int, trust_hash: bytes, trust_period_s: int
) -> None:
    """Have CometBFT start this (empty) validator from a peer's state-sync snapshot instead of
    replaying from genesis: its light client starts at `trust_height`/`trust_hash` (a header the
    caller verified) and checks the snapshot's app hash against the chain's headers through
    `rpc_servers` (a primary and witnesses: the one given twice when there is only one)."""
    servers = rpc_servers if len(rpc_servers) > 1 else rpc_servers * 2
    configure(
        home,
        {
            ("statesync", "enable"): True,
            ("statesync", "rpc_servers"): ",".join(servers),
            ("statesync", "trust_height"): trust_height,
            ("statesync", "trust_hash"): trust_hash.hex().upper(),
            ("statesync", "trust_period"): f"{trust_period_s}s",
        },
    )


def set_toml_value(text: str, section: str, key: str, value: Any) -> str:
    """Replace one existing key's value inside one section of a TOML document."""
    rendered = json.dumps(value) if not isinstance(value, bool) else str(value).lower()
    lines = text.split("\n")
    current = ""
    for i, line in enumerate(lines):
        header = re.match(r"^\[([^\]]+)\]\s*$", line)
        if header:
            current = header.group(1)
        elif current == section and re.match(rf"^{re.escape(key)}\s*=", line):
            lines[i] = f"{key} = {rendered}"
            return "\n".join(lines)
    raise ValidatorError(f"config.toml has no key {key!r} in section [{section}]")


def _cometbft(args: list[str]) -> str:
    try:
        done = subprocess.run([cometbft_binary(), *args], capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ValidatorError("cometbft not found: run 'make setup' (it builds .tools/bin/cometbft)") from exc
    if done.returncode != 0:
        raise ValidatorError(f"cometbft {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def run_validator(root: Path, ready_timeout: float = 60.0) -> int:
    """Run the app and CometBFT until either exits or a signal arrives; returns an exit status.

    Both children share this process's group, so a group kill takes all three down at once.
    """
    home = ValidatorHome(root)
    if not home.genesis.exists():
        raise ValidatorError(f"{root} is not a validator home: run 'haca validator init --home {root}'")
    home.logs.mkdir(parents=True, exist_ok=True)
    socket = home.socket_path
    if socket.exists():
        socket.unlink()
    with open(home.logs / "app.log", "ab") as app_log, open(home.logs / "cometbft.log", "ab") as cmt_log:
        app = subprocess.Popen(
            [sys.executable, "-m", "haca.chain.main", "--home", str(root)], stdout=app_log, stderr=subprocess.STDOUT
        )
        children = [app]
        stopping = False

        def stop(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        deadline = time.monotonic() + ready_timeout
        while not socket.exists() and app.poll() is None and not stopping:
            if time.monotonic() > deadline:
                stopping = True
            time.sleep(0.05)
        if app.poll() is None and not stopping:
            children.append(
                subprocess.Popen(
                    [cometbft_binary(), "node", "--home", str(home.cometbft)], stdout=cmt_log, stderr=subprocess.STDOUT
                )
            )
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.2)
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
    codes = [child.returncode for child in children]
    return 0 if stopping else next((c for c in codes if c), 1)


def main() -> None:
    """`python -m haca.chain.supervisor HOME`: the light-weight supervisor the devnet launches."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(run_validator(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
