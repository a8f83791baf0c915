"""3D layers as 2D builtins, so a video model converts to int8 ops every TFLite runtime has.

TFLite's CONV_3D kernel is float only and MaxPool3D is no builtin at all, so a Keras 3D-CNN
cannot become a full-integer model as it is. The same arithmetic fits in 2D ops:

- Conv3D: the `kt` time-shifted copies of the input are stacked along channels and one
  Conv2D with the kernel reshaped to [kh, kw, kt * C, F] runs on every output frame.
- MaxPooling3D / AveragePooling3D: pooling is separable; a spatial 2D pool per frame, then a
  temporal 2D pool over [T, H * W].
- GlobalAveragePooling3D / GlobalMaxPooling3D: one reduction over [T * H * W].

The rewritten layers keep the original weights (same layout), so the float model and the
rewrite compute the same function; the parity report checks it against the original.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import tensorflow as tf

log = logging.getLogger(__name__)


class UnsupportedLayer(Exception):
    """A layer this rewrite cannot express (its name and why)."""


def _same_pad(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int, int]:
    """(pad_before, pad_after, out_size) of TensorFlow's 'same' padding along one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2, out


@keras.saving.register_keras_serializable(package="safeguard")
class Conv3DAs2D(keras.layers.Layer):  # type: ignore[misc]
    """Conv3D (channels_last, groups 1) computed with one Conv2D per output frame."""

    def __init__(self, conv: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conv = conv
        self.activation = keras.activations.get(conv["activation"])

    def build(self, input_shape: Any) -> None:
        kt, kh, kw = self.conv["kernel_size"]
        channels, filters = int(input_shape[-1]), int(self.conv["filters"])
        self.kernel = self.add_weight(name="kernel", shape=(kt, kh, kw, channels, filters))
        if self.conv["use_bias"]:
            self.bias = self.add_weight(name="bias", shape=(filters,), initializer="zeros")

    def call(self, x: Any) -> Any:
        kt, kh, kw = self.conv["kernel_size"]
        st, sh, sw = self.conv["strides"]
        dt, dh, dw = self.conv["dilation_rate"]
        padding = str(self.conv["padding"]).upper()
        t, h, w, c = (int(d) for d in x.shape[1:])
        if padding == "SAME":
            before, after, out_t = _same_pad(t, kt, st, dt)
            if before or after:
                x = tf.pad(x, [[0, 0], [before, after], [0, 0], [0, 0], [0, 0]])
            t += before + after
        else:
            out_t = (t - dt * (kt - 1) - 1) // st + 1
        flat = tf.reshape(x, [-1, t, h * w * c])
        stack = [
            tf.reshape(flat[:, i * dt : i * dt + st * (out_t - 1) + 1 : st], [-1, h, w, c])
            for i in range(kt)
        ]
        stacked = tf.concat(stack, axis=-1) if kt > 1 else stack[0]
        kernel = tf.reshape(tf.transpose(self.kernel, [1, 2, 0, 3, 4]), [kh, kw, kt * c, -1])
        y = tf.nn.conv2d(stacked, kernel, [1, sh, sw, 1], padding, dilations=[1, dh, dw, 1])
        if self.conv["use_bias"]:
            y = tf.nn.bias_add(y, self.bias)
        y = tf.reshape(y, [-1, out_t, int(y.shape[1]), int(y.shape[2]), int(y.shape[3])])
        return self.activation(y)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "conv": self.conv}


