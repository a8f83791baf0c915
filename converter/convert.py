"""Float Keras / SavedModel -> full-integer int8 TFLite that every runtime the device may
have (ai_edge_litert, tflite_runtime 2.14) loads: TFLITE_BUILTINS_INT8 only, int8 input and
output, 3D layers rewritten as 2D builtins first (`converter.rewrite3d`)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any

from converter import repdata
from converter.modelio import FloatModel
from edge.errors import SafeguardError

log = logging.getLogger(__name__)


class ConvertError(SafeguardError):
    """The converter cannot produce a full-integer model (names the op or layer)."""


@dataclass(frozen=True)
class Converted:
    tflite: bytes
    rewritten: list[str]  # layers replaced by 2D equivalents


def quiet_tensorflow() -> None:
    """TensorFlow's C++ and absl chatter off unless asked for (before the first import)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _unsupported(message: str) -> str:
    """The op and layer names a converter error complains about, as one line."""
    ops = re.findall(r"'(tf\.\w+|tfl\.\w+)' op", message)
    names = re.findall(r'fused\["(\w+):", "([^"@]+)', message)
    layers = sorted({path.split("/")[-2] for _, path in names if "/" in path})
    selected = re.search(r"TF Select ops: ([\w, ]+)", message)
    what = selected.group(1) if selected else ", ".join(sorted(set(ops)))
    where = f" in layer(s) {', '.join(layers)}" if layers else ""
    return f"unsupported layer{where}: op(s) {what or '?'} have no int8 TFLite builtin"


def _converter(model: FloatModel) -> tuple[Any, list[str]]:
    import tensorflow as tf

    from converter import rewrite3d

    if model.keras_model is None:
        return tf.lite.TFLiteConverter.from_saved_model(str(model.path)), []
    keras_model = model.keras_model
    rewritten: list[str] = []
    try:
        if rewrite3d.has_3d(keras_model):
            keras_model = rewrite3d.rewrite(keras_model)
            rewritten = [
                layer.name
                for layer in keras_model.layers
                if type(layer).__module__ == rewrite3d.__name__
            ]
    except rewrite3d.UnsupportedLayer as exc:
        raise ConvertError(f"{model.path}: unsupported layer {exc}") from None
    return tf.lite.TFLiteConverter.from_keras_model(keras_model), rewritten


def convert(model: FloatModel, examples: repdata.Examples) -> Converted:
    """The int8 model, calibrated on `examples`."""
    import tensorflow as tf

    converter, rewritten = _converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: repdata.batches(examples.inputs)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    log.info("calibrating on %d inputs of %s", len(examples.inputs), list(model.input_shape))
    try:
        with contextlib.redirect_stdout(io.StringIO()) as said, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flat = converter.convert()
        log.debug("converter said: %s", said.getvalue())
    except Exception as exc:  # noqa: BLE001 - ConverterError and friends carry the op names
        message = str(exc)
        if "not supported" in message or "neither a custom op nor a flex op" in message:
            raise ConvertError(f"{model.path}: {_unsupported(message)}") from None
        raise ConvertError(
            f"{model.path}: the TFLite converter failed ({message.strip().splitlines()[-1][:300]})"
        ) from None
    return Converted(bytes(flat), rewritten)
