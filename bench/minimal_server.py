"""The baseline for bench/node_overhead.py: the least an HTTP endpoint can do around the same
onnxruntime session (parse JSON, run, answer JSON), served by uvicorn like the node."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI


def create_app(model_path: str) -> FastAPI:
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    input_meta = session.get_inputs()[0]
    dtype = {"tensor(float)": np.float32, "tensor(int64)": np.int64}[input_meta.type]
    names = [o.name for o in session.get_outputs()]
    app = FastAPI()

    @app.post("/infer")
    def infer(body: dict[str, Any]) -> dict[str, Any]:
        outputs = session.run(names, {input_meta.name: np.asarray(body["input"], dtype=dtype)})
        return {"output": {name: out.tolist() for name, out in zip(names, outputs, strict=True)}}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(args.model), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
