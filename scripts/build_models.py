#!/usr/bin/env python3
"""Build the three example ONNX models that HACA demos and tests run, deterministically.

    .venv/bin/python scripts/build_models.py --out build/models

Writes into the output folder:

* ``iris.onnx``           LogisticRegression on sklearn's iris data (skl2onnx, no ZipMap).
* ``mlp-regressor.onnx``  MLPRegressor (16 hidden units) on sklearn's diabetes data (skl2onnx).
* ``digits-cnn.onnx``     Conv(1->4, 3x3) -> Relu -> MaxPool 2x2 -> Flatten -> Gemm(64->10) -> Softmax on
                          sklearn's 8x8 digits, trained here in plain numpy and assembled with ``onnx.helper``.
* ``manifest.json``       name, file, sha256, input/output signatures, one example input, description.
* ``.stamp``              the sha256 of this script; with it and every file present and intact, a rerun exits at once.

Determinism: every data split and initialisation is seeded, BLAS runs on one thread, the trained weights are
snapped to a grid of 2**-GRID_BITS before they are written (so the last-bit noise of a different BLAS kernel or
libm cannot reach the file), and the ONNX metadata that would carry library versions (producer, ir_version, opsets,
doc strings, metadata_props) is replaced by fixed values. Same inputs, same bytes, same sha256.

Needs: numpy, scikit-learn, scipy (via scikit-learn), onnx, skl2onnx; onnxruntime only for the self-check.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "build" / "models"
STAMP = ".stamp"
MANIFEST = "manifest.json"

# Fixed ONNX header values, so the library versions installed on the building machine do not leak into the bytes.
PRODUCER_NAME = "haca-build-models"
PRODUCER_VERSION = "1"
IR_VERSION = 8  # onnx >= 1.10 / onnxruntime >= 1.10 can load it
OPSET = 15
ML_OPSET = 1  # LinearClassifier, LinearRegressor, Normalizer, Cast all exist in ai.onnx.ml v1
GRID_BITS = 14  # weights are multiples of 2**-14 (~6e-5)
SNAP_MARGIN = 1e-10  # smallest safe distance of a raw weight from a rounding boundary

SEED = 20240601
TEST_FRACTION = 0.2

MODEL_FILES = {"iris": "iris.onnx", "mlp-regressor": "mlp-regressor.onnx", "digits-cnn": "digits-cnn.onnx"}

_BLAS_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


# ---------------------------------------------------------------------------------------------------------------------
# Quick skip


def script_sha256() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def up_to_date(out: Path) -> bool:
    """True when the stamp names this script and every file the manifest lists is present with its recorded sha256."""
    try:
        if (out / STAMP).read_text().strip() != script_sha256():
            return False
        manifest = json.loads((out / MANIFEST).read_text())
        entries = {entry["name"]: entry for entry in manifest["models"]}
        if set(entries) != set(MODEL_FILES):
            return False
        return all(file_sha256(out / entry["file"]) == entry["sha256"] for entry in entries.values())
    except (OSError, ValueError, KeyError, TypeError):
        return False


# ---------------------------------------------------------------------------------------------------------------------
# Data


def split_indices(n: int, seed: int) -> tuple[Any, Any]:
    """A seeded permutation split (legacy RandomState, whose stream numpy keeps stable across versions)."""
    import numpy as np

    order = np.random.RandomState(seed).permutation(n)
    n_test = round(n * TEST_FRACTION)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def load_split(name: str) -> tuple[Any, Any, Any, Any]:
    """(x_train, y_train, x_test, y_test) for one model, with x in the layout and dtype (float64) the model takes.

    The tests import this to score the built models on the same held-out rows.
    """
    from sklearn import datasets

    if name == "iris":
        x, y = datasets.load_iris(return_X_y=True)
        seed = SEED + 1
    elif name == "mlp-regressor":
        x, y = datasets.load_diabetes(return_X_y=True)
        seed = SEED + 2
    elif name == "digits-cnn":
        x, y = datasets.load_digits(return_X_y=True)
        x = (x / 16.0).reshape(-1, 1, 8, 8)  # pixel values 0..16 -> [0, 1], exact in binary
        seed = SEED + 3
    else:
        raise ValueError(f"unknown model {name!r}")
    train, test = split_indices(len(x), seed)
    return x[train], y[train], x[test], y[test]


def snap(values: Any) -> Any:
    """Round to the 2**-GRID_BITS grid and return float64 values that float32 holds exactly."""
    import numpy as np

    scaled = np.asarray(values, dtype=np.float64) * float(2**GRID_BITS)
    # Rounding noise on another machine is ~1e-13 here; a weight this close to a rounding boundary could flip.
    margin = float(np.abs(scaled - np.floor(scaled) - 0.5).min(initial=1.0)) / 2**GRID_BITS
    if margin < SNAP_MARGIN:
        print(
            f"warning: a weight lies {margin:.1e} from a rounding boundary; bytes may vary by machine", file=sys.stderr
        )
    return np.round(scaled) / 2**GRID_BITS


# ---------------------------------------------------------------------------------------------------------------------
# ONNX helpers


def normalize(model: Any, graph_name: str, description: str) -> Any:
    """Fix every header field that would otherwise depend on the installed library versions, and check the model."""
    import onnx

    model.ir_version = IR_VERSION
    model.producer_name = PRODUCER_NAME
    model.producer_version = PRODUCER_VERSION
    model.domain = "ai.haca.examples"
    model.model_version = 1
    model.doc_string = description
    del model.metadata_props[:]
    del model.opset_import[:]
    used = {node.domain for node in model.graph.node}
    model.opset_import.append(onnx.helper.make_opsetid("", OPSET))
    if "ai.onnx.ml" in used:
        model.opset_import.append(onnx.helper.make_opsetid("ai.onnx.ml", ML_OPSET))
    unknown = used - {"", "ai.onnx", "ai.onnx.ml"}
    if unknown:
        raise RuntimeError(f"{graph_name}: unexpected operator domains {sorted(unknown)}")
    graph = model.graph
    graph.name = graph_name
    graph.doc_string = ""
    for node in graph.node:
        node.doc_string = ""
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.doc_string = ""
    for tensor in graph.initializer:
        tensor.doc_string = ""
    onnx.checker.check_model(model, full_check=True)
    return model


def serialize(model: Any) -> bytes:
    return model.SerializeToString(deterministic=True)


def _dims(value: Any) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def signature(value: Any) -> dict[str, Any]:
    import numpy as np
    import onnx

    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)).name
    return {"name": value.name, "dtype": dtype, "shape": _dims(value)}


# ---------------------------------------------------------------------------------------------------------------------
# 1. iris: multinomial logistic regression


def build_iris() -> tuple[Any, Any]:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    x_train, y_train, x_test, _ = load_split("iris")
    # A convex problem solved by Newton steps to a tight tolerance: the optimum (to ~1e-12), not the path, decides the
    # weights, so last-bit arithmetic differences cannot move them across a grid boundary.
    clf = LogisticRegression(C=1.0, solver="newton-cholesky", tol=1e-12, max_iter=1000)
    clf.fit(x_train, y_train)
    clf.coef_ = snap(clf.coef_)
    clf.intercept_ = snap(clf.intercept_)
    onx = convert_sklearn(
        clf,
        initial_types=[("input", FloatTensorType([None, 4]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
    )
    return onx, x_test[:1]


# ---------------------------------------------------------------------------------------------------------------------
# 2. mlp-regressor: one hidden layer on the diabetes data


def build_mlp_regressor() -> tuple[Any, Any]:
    import warnings

    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor

    x_train, y_train, x_test, _ = load_split("mlp-regressor")
    x_mean, x_std = x_train.mean(axis=0), x_train.std(axis=0)
    y_mean, y_std = float(y_train.mean()), float(y_train.std())
    reg = MLPRegressor(
        hidden_layer_sizes=(16,),
        activation="relu",
        solver="adam",
        alpha=10.0,
        learning_rate_init=3e-3,
        max_iter=1000,
        n_iter_no_change=1000,
        tol=0.0,
        random_state=SEED,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # fixed epoch budget by design
        reg.fit((x_train - x_mean) / x_std, (y_train - y_mean) / y_std)
    # Fold the input standardisation into layer 1 and the target scaling into the output layer, so the ONNX model
    # takes the raw diabetes features and predicts the raw target.
    w1, w2 = reg.coefs_
    b1, b2 = reg.intercepts_
    w1_raw = w1 / x_std[:, None]
    b1_raw = b1 - (x_mean / x_std) @ w1
    reg.coefs_ = [snap(w1_raw), snap(w2 * y_std)]
    reg.intercepts_ = [snap(b1_raw), snap(b2 * y_std + y_mean)]
    onx = convert_sklearn(
        reg,
        initial_types=[("input", FloatTensorType([None, 10]))],
        final_types=[("prediction", FloatTensorType([None, 1]))],
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
    )
    return onx, x_test[:1]


# ---------------------------------------------------------------------------------------------------------------------
# 3. digits-cnn: a tiny CNN trained in numpy


def _im2col(x: Any) -> Any:
    """(N, 1, 8, 8) -> (N, 64, 9): for each output pixel (row-major) its 3x3 zero-padded neighbourhood (row-major)."""
    import numpy as np

    padded = np.pad(x[:, 0], ((0, 0), (1, 1), (1, 1)))
    cols = [padded[:, i : i + 8, j : j + 8] for i in range(3) for j in range(3)]
    return np.stack(cols, axis=-1).reshape(len(x), 64, 9)


def cnn_forward(params: dict[str, Any], x: Any) -> tuple[Any, dict[str, Any]]:
    """Logits (N, 10) with the exact semantics of the ONNX graph (NCHW, Flatten in c,h,w order)."""
    import numpy as np

    cols = _im2col(x)  # (N, 64, 9)
    z = cols @ params["conv_w"].reshape(4, 9).T + params["conv_b"]  # (N, 64, 4)
    z = z.transpose(0, 2, 1).reshape(-1, 4, 8, 8)
    a = np.maximum(z, 0.0)
    windows = a.reshape(-1, 4, 4, 2, 4, 2).transpose(0, 1, 2, 4, 3, 5).reshape(-1, 4, 4, 4, 4)
    arg = windows.argmax(axis=-1)
    pooled = np.take_along_axis(windows, arg[..., None], axis=-1)[..., 0]  # (N, 4, 4, 4)
    flat = pooled.reshape(len(x), 64)
    logits = flat @ params["fc_w"].T + params["fc_b"]
    return logits, {"cols": cols, "z": z, "arg": arg, "flat": flat}


def cnn_train(x: Any, y: Any, epochs: int = 30, batch: int = 32, lr: float = 0.05) -> dict[str, Any]:
    import numpy as np

    rng = np.random.RandomState(SEED)
    params = {
        "conv_w": rng.normal(0.0, np.sqrt(2.0 / 9), size=(4, 1, 3, 3)),
        "conv_b": np.zeros(4),
        "fc_w": rng.normal(0.0, np.sqrt(1.0 / 64), size=(10, 64)),
        "fc_b": np.zeros(10),
    }
    velocity = {k: np.zeros_like(v) for k, v in params.items()}
    onehot = np.eye(10)[y]
    for epoch in range(epochs):
        step = lr * 0.5 * (1 + np.cos(np.pi * epoch / epochs))  # cosine decay
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            xb, tb = x[idx], onehot[idx]
            logits, cache = cnn_forward(params, xb)
            logits = logits - logits.max(axis=1, keepdims=True)
            prob = np.exp(logits)
            prob /= prob.sum(axis=1, keepdims=True)
            d_logits = (prob - tb) / len(idx)
            grads = {"fc_w": d_logits.T @ cache["flat"], "fc_b": d_logits.sum(axis=0)}
            d_pooled = (d_logits @ params["fc_w"]).reshape(-1, 4, 4, 4)
            d_windows = np.zeros((len(idx), 4, 4, 4, 4))
            np.put_along_axis(d_windows, cache["arg"][..., None], d_pooled[..., None], axis=-1)
            d_a = d_windows.reshape(-1, 4, 4, 4, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(-1, 4, 8, 8)
            d_z = np.where(cache["z"] > 0, d_a, 0.0).reshape(-1, 4, 64).transpose(0, 2, 1)  # (N, 64, 4)
            grads["conv_w"] = (d_z.reshape(-1, 4).T @ cache["cols"].reshape(-1, 9)).reshape(4, 1, 3, 3)
            grads["conv_b"] = d_z.sum(axis=(0, 1))
            for k in params:
                velocity[k] = 0.9 * velocity[k] - step * (grads[k] + 1e-4 * params[k])
                params[k] = params[k] + velocity[k]
    return params


def build_digits_cnn() -> tuple[Any, Any]:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    x_train, y_train, x_test, _ = load_split("digits-cnn")
    params = {k: snap(v) for k, v in cnn_train(x_train, y_train).items()}

    def init(name: str, value: Any) -> Any:
        return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)

    nodes = [
        # strides and dilations spelled out: EZKL (the zkml prover) requires them on Conv.
        helper.make_node(
            "Conv",
            ["input", "conv_w", "conv_b"],
            ["conv"],
            name="conv",
            kernel_shape=[3, 3],
            pads=[1] * 4,
            strides=[1, 1],
            dilations=[1, 1],
        ),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("MaxPool", ["relu"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits-cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 10]),
        ],
        initializer=[init(k, params[k]) for k in ("conv_w", "conv_b", "fc_w", "fc_b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return model, x_test[:1]


# ---------------------------------------------------------------------------------------------------------------------
# Build, check, manifest

DESCRIPTIONS = {
    "iris": (
        "Multinomial logistic regression on the iris data set (4 features: sepal length, sepal width, petal length, "
        "petal width in cm). Outputs label (0 setosa, 1 versicolor, 2 virginica) and the 3 class probabilities."
    ),
    "mlp-regressor": (
        "MLP regressor (10 -> 16 ReLU -> 1) on the diabetes data set (10 baseline features as scaled by scikit-learn's "
        "load_diabetes). Outputs the predicted disease progression one year after baseline (about 25..346)."
    ),
    "digits-cnn": (
        "Small CNN (Conv 1->4 3x3 pad 1, ReLU, MaxPool 2x2, Flatten, Gemm 64->10, Softmax) on the 8x8 digits data "
        "set. Input is one grey-scale image, pixel values scaled to [0, 1] (raw value / 16). Outputs the 10 logits "
        "and the 10 class probabilities for the digits 0..9."
    ),
}

BUILDERS = {"iris": build_iris, "mlp-regressor": build_mlp_regressor, "digits-cnn": build_digits_cnn}


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build(out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    (out / STAMP).unlink(missing_ok=True)
    entries = []
    for name, builder in BUILDERS.items():
        started = time.perf_counter()
        model, example = builder()
        model = normalize(model, name, DESCRIPTIONS[name])
        data = serialize(model)
        _write_atomic(out / MODEL_FILES[name], data)
        inputs = [signature(v) for v in model.graph.input]
        assert len(inputs) == 1, name
        entries.append(
            {
                "name": name,
                "file": MODEL_FILES[name],
                "sha256": hashlib.sha256(data).hexdigest(),
                "input": inputs[0],
                "outputs": [signature(v) for v in model.graph.output],
                "example_input": example.tolist(),
                "description": DESCRIPTIONS[name],
            }
        )
        print(f"built {MODEL_FILES[name]}: {len(data)} bytes in {time.perf_counter() - started:.1f}s")
    manifest = {"version": 1, "models": entries}
    _write_atomic(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def evaluate(out: Path, manifest: dict[str, Any]) -> dict[str, float]:
    """Run every model with onnxruntime (CPU) on its example input and score it on its held-out split."""
    import numpy as np
    import onnxruntime as ort

    scores: dict[str, float] = {}
    for entry in manifest["models"]:
        name = entry["name"]
        sess = ort.InferenceSession(str(out / entry["file"]), providers=["CPUExecutionProvider"])
        example = np.asarray(entry["example_input"], dtype=np.float32)
        results = sess.run(None, {entry["input"]["name"]: example})
        for result, spec in zip(results, entry["outputs"], strict=True):
            assert result.dtype.name == spec["dtype"], (name, spec, result.dtype)
            assert all(want in (None, got) for want, got in zip(spec["shape"], result.shape, strict=True)), name
        _, _, x_test, y_test = load_split(name)
        x_test = x_test.astype(np.float32)
        if name == "digits-cnn":
            logits = np.concatenate([sess.run(["logits"], {"input": x[None]})[0] for x in x_test])
            scores[name] = float((logits.argmax(axis=1) == y_test).mean())
            metric = "accuracy"
        elif name == "iris":
            labels = sess.run(["label"], {"input": x_test})[0]
            scores[name] = float((labels == y_test).mean())
            metric = "accuracy"
        else:
            pred = sess.run(None, {"input": x_test})[0].reshape(-1)
            scores[name] = float(1.0 - ((pred - y_test) ** 2).sum() / ((y_test - y_test.mean()) ** 2).sum())
            metric = "R^2"
        print(f"{name}: example output {[r.tolist() for r in results]}")
        print(f"{name}: held-out {metric} {scores[name]:.4f} on {len(y_test)} rows; sha256 {entry['sha256']}")
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: build/models)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the stamp says the files are current")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime self-check")
    args = parser.parse_args(argv)
    out: Path = args.out
    if not args.force and up_to_date(out):
        return 0
    for var in _BLAS_THREAD_VARS:  # one BLAS thread: set before numpy loads
        os.environ[var] = "1"
    started = time.perf_counter()
    manifest = build(out)
    if not args.no_check:
        evaluate(out, manifest)
    (out / STAMP).write_text(script_sha256() + "\n")
    print(f"models in {out} ({time.perf_counter() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
