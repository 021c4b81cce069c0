#!/usr/bin/env python3
"""Build the EZKL circuits of the example models that the devnet offers in zkml, once per machine.

    .venv/bin/python scripts/build_circuits.py --models build/models --out build/circuits --srs build/srs

For each model in ZKML_MODELS: a development SRS of the size calibration settles on (build/srs,
made with ezkl.gen_srs: never downloaded), then gen_settings → calibrate (on the model's example
input) → compile → setup into out/<name>/ (reused while the model bytes and EZKL are the same).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from haca.proofs.zk.circuit import build_circuit  # noqa: E402
from haca.proofs.zk.srs import make_dev_srs  # noqa: E402

# iris uses ai.onnx.ml operators EZKL refuses. digits-cnn calibrates to logrows 17 on its example
# (2m20s to build here, a multi-GB proving key): too heavy for every `make setup`; build it with
# `--model digits-cnn`. mlp-regressor: logrows 15, ~330 MB proving key, ~7 s a proof.
ZKML_MODELS = ("mlp-regressor",)
MAX_LOGROWS = 17  # what this 2-core machine proves in seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, default=ROOT / "build" / "models")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "circuits")
    parser.add_argument("--srs", type=Path, default=ROOT / "build" / "srs")
    parser.add_argument("--model", action="append", help="build these instead (repeatable)")
    args = parser.parse_args()
    entries = {m["name"]: m for m in json.loads((args.models / "manifest.json").read_text())["models"]}
    index = {}
    for name in args.model or ZKML_MODELS:
        entry = entries[name]
        first_row = [float(v) for v in np.asarray(entry["example_input"][0], dtype=np.float64).reshape(-1)]
        circuit = build_circuit(
            args.models / entry["file"],
            [first_row],
            args.out / name,
            lambda logrows: make_dev_srs(args.srs, logrows),
            max_logrows=MAX_LOGROWS,
        )
        index[name] = circuit.to_json()
        print(f"circuit {name}: logrows {circuit.logrows}, vk {circuit.vk_hash[:23]}…")
    (args.out / "index.json").write_text(json.dumps(index, indent=1))


if __name__ == "__main__":
    main()
