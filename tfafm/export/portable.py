"""Equivalent forms of a model that a serving runtime can run with its builtin ops.

Two kinds of layer need a different form for export, not a different model:

* **Recurrent layers** (``GRU``, ``LSTM``, ``SimpleRNN``, any ``keras.layers.RNN``,
  also inside ``Bidirectional``) run a ``while`` loop over ``TensorList`` ops,
  which LiteRT's builtins and ONNX (through tf2onnx) cannot take. With the
  sequence length fixed by the model's input, the loop is unrolled
  (``unroll=True``): the same weights and outputs, as plain matmuls and
  element-wise ops. A sequence of unknown length cannot be unrolled: that is
  an error that says how to fix it.
* **Mixed precision** (``mixed_float16``, ``mixed_bfloat16``): LiteRT has no
  builtin kernels computing in float16 or bfloat16, so the LiteRT export
  computes in float32 (the variables are float32 already); ask for
  ``quantization="float16"`` to store float16 weights.
* **Shapes computed at run time**: Keras' ``Dense`` over a ``(batch, ..., d_in)``
  input and ``Flatten`` read the input's shape while running (``SHAPE``,
  ``STRIDED_SLICE``, ``REDUCE_PROD``, ``PACK``, ``GATHER`` ops around one
  matmul, none of them run by XNNPACK). With the inner axes fixed by the
  model, the export uses static reshapes instead: a ``Dense`` becomes one
  matmul over rows between two reshapes, a ``Flatten`` one reshape (AutoInt:
  111 -> 97 LiteRT ops). Same weights and outputs.

:func:`servable` returns the model in its servable form (the model itself
when nothing changes) with one note per change.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tfafm.graph import iter_layers
from tfafm.compression.rewrite import copy_state, rebuild
from tfafm.errors import UnsupportedLayerError

_RECURRENT = (keras.layers.RNN, keras.layers.Bidirectional)
_FLOAT32_NEEDED = ("litert",)


def _recurrent(layer) -> bool:
    return isinstance(layer, _RECURRENT) and not _unrolled(layer)


def _unrolled(layer) -> bool:
    if isinstance(layer, keras.layers.Bidirectional):
        return layer.forward_layer.unroll and layer.backward_layer.unroll
    return bool(layer.unroll)


class _RowsDense(keras.layers.Dense):
    """``Dense`` over inputs with fixed inner axes as one matrix product over rows (export only)."""

    fuses_as = keras.layers.Dense  # tfafm.fuse rewrites it as the Dense it computes

    def call(self, inputs, training=None):
        inner = tuple(inputs.shape[1:-1])
        if not inner or None in inner:
            return super().call(inputs, training=training)
        rows = super().call(ops.reshape(inputs, (-1, inputs.shape[-1])), training=training)
        return ops.reshape(rows, (-1, *inner, self.units))


class _StaticFlatten(keras.layers.Flatten):
    """``Flatten`` of inputs with fixed non-batch axes as one static reshape (export only)."""

    fuses_as = keras.layers.Flatten  # tfafm.fuse rewrites it as the Flatten it computes

    def call(self, inputs):
        if None in tuple(inputs.shape[1:]):
            return super().call(inputs)
        return ops.reshape(inputs, (-1, int(np.prod(inputs.shape[1:]))))


def _called_once_on(layer):
    """The layer's input when it is called exactly once (a shared layer gives None)."""
    try:
        return layer.input
    except (AttributeError, ValueError):
        return None


def _static_form(layer) -> type | None:
    """The static-shape class standing in for ``layer`` at export, or None when it needs none."""
    if type(layer) is keras.layers.Dense and not layer.quantization_mode and not layer.lora_enabled:
        inputs = _called_once_on(layer)
        shape = tuple(getattr(inputs, "shape", ()))
        return _RowsDense if len(shape) > 2 and None not in shape[1:] else None
    if type(layer) is keras.layers.Flatten and layer.data_format == "channels_last":
        shape = tuple(getattr(_called_once_on(layer), "shape", ()))
        return _StaticFlatten if len(shape) > 2 and None not in shape[1:] else None
    return None


def _half_precision(layer) -> bool:
    return layer.dtype_policy.compute_dtype in ("float16", "bfloat16")


def _sequence_length(layer) -> int | None:
    inputs = layer.input
    first = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
    return first.shape[1] if len(first.shape) >= 3 else None


def _with_unroll(config: dict) -> dict:
    config = dict(config, unroll=True)
    for key in ("layer", "backward_layer"):  # Bidirectional wraps serialized RNN layers
        if isinstance(config.get(key), dict):
            config[key] = {**config[key], "config": _with_unroll(config[key]["config"])}
    return config


def servable(model: keras.Model, export_format: str) -> tuple[keras.Model, list[str]]:
    """``model`` in a form ``export_format`` (``"litert"``, ``"onnx"``, ``"saved_model"``) runs
    with its builtin ops, and a note per change (see the module docstring).

    Raises:
        UnsupportedLayerError: a recurrent layer over a sequence of unknown length.
    """
    if export_format == "saved_model":
        return model, []
    layers = list(iter_layers(model))
    recurrent = [layer for layer in layers if _recurrent(layer)]
    half = [layer for layer in layers if _half_precision(layer)] if export_format in _FLOAT32_NEEDED else []
    static = [layer for layer in layers if _static_form(layer) is not None and not _half_precision(layer)]
    if not recurrent and not half and not static:
        return model, []
    for layer in recurrent:
        if _sequence_length(layer) is None:
            raise UnsupportedLayerError(
                f"Layer {layer.name!r} ({type(layer).__name__}) runs over a sequence of unknown length: "
                f"{export_format} exports unroll recurrent layers into builtin ops, which needs a fixed length. "
                "Give the model's sequence input a fixed length (keras.Input((LENGTH, ...))), padding or "
                "truncating sequences to it.")
    replacements, notes = {}, []
    for layer in recurrent + [layer for layer in half if layer not in recurrent]:
        config = layer.get_config()
        if layer in recurrent:
            config = _with_unroll(config)
        if layer in half:
            config["dtype"] = "float32"
        new = layer.__class__.from_config(config)
        new.build_from_config(layer.get_build_config())
        copy_state(layer, new)
        replacements[id(layer)] = new
    for layer in static:
        new = _static_form(layer).from_config(layer.get_config())
        new.build_from_config(layer.get_build_config())
        copy_state(layer, new)
        replacements[id(layer)] = new
    if static:
        notes.append(f"{len(static)} layer(s) ({', '.join(repr(l.name) for l in static[:3])}"
                     f"{', ...' if len(static) > 3 else ''}) reshape with static shapes (same outputs, fewer ops)")
    if recurrent:
        notes.append(f"recurrent layer(s) {', '.join(repr(l.name) for l in recurrent)} unrolled over their fixed "
                     "sequence length (same weights and outputs, builtin ops only)")
    if half:
        policy = half[0].dtype_policy.name
        notes.append(f"computes in float32: {len(half)} layer(s) use the {policy} policy, which has no LiteRT "
                     "builtin kernels (weights unchanged; quantization='float16' stores them as float16)")
    return rebuild(model, replacements)[0], notes