@keras.saving.register_keras_serializable(package="safeguard")
class Pool3DAs2D(keras.layers.Layer):  # type: ignore[misc]
    """Max or average 3D pooling as a spatial then a temporal 2D pooling (separable)."""

    def __init__(self, kind: str, pool: list[int], strides: list[int], padding: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.kind, self.pool, self.strides, self.padding = kind, pool, strides, padding.upper()

    def call(self, x: Any) -> Any:
        pool2d = tf.nn.max_pool2d if self.kind == "max" else tf.nn.avg_pool2d
        t, h, w, c = (int(d) for d in x.shape[1:])
        y = pool2d(
            tf.reshape(x, [-1, h, w, c]), self.pool[1:], [1, *self.strides[1:], 1], self.padding
        )
        h2, w2 = int(y.shape[1]), int(y.shape[2])
        y = pool2d(
            tf.reshape(y, [-1, t, h2 * w2, c]),
            [self.pool[0], 1],
            [1, self.strides[0], 1, 1],
            self.padding,
        )
        return tf.reshape(y, [-1, int(y.shape[1]), h2, w2, c])

    def get_config(self) -> dict[str, Any]:
        base = super().get_config()
        return {
            **base,
            "kind": self.kind,
            "pool": self.pool,
            "strides": self.strides,
            "padding": self.padding,
        }


@keras.saving.register_keras_serializable(package="safeguard")
class GlobalPool3DAs1D(keras.layers.Layer):  # type: ignore[misc]
    """Global 3D pooling as one reduction over the flattened [T * H * W] axis."""

    def __init__(self, kind: str, keepdims: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kind, self.keepdims = kind, keepdims

    def call(self, x: Any) -> Any:
        c = int(x.shape[-1])
        reduce = tf.reduce_max if self.kind == "max" else tf.reduce_mean
        y = reduce(tf.reshape(x, [-1, int(x.shape[1]) * int(x.shape[2]) * int(x.shape[3]), c]), 1)
        return tf.reshape(y, [-1, 1, 1, 1, c]) if self.keepdims else y

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "kind": self.kind, "keepdims": self.keepdims}


def _replacement(layer: Any) -> Any | None:
    """The 2D equivalent of one 3D layer, None when the layer needs no rewrite."""
    config = layer.get_config()
    if (
        isinstance(
            layer,
            keras.layers.Conv3D
            | keras.layers.MaxPooling3D
            | keras.layers.AveragePooling3D
            | keras.layers.GlobalAveragePooling3D
            | keras.layers.GlobalMaxPooling3D,
        )
        and config.get("data_format", "channels_last") != "channels_last"
    ):
        raise UnsupportedLayer(f"{layer.name} ({type(layer).__name__}): channels_first")
    if type(layer) is keras.layers.Conv3D:
        if config.get("groups", 1) != 1:
            raise UnsupportedLayer(f"{layer.name} (Conv3D): groups={config['groups']}")
        keys = ("filters", "kernel_size", "strides", "dilation_rate", "padding", "use_bias")
        conv = {k: config[k] for k in keys}
        conv["activation"] = keras.activations.serialize(
            keras.activations.get(config["activation"])
        )
        return Conv3DAs2D(conv, name=layer.name)
    if isinstance(layer, keras.layers.MaxPooling3D | keras.layers.AveragePooling3D):
        kind = "max" if isinstance(layer, keras.layers.MaxPooling3D) else "avg"
        strides = config["strides"] or config["pool_size"]
        return Pool3DAs2D(
            kind, list(config["pool_size"]), list(strides), config["padding"], name=layer.name
        )
    if isinstance(layer, keras.layers.GlobalAveragePooling3D | keras.layers.GlobalMaxPooling3D):
        kind = "max" if isinstance(layer, keras.layers.GlobalMaxPooling3D) else "avg"
        return GlobalPool3DAs1D(kind, bool(config.get("keepdims", False)), name=layer.name)
    return None


def has_3d(model: Any) -> bool:
    return any(_replacement(layer) is not None for layer in model.layers)


def rewrite(model: Any) -> Any:
    """A copy of `model` with its 3D layers replaced by 2D equivalents, same weights."""
    replaced: list[tuple[Any, Any]] = []

    def clone(layer: Any) -> Any:
        new = _replacement(layer)
        if new is None:
            return layer.__class__.from_config(layer.get_config())
        replaced.append((layer, new))
        return new

    copy = keras.models.clone_model(model, clone_function=clone)
    for old, new in zip(model.layers, copy.layers, strict=True):
        new.set_weights(old.get_weights())
    log.info(
        "rewrote %d 3D layers as 2D ops: %s", len(replaced), ", ".join(o.name for o, _ in replaced)
    )
    return copy
