"""EZKL circuits as artefacts: an ONNX model compiled once into settings, a compiled circuit, a
verifying key and a proving key, each named by its sha256 so a manifest can pin them.

`build_circuit` runs EZKL's gen_settings → calibrate → compile → setup against the network's SRS
and caches the result in its directory (keyed by the model's bytes, the visibility and the SRS), so
the cost is paid once per machine. Shapes must be static: a free batch dimension is fixed to 1.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from haca.proofs.zk.srs import file_sha256

SETTINGS, COMPILED, VK, PK, MODEL, META = (
    "settings.json",
    "circuit.ezkl",
    "vk.key",
    "pk.key",
    "model.onnx",
    "circuit.json",
)
VISIBILITIES = ("public", "hashed", "private")


class CircuitError(RuntimeError):
    """EZKL could not build the circuit (an operator it does not support, a failed setup, …)."""


@dataclass(frozen=True)
class Circuit:
    directory: Path
    model_sha256: str  # sha256:<hex> of the ONNX bytes it was built from (the model id)
    logrows: int
    settings_hash: str
    compiled_hash: str
    vk_hash: str
    srs_hash: str
    input_visibility: str
    output_visibility: str
    input_scales: tuple[int, ...]
    output_scales: tuple[int, ...]

    @property
    def settings_path(self) -> Path:
        return self.directory / SETTINGS

    @property
    def compiled_path(self) -> Path:
        return self.directory / COMPILED

    @property
    def vk_path(self) -> Path:
        return self.directory / VK

    @property
    def pk_path(self) -> Path:
        return self.directory / PK

    def to_json(self) -> dict[str, object]:
        doc = asdict(self)
        doc["directory"] = str(self.directory)
        doc["input_scales"], doc["output_scales"] = list(self.input_scales), list(self.output_scales)
        return doc


def _static_model(source: Path, target: Path) -> None:
    import onnx

    model = onnx.load(str(source))
    for value in list(model.graph.input) + list(model.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if not dim.dim_value:  # a free (batch) dimension: EZKL circuits have fixed shapes
                dim.dim_value = 1
    onnx.save(model, str(target))


def circuit_from_files(directory: Path, model_sha256: str, srs: Path) -> Circuit:
    """A circuit from artefacts fetched into `directory` (settings.json, circuit.ezkl, vk.key,
    pk.key), described as `build_circuit` would, so `load_circuit` finds it next time."""
    doc = json.loads((directory / SETTINGS).read_text())
    run_args = doc["run_args"]
    circuit = Circuit(
        directory,
        model_sha256,
        int(run_args["logrows"]),
        file_sha256(directory / SETTINGS),
        file_sha256(directory / COMPILED),
        file_sha256(directory / VK),
        file_sha256(srs),
        visibility_name(run_args["input_visibility"]).lower(),
        visibility_name(run_args["output_visibility"]).lower(),
        tuple(int(s) for s in _scales(doc, "input")),
        tuple(int(s) for s in doc.get("model_output_scales", [])),
    )
    (directory / META).write_text(
        json.dumps({"key": {"fetched": model_sha256}, "circuit": circuit.to_json()}, indent=1)
    )
    return circuit


def visibility_name(value: Any) -> str:
    """EZKL writes a visibility as "Public" or as {"Hashed": {…}}: its name ("" if neither)."""
    if isinstance(value, str):
        return value
    return str(next(iter(value))) if isinstance(value, dict) and len(value) == 1 else ""


def load_circuit(directory: Path) -> Circuit | None:
    """A circuit `build_circuit` made in `directory`, if it is complete there."""
    return _cached(directory, None)


def _cached(directory: Path, key: dict[str, str] | None) -> Circuit | None:
    meta = directory / META
    if not meta.exists():
        return None
    doc = json.loads(meta.read_text())
    if key is not None and doc.get("key") != key:
        return None
    if not all((directory / f).exists() for f in (SETTINGS, COMPILED, VK, PK)):
        return None
    c = doc["circuit"]
    return Circuit(
        directory,
        c["model_sha256"],
        c["logrows"],
        c["settings_hash"],
        c["compiled_hash"],
        c["vk_hash"],
        c["srs_hash"],
        c["input_visibility"],
        c["output_visibility"],
        tuple(c["input_scales"]),
        tuple(c["output_scales"]),
    )


def build_circuit(
    model_path: Path,
    calibration: Sequence[Sequence[float]],
    directory: Path,
    srs_for: Callable[[int], Path],
    input_visibility: str = "hashed",
    output_visibility: str = "public",
    max_logrows: int | None = None,
) -> Circuit:
    """Compile `model_path` into a circuit in `directory` (reused when already built from the same
    bytes, visibility and SRS). `calibration` is one flat list of floats per model input;
    `srs_for(logrows)` gives the SRS file for the size calibration settles on."""
    import ezkl

    if input_visibility not in VISIBILITIES or output_visibility not in VISIBILITIES:
        raise ValueError(f"visibility must be one of {VISIBILITIES}")
    model_sha256 = file_sha256(model_path)
    key = {
        "model": model_sha256,
        "input": input_visibility,
        "output": output_visibility,
        "ezkl": str(getattr(ezkl, "__version__", "")),
    }
    if (cached := _cached(directory, key)) is not None:
        return cached
    directory.mkdir(parents=True, exist_ok=True)
    model, settings = directory / MODEL, directory / SETTINGS
    _static_model(model_path, model)
    data = directory / "calibration.json"
    data.write_text(json.dumps({"input_data": [list(map(float, values)) for values in calibration]}))
    args: Any = ezkl.PyRunArgs()  # its stub declares no attributes
    args.input_visibility, args.output_visibility, args.param_visibility = input_visibility, output_visibility, "fixed"
    try:
        if not ezkl.gen_settings(str(model), str(settings), py_run_args=args):
            raise CircuitError(f"ezkl gen_settings failed for {model_path}")
        # EZKL's own defaults for the safety margin and rebase multipliers (its stub marks them required)
        if not ezkl.calibrate_settings(str(data), str(model), str(settings), "resources", max_logrows=max_logrows):  # type: ignore[call-arg]
            raise CircuitError(f"ezkl calibrate_settings failed for {model_path}")
        if not ezkl.compile_circuit(str(model), str(directory / COMPILED), str(settings)):
            raise CircuitError(f"ezkl compile_circuit failed for {model_path}")
        doc = json.loads(settings.read_text())
        logrows = int(doc["run_args"]["logrows"])
        srs = srs_for(logrows)
        if not ezkl.setup(str(directory / COMPILED), str(directory / VK), str(directory / PK), str(srs), None, False):
            raise CircuitError(f"ezkl setup failed for {model_path}")
    except (RuntimeError, ValueError) as exc:
        if isinstance(exc, CircuitError):
            raise
        raise CircuitError(f"ezkl could not build a circuit for {model_path}: {exc}") from exc
    circuit = Circuit(
        directory,
        model_sha256,
        logrows,
        file_sha256(settings),
        file_sha256(directory / COMPILED),
        file_sha256(directory / VK),
        file_sha256(srs),
        input_visibility,
        output_visibility,
        tuple(int(s) for s in _scales(doc, "input")),
        tuple(int(s) for s in doc.get("model_output_scales", [])),
    )
    (directory / META).write_text(json.dumps({"key": key, "circuit": circuit.to_json()}, indent=1))
    return circuit


def _scales(settings: dict[str, object], which: str) -> list[int]:
    scales = settings.get(f"model_{which}_scales")
    if isinstance(scales, list):
        return [int(s) for s in scales]
    run_args = settings.get("run_args")
    return [int(run_args[f"{which}_scale"])] if isinstance(run_args, dict) else []


def sha256_hex(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
