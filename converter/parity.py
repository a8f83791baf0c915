"""The parity report of a conversion: float vs int8 on held-out inputs, on both runtimes.

Written next to the model as `OUT.json` and `OUT.md`. The int8 model runs in a subprocess
per runtime (`converter/tflite_probe.py`): `ai_edge_litert` in this environment, and
`tflite_runtime` 2.14 in its own numpy<2 environment (`make tflite-venv` makes `.venv-tflite`).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from converter.repdata import Examples
from edge.errors import SafeguardError

log = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]
PROBE = Path(__file__).with_name("tflite_probe.py")
NEGATIVE = {"none", "negative", "other", "background", "no", "0", "false"}
PROBE_TIMEOUT_S = 600


@dataclass(frozen=True)
class Runtimes:
    litert_python: Path
    tflite_python: Path | None  # None: tflite_runtime not measured (and said so)


def _probe(python: Path, runtime: str, model: Path, inputs: Path, out: Path) -> dict[str, Any]:
    command = [
        str(python),
        str(PROBE),
        str(model),
        "--runtime",
        runtime,
        "--inputs",
        str(inputs),
        "--out",
        str(out),
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SafeguardError(f"{runtime}: the probe did not run ({exc})") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SafeguardError(f"{runtime}: the probe failed: {done.stderr.strip()[-300:]}")
    info: dict[str, Any] = json.loads(lines[-1])
    if done.returncode != 0 or "error" in info:
        raise SafeguardError(f"{runtime} cannot load {model}: {info.get('error', done.stderr)}")
    return info


def _quantize(x: F32, scale: float, zero: int) -> npt.NDArray[np.int8]:
    return np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)


def _auc(labels: list[int], scores: F32) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def _positive(categories: list[str], positive: str | None) -> str | None:
    present = sorted({c for c in categories if c})
    if positive is not None or len(present) != 2:
        return positive
    named = [c for c in present if c.lower() not in NEGATIVE]
    return named[0] if len(named) == 1 else None


def compare(
    float_out: F32, int8_out: F32, held: Examples, positive: str | None, index: int
) -> dict[str, Any]:
    diff = np.abs(float_out - int8_out)
    if float_out.shape[1] == 1:
        agree = np.mean((float_out[:, 0] >= 0.5) == (int8_out[:, 0] >= 0.5))
    else:
        agree = np.mean(float_out.argmax(1) == int8_out.argmax(1))
    result: dict[str, Any] = {
        "examples": len(float_out),
        "clips": len(set(held.clips)),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "top1_agreement": float(agree),
    }
    target = _positive(held.categories, positive)
    labels = [int(c == target) for c in held.categories]
    if target is not None and 0 < sum(labels) < len(labels):
        result["auc"] = {
            "positive": target,
            "output_index": index,
            "float": _auc(labels, float_out[:, index]),
            "int8": _auc(labels, int8_out[:, index]),
        }
    else:
        result["auc"] = None
        log.info("no ROC AUC: needs labels with one positive category (--positive)")
    return result


def report(  # noqa: PLR0917
    model_path: Path,
    tflite: Path,
    float_out: F32,
    held: Examples,
    runtimes: Runtimes,
    positive: str | None = None,
    index: int = 0,
) -> dict[str, Any]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(tflite))
    src, dst = it.get_input_details()[0], it.get_output_details()[0]
    in_scale, in_zero = src["quantization"]
    out_scale, out_zero = dst["quantization"]
    runs: dict[str, Any] = {}
    outputs: dict[str, F32] = {}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs.npy"
        np.save(inputs, _quantize(held.inputs, in_scale, in_zero))
        pythons = {
            "ai_edge_litert": runtimes.litert_python,
            "tflite_runtime": runtimes.tflite_python,
        }
        for runtime, python in pythons.items():
            if python is None:
                runs[runtime] = {
                    "error": "not measured: no tflite_runtime environment "
                    "(make tflite-venv, or --tflite-python)"
                }
                log.warning("%s: %s", runtime, runs[runtime]["error"])
                continue
            out = Path(tmp) / f"{runtime}.npy"
            runs[runtime] = _probe(python, runtime, tflite, inputs, out)
            raw = np.load(out).astype(np.float32)
            outputs[runtime] = ((raw - out_zero) * out_scale).astype(np.float32)
    int8_out = outputs["ai_edge_litert"]
    result: dict[str, Any] = {
        "model": str(model_path),
        "tflite": str(tflite),
        "size_bytes": {"float": _size(model_path), "int8": tflite.stat().st_size},
        "parity": compare(float_out, int8_out, held, positive, index),
        "runtimes": runs,
    }
    if "tflite_runtime" in outputs:
        cross = np.abs(outputs["tflite_runtime"] - int8_out)
        result["runtime_agreement_max_abs_diff"] = float(cross.max())
    return result


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def markdown(result: dict[str, Any]) -> str:
    p = result["parity"]
    lines = [
        f"# Conversion parity: {Path(result['tflite']).name}",
        "",
        f"From `{result['model']}`; {p['examples']} held-out inputs from {p['clips']} files "
        "(never in the representative set).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| size float / int8 | {result['size_bytes']['float']:,} / "
        f"{result['size_bytes']['int8']:,} bytes |",
        f"| max / mean abs diff (float vs int8) | {p['max_abs_diff']:.4f} / "
        f"{p['mean_abs_diff']:.4f} |",
        f"| top-1 agreement | {p['top1_agreement']:.3f} |",
    ]
    if p["auc"]:
        a = p["auc"]
        lines.append(
            f"| ROC AUC float / int8 ({a['positive']}) | {a['float']:.3f} / {a['int8']:.3f} |"
        )
    for runtime, info in result["runtimes"].items():
        value = (
            f"{info['ms_per_inference']:.2f} ms ({info['version']}, 1 thread)"
            if "ms_per_inference" in info
            else info.get("error", "?")
        )
        lines.append(f"| latency {runtime} | {value} |")
    if "runtime_agreement_max_abs_diff" in result:
        lines.append(
            f"| max abs diff between runtimes | {result['runtime_agreement_max_abs_diff']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], tflite: Path) -> tuple[Path, Path]:
    as_json, as_md = tflite.with_suffix(".json"), tflite.with_suffix(".md")
    as_json.write_text(json.dumps(result, indent=2) + "\n")
    as_md.write_text(markdown(result))
    return as_json, as_md


def default_runtimes(tflite_python: Path | None) -> Runtimes:
    if tflite_python is None:
        here = Path(".venv-tflite/bin/python")
        tflite_python = here if here.exists() else None
    return Runtimes(Path(sys.executable), tflite_python)
