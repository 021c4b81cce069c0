"""Where the devnet finds its example models. Standard library only."""

from __future__ import annotations

import os
from pathlib import Path

from haca.chain.home import source_root


def example_models_dir() -> Path:
    """The example models `make setup` builds: $HACA_MODELS, else build/models in the source tree."""
    return Path(os.environ.get("HACA_MODELS") or source_root() / "build" / "models")


def example_circuits_dir() -> Path:
    """The example models' EZKL circuits `make setup` builds (scripts/build_circuits.py)."""
    return Path(os.environ.get("HACA_CIRCUITS") or source_root() / "build" / "circuits")


def dev_srs_dir() -> Path:
    """The development SRS files `make setup` makes (one per logrows; never downloaded)."""
    return Path(os.environ.get("HACA_SRS") or source_root() / "build" / "srs")
