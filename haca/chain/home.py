"""Where things live in a validator home, and where the pinned CometBFT binary is. Standard
library only: the supervisor imports it and must start fast."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

_MAX_UNIX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux


@dataclass(frozen=True)
class ValidatorHome:
    root: Path

    @property
    def cometbft(self) -> Path:
        return self.root / "cometbft"

    @property
    def app_dir(self) -> Path:
        return self.root / "app"

    @property
    def app_config(self) -> Path:
        """Optional settings of the app process: {"metrics_port": N} serves Prometheus metrics on
        127.0.0.1:N."""
        return self.app_dir / "app.json"

    @property
    def state_db(self) -> Path:
        return self.app_dir / "state.db"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def socket_path(self) -> Path:
        return unix_socket_path(self.root / "app.sock")

    @property
    def srs_dir(self) -> Path:
        """zkml: the genesis SRS files (kzg<logrows>.srs), copied here with genesis.json."""
        return self.root / "srs"

    @property
    def genesis(self) -> Path:
        return self.cometbft / "config" / "genesis.json"

    @property
    def config_toml(self) -> Path:
        return self.cometbft / "config" / "config.toml"


def unix_socket_path(path: Path) -> Path:
    """`path`, or a short stand-in under the temp dir when it is too long for a Unix socket."""
    path = path.resolve()
    if len(str(path)) <= _MAX_UNIX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"haca-{digest}.sock"


def source_root() -> Path:
    return Path(__file__).resolve().parents[2]


def cometbft_binary() -> str:
    """The pinned CometBFT: $HACA_COMETBFT, else .tools/bin in the source tree, else PATH."""
    explicit = os.environ.get("HACA_COMETBFT")
    if explicit:
        return explicit
    local = source_root() / ".tools" / "bin" / "cometbft"
    return str(local) if local.exists() else "cometbft"
