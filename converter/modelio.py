"""Loading what users train: Keras 3 `.keras`, legacy Keras 2 `.h5`, TensorFlow SavedModel.

Keras 3 reads most Keras 2 `.h5` files itself. Where it refuses a layer's legacy arguments
(`batch_input_shape`, `groups` on depthwise convolutions, `time_major` on RNNs, ...) the
file's JSON config is rewritten in memory and the weights are read from the same file, which
is never modified.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.errors import SafeguardError

log = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]

# Keras 2 arguments that some Keras 3 layers refuse, by layer class.
_DROP: dict[str, tuple[str, ...]] = {
    "DepthwiseConv2D": ("groups",),
    "DepthwiseConv1D": ("groups",),
    "Conv2DTranspose": ("groups",),
    "LSTM": ("time_major", "implementation"),
    "GRU": ("time_major", "implementation"),
    "SimpleRNN": ("time_major",),
}


class ModelLoadError(SafeguardError):
    """The model file cannot be read, or uses a layer this tool cannot load."""


@dataclass
class FloatModel:
    """A loaded float model: its input shape (without batch) and a batch predictor."""

    path: Path
    input_shape: tuple[int, ...]
    predict: Callable[[F32], F32]
    keras_model: Any | None  # None for a SavedModel


def legacy_config(config: Any) -> Any:
    """`config` with Keras 2 layer arguments Keras 3 refuses rewritten (recursively)."""
    if isinstance(config, list):
        return [legacy_config(item) for item in config]
    if not isinstance(config, dict):
        return config
    out = {key: legacy_config(value) for key, value in config.items()}
    cls = out.get("class_name")
    inner = out.get("config")
    if isinstance(cls, str) and isinstance(inner, dict):
        if cls == "InputLayer" and "batch_input_shape" in inner:
            inner["batch_shape"] = inner.pop("batch_input_shape")
        for key in _DROP.get(cls, ()):
            inner.pop(key, None)
    return out


def _unknown_class(message: str) -> str | None:
    found = re.search(r"(?:Could not locate class|Unknown layer:?) '?([\w.]+)'?", message)
    return found.group(1) if found else None


def _first_line(why: object) -> str:
    text = str(why).strip()
    return text.splitlines()[0][:200] if text else type(why).__name__


def _not_a_model(path: Path, why: object) -> ModelLoadError:
    kind = "Keras (.keras)" if path.suffix.lower() == ".keras" else "Keras HDF5 (.h5)"
    return ModelLoadError(f"{path}: not a valid {kind} model file ({_first_line(why)})")


def _check_signature(path: Path) -> None:
    """A ModelLoadError unless `path` is readable and a zip (.keras) or HDF5 (.h5) file."""
    import h5py

    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if path.suffix.lower() == ".keras":
        if not zipfile.is_zipfile(path):
            raise _not_a_model(path, "not a zip archive")
    elif not h5py.is_hdf5(str(path)):
        raise _not_a_model(path, "no HDF5 signature")


def _keras_load(path: Path) -> Any:
    _check_signature(path)
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:  # a damaged or foreign file
        raise _not_a_model(path, exc) from None
    except (TypeError, ValueError) as exc:
        unknown = _unknown_class(str(exc))
        if unknown:
            raise ModelLoadError(
                f"{path}: unsupported layer {unknown!r} (not a Keras layer; "
                "a custom layer must be registered where it is defined)"
            ) from None
        if path.suffix.lower() not in {".h5", ".hdf5"}:
            raise ModelLoadError(f"{path}: Keras cannot load it ({exc})") from None
        first = exc
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            raw = handle.attrs.get("model_config")
    except OSError as exc:
        raise _not_a_model(path, exc) from None
    if raw is None:
        raise ModelLoadError(f"{path}: a weights-only .h5 (no model_config); save the whole model")
    config = legacy_config(json.loads(raw if isinstance(raw, str) else raw.decode()))
    log.info("%s: Keras refused the legacy config (%s); loading a rewritten copy", path, first)
    try:
        model = keras.models.model_from_json(json.dumps(config))
        model.load_weights(path)
    except (TypeError, ValueError) as exc:
        unknown = _unknown_class(str(exc)) or _unknown_class(str(first))
        what = f"unsupported layer {unknown!r}" if unknown else str(exc)
        raise ModelLoadError(f"{path}: {what}") from None
    return model


def _static(shape: Any, path: Path) -> tuple[int, ...]:
    dims = list(shape)[1:]
    if any(d is None for d in dims):
        raise ModelLoadError(f"{path}: input shape {list(shape)} has unknown dimensions")
    return tuple(int(d) for d in dims)


def load(path: Path) -> FloatModel:
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or folder")
    if path.is_dir():
        return _saved_model(path)
    if path.suffix.lower() not in {".keras", ".h5", ".hdf5"}:
        raise ModelLoadError(f"{path}: not a .keras, .h5 or SavedModel folder")
    model = _keras_load(path)
    if len(model.inputs) != 1:
        raise ModelLoadError(f"{path}: {len(model.inputs)} inputs; one input is supported")
    shape = _static(model.inputs[0].shape, path)

    def predict(batch: F32) -> F32:
        out = model(batch, training=False)
        out = out[0] if isinstance(out, list | tuple) else out
        return np.asarray(out, np.float32).reshape(len(batch), -1)

    return FloatModel(path, shape, predict, model)


def _saved_model(path: Path) -> FloatModel:
    import tensorflow as tf

    if not (path / "saved_model.pb").is_file():
        raise ModelLoadError(f"{path}: a folder without saved_model.pb")
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # noqa: BLE001 - TF raises OSError, DecodeError, OpError, ...
        raise ModelLoadError(f"{path}: not a valid SavedModel ({_first_line(exc)})") from None
    serve = loaded.signatures.get("serving_default")
    if serve is None:
        raise ModelLoadError(f"{path}: no serving_default signature")
    specs = list(serve.structured_input_signature[1].values())
    if len(specs) != 1:
        raise ModelLoadError(f"{path}: {len(specs)} inputs; one input is supported")
    name = next(iter(serve.structured_input_signature[1]))
    shape = _static(specs[0].shape, path)

    def predict(batch: F32) -> F32:
        outs = serve(**{name: tf.constant(batch)})
        first = outs[sorted(outs)[0]]
        return np.asarray(first, np.float32).reshape(len(batch), -1)

    return FloatModel(path, shape, predict, None)
