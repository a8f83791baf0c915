"""Load a .tflite in one runtime, run given inputs, time it: a standalone script.

It imports nothing from the project, so it runs in any venv with a TFLite runtime, e.g. the
`tflite_runtime` 2.14 one (numpy<2) beside the main environment:

    python tflite_probe.py MODEL.tflite --runtime tflite_runtime --inputs X.npy --out Y.npy

prints one JSON line: runtime, version, input/output details, ms per inference.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from typing import Any

import numpy as np


def _interpreter(runtime: str) -> tuple[Any, str]:
    module = importlib.import_module(f"{runtime}.interpreter")
    package = importlib.import_module(runtime)
    return module.Interpreter, str(getattr(package, "__version__", "?"))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--runtime", choices=["ai_edge_litert", "tflite_runtime"], required=True)
    parser.add_argument("--inputs", help=".npy of inputs [n, ...] already in the input dtype")
    parser.add_argument("--out", help=".npy to write the raw outputs to")
    parser.add_argument("--runs", type=int, default=20, help="timed inferences")
    args = parser.parse_args()
    try:
        cls, version = _interpreter(args.runtime)
        it = cls(model_path=args.model, num_threads=1)
        it.allocate_tensors()
    except Exception as exc:  # noqa: BLE001 - the report is the point
        sys.stdout.write(json.dumps({"runtime": args.runtime, "error": str(exc)}) + "\n")
        return 1
    src, dst = it.get_input_details()[0], it.get_output_details()[0]
    shape = (1, *src["shape"][1:])
    inputs = np.load(args.inputs) if args.inputs else np.zeros(shape, src["dtype"])
    outputs = []
    for x in inputs:
        it.set_tensor(src["index"], x[None].astype(src["dtype"]))
        it.invoke()
        outputs.append(np.array(it.get_tensor(dst["index"])).reshape(-1))
    it.set_tensor(src["index"], inputs[:1].astype(src["dtype"]))
    it.invoke()  # warm
    start = time.perf_counter()
    for _ in range(args.runs):
        it.invoke()
    ms = (time.perf_counter() - start) / max(args.runs, 1) * 1000
    if args.out:
        np.save(args.out, np.stack(outputs))
    info = {
        "runtime": args.runtime,
        "version": version,
        "numpy": np.__version__,
        "input": {
            "shape": [int(d) for d in src["shape"]],
            "dtype": np.dtype(src["dtype"]).name,
            "quantization": [float(q) for q in src["quantization"]],
        },
        "output": {
            "shape": [int(d) for d in dst["shape"]],
            "dtype": np.dtype(dst["dtype"]).name,
            "quantization": [float(q) for q in dst["quantization"]],
        },
        "ms_per_inference": round(ms, 3),
        "runs": args.runs,
    }
    sys.stdout.write(json.dumps(info) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
