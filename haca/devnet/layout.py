"""Where the devnet finds its example models. Standard library only."""

from __future__ import annotations

import os
from pathlib import Path

from haca.chain.home import source_root


def example_models_dir() -> Path:
    """The example models `make setup` builds: $HACA_MODELS, else build/models in the source tree."""
    return Path(os.environ.get("HACA_MODELS") or source_root() / "build" / "models")
