"""TFLite runtime behind one small interface: `ai_edge_litert` first, `tflite_runtime` second."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.errors import ModelError

log = logging.getLogger(__name__)


def _interpreter_class() -> tuple[Any, str]:
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite_runtime"
    except ImportError:
        raise ModelError(
            "no TFLite runtime: install the device extra (pip install 'safeguard[device]') "
            "or tflite-runtime"
        ) from None


class TFLiteModel:
    """One loaded model. `keep` names intermediate tensors to read after `invoke`."""

    def __init__(self, path: Path, threads: int = 1, keep_intermediates: bool = False) -> None:
        cls, self.runtime = _interpreter_class()
        kwargs: dict[str, Any] = {"model_path": str(path), "num_threads": threads}
        if keep_intermediates:
            kwargs["experimental_preserve_all_tensors"] = True
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self._it = cls(**kwargs)
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{path}: the runtime cannot load it ({exc})") from None
        self.inputs = self._it.get_input_details()
        self.outputs = self._it.get_output_details()
        self._names = {d["name"]: d for d in self._it.get_tensor_details()}
        log.debug("loaded %s with %s (%d threads)", path, self.runtime, threads)

    def tensor_index(self, name: str) -> int:
        try:
            return int(self._names[name]["index"])
        except KeyError:
            raise ModelError(f"the model has no tensor named {name!r}") from None

    def quantization(self, index: int) -> tuple[float, int]:
        for detail in self._names.values():
            if detail["index"] == index:
                scale, zero = detail["quantization"]
                return float(scale), int(zero)
        raise ModelError(f"the model has no tensor {index}")

    def invoke(self, data: npt.NDArray[Any]) -> None:
        self._it.set_tensor(self.inputs[0]["index"], data)
        self._it.invoke()

    def get(self, index: int) -> npt.NDArray[Any]:
        return np.asarray(self._it.get_tensor(index))
